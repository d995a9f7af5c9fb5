"""Our `edge` preset against the tuned torchvision RetinaNet recipe on any COCO-format set, same budget, same run.

    python benchmarks/bench_vs_torchvision.py DATA --minutes 10 [--set KEY=VALUE ...]
    python benchmarks/bench_vs_torchvision.py glyphs --minutes 10     # a set of benchmarks/datasets.py, made here
    python benchmarks/bench_vs_torchvision.py synth --minutes 10      # the default synthetic set
    python benchmarks/bench_vs_torchvision.py glyphs --minutes 10 --no-peer --tag fit \
        --set fit.input_size=true --set fit.anchors=true                # ours only, a variant, its own files

Runs ``retinaedge train --data DATA --config edge --time-budget M`` in a fresh process, then (one after the
other, never side by side: 2 cores) torchvision's ``RetinaNet`` with the recipe issue 14 names: ResNet-18 FPN
P3-P7 of width 64, GroupNorm heads, AdamW lr 1e-3, batch 16, flip only, trained at the images' native size
(the median long side rounded up to 64, square, as torchvision's transform pads), the same warmup + cosine
over the budget, evaluated through the same letterbox and pycocotools code. Prints both APs and the ratios
ours / peer, and writes them to ``benchmarks/out/vs_torchvision_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_edge_train import OUT, ensure_data, run_ours, run_torchvision_peer
from datasets import WRITERS, ensure


def native_size(data: Path, multiple: int = 64) -> int:
    """The median long side of the training images, rounded up to ``multiple``."""
    import numpy as np

    from retinaedge.train.data.inspect import read_box_set
    from retinaedge.train.evaluate import split_paths

    sizes = read_box_set(split_paths(data, "train")[0]).image_sizes
    return int(math.ceil(float(np.median(sizes.max(axis=1))) / multiple) * multiple)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help=f"dataset root, or one of {sorted(WRITERS)} / synth (made under benchmarks/out/)")
    p.add_argument("--minutes", type=float, default=10.0, help="training minutes per model (default 10)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="for ours")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="train only ours (a variant of ours)")
    p.add_argument("--tag", default="", help="suffix for the run folder and the JSON (e.g. the variant's name)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    name = args.data
    if name in WRITERS:
        data = ensure(name, OUT / name)
    elif name == "synth":
        data = ensure_data(OUT / "synth")
    else:
        data, name = Path(name), Path(name).name
    tag = f"_{args.tag}" if args.tag else ""
    ours = run_ours(data, OUT / f"vs_tv_{name}{tag}", args.minutes, "edge", args.sets)
    size = native_size(data)
    skipped = {"name": "torchvision", "error": "not run (--no-peer)"}
    peer = run_torchvision_peer(data, args.minutes, size=size) if args.peer else skipped
    rows = [ours, peer]
    print(f"\n{'model':<48} {'AP':>7} {'AP50':>7} {'wall s':>8} {'img/s':>7} {'steps':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<48} {r['error']}")
        else:
            print(f"{r['name']:<48} {r['AP']:7.4f} {r['AP50']:7.4f} {r['wall_s']:8.0f} {r['train_img_per_s']:7.1f} "
                  f"{r['steps']:6d}")
    summary = {"data": str(data), "minutes": args.minutes, "peer_size": size, "sets": args.sets, "rows": rows}
    if "error" not in ours and "error" not in peer and peer["AP"] > 0 and peer["AP50"] > 0:
        summary["AP_ratio"] = round(ours["AP"] / peer["AP"], 3)
        summary["AP50_ratio"] = round(ours["AP50"] / peer["AP50"], 3)
        print(f"\nours / torchvision: AP {summary['AP_ratio']:.3f}x, AP50 {summary['AP50_ratio']:.3f}x "
              f"(goal: both >= 1, AP >= 1.1)")
    out = OUT / f"vs_torchvision_{name}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
