"""``retinaedge eval``: COCO metrics of a training checkpoint on a dataset split."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="COCO-evaluate a checkpoint",
        description="Run a checkpoint on the original images of a split (runtime letterbox, torch post-process) "
                    "and print pycocotools' 12 stats and the per-class AP.",
    )
    p.add_argument("--checkpoint", required=True, help="RUN/ckpt_best.pt or RUN/ckpt_last.pt")
    p.add_argument("--data", help="dataset root in the COCO layout")
    p.add_argument("--split", default="val", help="split name under DATA (default: val)")
    p.add_argument("--ann", help="override DATA/annotations/instances_<split>.json")
    p.add_argument("--images", help="override DATA/<split>")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from retinaedge.runtime.cocoeval import STAT_NAMES
    from retinaedge.runtime.io import atomic_write_text
    from retinaedge.train.checkpoint import load_checkpoint
    from retinaedge.train.data.coco import CocoDetection
    from retinaedge.train.evaluate import evaluate, split_paths

    ann, images = split_paths(args.data, args.split, ann=args.ann, images=args.images)
    model, spec, _ = load_checkpoint(args.checkpoint, device=args.device)
    console = Console()
    dataset = CocoDetection(ann_file=ann, image_dir=images, spec=spec, train=False, log=console.print)
    metrics = evaluate(model, dataset, spec, batch_size=args.batch_size, device=args.device)

    table = Table(title=f"COCO bbox — {args.checkpoint} on {ann.name} ({metrics['num_images']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in STAT_NAMES:
        table.add_row(name, f"{metrics[name]:.4f}")
    console.print(table)
    per = Table(title="per-class AP")
    per.add_column("class")
    per.add_column("AP", justify="right")
    per.add_column("AP50", justify="right")
    for name, ap in metrics["per_class_AP"].items():
        ap50 = metrics["per_class_AP50"][name]
        per.add_row(name, "-" if ap is None else f"{ap:.4f}", "-" if ap50 is None else f"{ap50:.4f}")
    console.print(per)
    if args.json:
        atomic_write_text(args.json, json.dumps(metrics, indent=2) + "\n")
    return 0
