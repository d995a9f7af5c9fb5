"""``export --mixed auto`` benchmark (issue 11): sensitivity table, the greedy search, and PTQ vs int8-mixed.

Two cases, each one ``export_model`` run (the same code as ``retinaedge export --precision fp32,int8 --mixed auto``):

* ``default``: the trained checkpoint as it is.
* ``outlier`` (``--inject-outlier``): the same checkpoint with a *function-preserving* outlier channel in front of
  the FPN's P3 lateral conv: a 1x1 conv copies C3's channels and adds one constant 10,000 channel, the next 1x1
  conv reads the copies back (FP32 output unchanged, checked here), so the per-tensor INT8 scale there is set
  by the outlier. A constructed failure (what an activation outlier does to per-tensor INT8), stated as such.

Usage::

    python benchmarks/bench_int8_mixed.py --checkpoint RUN/ckpt_best.pt --data DATA --out benchmarks/out/mixed \
        [--heldout-images 64] [--calib-images 64] [--gate 0.995] [--inject-outlier [--outlier 1e4]] [--max-units 6]

Writes ``<out>/<case>/`` (the export, ``sensitivity.json``, ``sensitivity.png``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def inject_outlier(model: Any, value: float = 1e4, *, trainable: bool = True) -> Any:
    """Insert expand (C -> 2C, one constant ``value`` channel) + contract (2C -> C) 1x1 convs before FPN lateral 3.

    ``trainable=False`` freezes the two inserted convs (``requires_grad``), for fine-tuning the rest around them.
    """
    import torch

    lateral = model.fpn.lateral["3"]
    c = lateral.in_channels
    expand, contract = torch.nn.Conv2d(c, 2 * c, 1), torch.nn.Conv2d(2 * c, c, 1)
    with torch.no_grad():
        expand.weight.zero_()
        expand.weight[:c, :, 0, 0] = torch.eye(c)
        expand.weight[c:] = 1e-3
        expand.bias.zero_()
        expand.bias[c] = value
        contract.weight.zero_()
        contract.weight[:, :c, 0, 0] = torch.eye(c)
        contract.bias.zero_()
    for p in (*expand.parameters(), *contract.parameters()):
        p.requires_grad_(trainable)
    model.fpn.lateral["3"] = torch.nn.Sequential(expand, contract, lateral)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout-images", type=int, default=64)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--calib-method", default="entropy")
    ap.add_argument("--gate", type=float, default=0.995)
    ap.add_argument("--max-units", type=int, default=None)
    ap.add_argument("--inject-outlier", action="store_true")
    ap.add_argument("--outlier", type=float, default=1e4, help="the injected channel's value (with --inject-outlier)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from retinaedge.export.config import ExportConfig
    from retinaedge.export.pipeline import export_model
    from retinaedge.train.checkpoint import load_checkpoint

    model, spec, _ = load_checkpoint(args.checkpoint)
    model.eval()
    case = "outlier" if args.inject_outlier else "default"
    if args.inject_outlier:
        x = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (1, 3, spec.input_height, spec.input_width),
                                                               dtype=np.uint8)).float()
        with torch.no_grad():
            before = model(x)["cls_logits"]
            inject_outlier(model, args.outlier)
            after = model(x)["cls_logits"]
        print(f"outlier injected: FP32 cls_logits max |diff| {float((before - after).abs().max()):.2e}")
    out = Path(args.out) / case
    config = ExportConfig(checkpoint=None, out_dir=out, precisions=("fp32", "int8"), calib_data=Path(args.data),
                          calib_images=args.calib_images, calib_method=args.calib_method,
                          heldout_images=args.heldout_images, mixed="auto", gate=args.gate,
                          mixed_max_units=args.max_units)
    result = export_model(config, model=model, spec=spec, echo=print)
    sens = json.loads((out / "sensitivity.json").read_text())
    print(f"\n## {case}: held-out {len(sens['heldout_images'])} images, gate {100 * args.gate:.1f}%")
    print("| unit | nodes | quantised | AP only this INT8 | ΔAP only | AP all but this | regained | "
          "cls_logits mean abs err (only) |")
    print("|---|---|---|---|---|---|---|---|")
    for u in sens["units"]:
        print(f"| {u['unit']} | {u['nodes']} | {u['quantized']} | {u['ap_only']:.4f} | {u['delta_only']:+.4f} | "
              f"{u['ap_all_but']:.4f} | {u['gain_all_but']:+.4f} | {u['raw_only']['cls_logits']['mean_abs']:.2e} |")
    print(f"\nAP fp32 {sens['AP_fp32']:.4f}; PTQ {sens['AP_ptq']:.4f} ({100 * sens['retained_ptq']:.2f}%); "
          f"int8-mixed {sens['AP_mixed']:.4f} ({100 * sens['retained_mixed']:.2f}%), kept {sens['chosen_units']} "
          f"{sens['keep_high']['dtype']}; passed {sens['passed']}")
    print("search (ModelOpt PTQ, top-k excluded): "
          + ", ".join(f"k={s['k']} {s['ap']:.4f}" for s in sens["search"]))
    print("curve estimate (bypass): " + ", ".join(f"k={k} {a:.4f}" for k, a in sens["curve_estimate"]))
    print(f"time: sensitivity {sens['seconds']['sensitivity']:.0f} s, total {sens['seconds']['total']:.0f} s, "
          f"{sens['ort_runs']} ORT passes; lint int8-mixed: {result.lint['int8-mixed'].summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
