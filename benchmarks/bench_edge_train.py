"""The `edge` preset on the default synthetic set under a wall-clock budget, against a torchvision peer.

Issue 2, "What must be shown" 1: ``retinaedge train --config edge --time-budget 10`` on 2 CPU cores must
reach AP50 >= 0.7 on the val split. This script runs exactly that command (as a subprocess, so start-up and
the final evaluation count in the wall time), then, in the same run and on the same data and budget, the
recipe issue 14 names as the tuned torchvision setting (``torchvision.models.detection.RetinaNet``
on a ResNet-18 FPN P3-P7, FPN width 64, GroupNorm heads, torchvision's default anchors, AdamW lr 1e-3,
batch 16, 192 px, the same warmup + cosine-over-the-budget schedule), evaluated through the same letterbox
and pycocotools code. It prints AP, AP50, wall time and training img/s of both and the AP50 ratio.

    .venv/bin/python benchmarks/bench_edge_train.py                     # 10 + 10 min, writes benchmarks/out/
    .venv/bin/python benchmarks/bench_edge_train.py --budget 1 --no-peer  # a quick sanity run

The default data is ``retinaedge data synth`` with its defaults (2400 train / 240 val images, 256 px,
seed 0), written to ``benchmarks/out/synth`` when missing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
GOAL_AP50 = 0.7


def ensure_data(path: Path) -> Path:
    if (path / "annotations" / "instances_train.json").is_file():
        return path
    from retinaedge.train.data.synth import write_synthetic_coco

    print(f"writing the default synthetic set to {path} ...", flush=True)
    write_synthetic_coco(path)
    return path


def run_ours(data: Path, out: Path, budget: float, config: str, sets: list[str]) -> dict:
    """``retinaedge train --config CONFIG --time-budget BUDGET`` in a fresh process; its metrics + wall time."""
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "retinaedge.cli", "train", "--data", str(data), "--config", config,
           "--time-budget", str(budget), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    print("$ " + " ".join(cmd[2:]).replace("retinaedge.cli", "retinaedge"), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"name": f"retinaedge {config}", "error": f"exit code {proc.returncode}", "wall_s": wall}
    m = json.loads((out / "metrics.json").read_text())
    return {"name": f"retinaedge {config}", "AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "wall_s": wall,
            "train_img_per_s": m["train_img_per_s"], "steps": m["step"], "epochs": m["epoch"],
            "command": " ".join(["retinaedge", *cmd[3:]]), "per_class_AP": m["per_class_AP"]}


def run_torchvision_peer(data: Path, budget: float, *, size: int = 192, batch: int = 16, lr: float = 1e-3,
                         threads: int = 0, workers: int = 2, seed: int = 0) -> dict:
    """Train torchvision's RetinaNet (the tuned recipe of issue 14) for ``budget`` minutes and COCO-evaluate it."""
    import math

    import numpy as np
    import torch
    import torchvision
    from torch import nn
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from retinaedge.runtime.cocoeval import coco_evaluate
    from retinaedge.runtime.detections import Detections
    from retinaedge.runtime.preprocess import preprocess_batch
    from retinaedge.train.config import load_config, make_spec
    from retinaedge.train.data.coco import CocoDetection, make_loader, read_categories
    from retinaedge.train.evaluate import split_paths
    from retinaedge.train.trainer import lr_factor

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_ann, train_dir = split_paths(data, "train")
    val_ann, val_dir = split_paths(data, "val")
    names, ids = read_categories(train_ann)
    # a spec only for the letterbox (192 px; strides up to 64 so 192 is allowed)
    cfg = load_config("edge", [f"data.input_size={size}", "anchors.strides=[8, 16, 32, 64]",
                               "anchors.sizes=[32, 64, 128, 256]", f"data.batch_size={batch}"])
    spec = make_spec(cfg, names, ids)
    quiet = functools.partial(print, flush=True)
    train_ds = CocoDetection(ann_file=train_ann, image_dir=train_dir, spec=spec, train=True, log=quiet)
    val_ds = CocoDetection(ann_file=val_ann, image_dir=val_dir, spec=spec, train=False, log=quiet)

    width = 64
    body = torchvision.models.resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], width,
                               extra_blocks=LastLevelP6P7(width, width))
    anchor_gen = torchvision.models.detection.retinanet._default_anchorgen()
    head = RetinaNetHead(width, anchor_gen.num_anchors_per_location()[0], len(names),
                         norm_layer=functools.partial(nn.GroupNorm, 16))
    model = RetinaNet(backbone, num_classes=len(names), min_size=size, max_size=size,
                      anchor_generator=anchor_gen, head=head)
    optim_cfg = cfg.optim  # edge's warmup/cosine settings, the same schedule shape as ours
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=optim_cfg.weight_decay)
    budget_s = budget * 60.0
    t0 = time.perf_counter()
    step = images = 0
    train_time = 0.0
    epoch = 0
    model.train()
    done = False
    print(f"torchvision peer: R18-FPN{width} GN heads, AdamW {lr:g}, batch {batch}, {size} px, {budget:g} min",
          flush=True)
    while not done:
        loader = make_loader(train_ds, batch_size=batch, shuffle=True, workers=workers, seed=seed * 100003 + epoch)
        t_prev = time.perf_counter()
        for imgs, tg in loader:
            elapsed = time.perf_counter() - t0
            f = lr_factor(optim_cfg, step, min(1.0, elapsed / budget_s))
            for g in opt.param_groups:
                g["lr"] = lr * f
            x = [im.float() / 255.0 for im in imgs]
            targets = [{"boxes": b[lab >= 0], "labels": lab[lab >= 0]} for b, lab in zip(tg["boxes"], tg["labels"],
                                                                                       strict=True)]
            losses = model(x, targets)
            loss = sum(losses.values())
            if not math.isfinite(float(loss.detach())):
                return {"name": "torchvision RetinaNet (tuned recipe)", "error": f"non-finite loss at "
                        f"step {step + 1}"}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            images += len(x)
            now = time.perf_counter()
            train_time += now - t_prev
            t_prev = now
            if step % 20 == 0:
                print(f"  peer step {step} loss {float(loss.detach()):.4f} {images / train_time:.1f} img/s "
                      f"{(now - t0) / 60:.1f}/{budget:g} min", flush=True)
            if now - t0 >= budget_s:
                done = True
                break
        epoch += 1
    model.eval()
    dets: dict[int, Detections] = {}
    with torch.inference_mode():
        for start in range(0, len(val_ds.image_ids), 16):
            originals = [val_ds.load_original(i) for i in range(start, min(start + 16, len(val_ds.image_ids)))]
            batch_np, metas = preprocess_batch([im for im, _ in originals], spec)
            outs = model([torch.from_numpy(b).float() / 255.0 for b in batch_np])
            for (_, image_id), meta, o in zip(originals, metas, outs, strict=True):
                dets[int(image_id)] = Detections(meta.to_original(o["boxes"].numpy().astype(np.float32)),
                                                 o["scores"].numpy().astype(np.float32),
                                                 o["labels"].numpy().astype(np.int64))
    m = coco_evaluate(val_ds.coco, dets, spec.category_ids, spec.class_names)
    wall = time.perf_counter() - t0
    return {"name": "torchvision RetinaNet (tuned recipe)", "AP": m["AP"], "AP50": m["AP50"],
            "AP75": m["AP75"], "wall_s": wall, "train_img_per_s": round(images / train_time, 2), "steps": step,
            "epochs": epoch, "per_class_AP": m["per_class_AP"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=OUT / "synth", help="dataset root (default: synthesised here)")
    p.add_argument("--budget", type=float, default=10.0, help="training minutes per model (default 10)")
    p.add_argument("--config", default="edge")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-peer", action="store_true", help="skip the torchvision peer")
    p.add_argument("--out", type=Path, default=OUT / "edge_train", help="run directory of ours")
    p.add_argument("--json", type=Path, default=OUT / "bench_edge_train.json")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    data = ensure_data(args.data)
    rows = [run_ours(data, args.out, args.budget, args.config, args.sets)]
    if not args.no_peer:
        rows.append(run_torchvision_peer(data, args.budget))

    print(f"\n{'model':<48} {'AP':>7} {'AP50':>7} {'wall s':>8} {'img/s':>7} {'steps':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<48} {r['error']}")
            continue
        print(f"{r['name']:<48} {r['AP']:7.4f} {r['AP50']:7.4f} {r['wall_s']:8.0f} {r['train_img_per_s']:7.1f} "
              f"{r['steps']:6d}")
    ours = rows[0]
    summary = {"budget_min": args.budget, "data": str(data), "rows": rows, "goal_AP50": GOAL_AP50}
    if "error" not in ours:
        summary["ours_AP50_over_goal"] = round(ours["AP50"] / GOAL_AP50, 3)
        print(f"\nours AP50 {ours['AP50']:.4f} vs goal {GOAL_AP50}: {'PASS' if ours['AP50'] >= GOAL_AP50 else 'FAIL'}"
              f" (ratio {summary['ours_AP50_over_goal']:.3f})")
        if len(rows) > 1 and "error" not in rows[1] and rows[1]["AP50"] > 0:
            summary["AP50_ratio_vs_peer"] = round(ours["AP50"] / rows[1]["AP50"], 3)
            summary["AP_ratio_vs_peer"] = round(ours["AP"] / rows[1]["AP"], 3) if rows[1]["AP"] > 0 else None
            print(f"AP50 ours / torchvision peer = {summary['AP50_ratio_vs_peer']:.3f} (same data, same budget)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
