"""``retinaedge train``: train a RetinaNet on a COCO-layout dataset (see `retinaedge.train.trainer.train`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a RetinaNet on a COCO-layout dataset",
        description="Train a focal-loss RetinaNet. Writes ckpt_last.pt, ckpt_best.pt, spec.json, metrics.json, "
                    "train_log.jsonl and loss.png to --out.",
    )
    p.add_argument("--data", help="dataset root: DATA/annotations/instances_{train,val}.json, DATA/{train,val}/ "
                   "(or COCO's instances_{train,val}2017.json, {train,val}2017/)")
    p.add_argument("--config", default="edge", help="preset (edge, r50-fpn) or a .toml file (default: edge)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--epochs", type=int, help="override epochs")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="train until this many minutes are spent (as many epochs as fit; the schedule anneals over "
                        "the budget), then finish the step, evaluate and save")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=3e-4 --set data.input_size=[256,256]")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from ckpt_last.pt")
    p.add_argument("--train-ann", help="override DATA/annotations/instances_train.json")
    p.add_argument("--train-images", help="override DATA/train")
    p.add_argument("--val-ann", help="override DATA/annotations/instances_val.json")
    p.add_argument("--val-images", help="override DATA/val")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from retinaedge.train.config import config_to_dict, load_config

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.time_budget is not None:
        overrides.append(f"time_budget_min={args.time_budget}")
    config = load_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(config_to_dict(config), indent=2))
        return 0

    from retinaedge.runtime.cocoeval import format_stats
    from retinaedge.train.trainer import train

    metrics = train(config, data=args.data, out=args.out, train_ann=args.train_ann, train_images=args.train_images,
                    val_ann=args.val_ann, val_images=args.val_images, resume=args.resume)
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun every rank gets rank 0's metrics; rank 0 prints them
        return 0
    print(format_stats(metrics))
    print(f"best AP {metrics['best_AP']:.4f}; {metrics['step']} steps in {metrics['wall_time_s']:.0f}s "
          f"({metrics['train_img_per_s']} img/s), ended by: {metrics.get('ended_by') or 'the planned epochs'}; "
          f"run in {args.out}")
    return 0
