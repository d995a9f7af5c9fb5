"""``retinaedge qat``: quantisation-aware fine-tuning of a trained checkpoint, then a Q/DQ INT8 ONNX for TensorRT
(see `retinaedge.export.qat`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "qat",
        help="quantisation-aware fine-tuning (ModelOpt INT8) of a checkpoint, exported as Q/DQ ONNX",
        description="Insert NVIDIA ModelOpt INT8 quantisers into a trained checkpoint, calibrate them on the images "
                    "'retinaedge export' calibrates on, fine-tune with the project's trainer at a small lr, and "
                    "write RUN/export/model.int8.onnx (symmetric Q/DQ, NMS plugin appended) plus the trainer's "
                    "artifacts and qat_state.pt in --out. Resumable with --resume.",
    )
    p.add_argument("--checkpoint", required=True, help="the trained FP32 checkpoint (RUN/ckpt_best.pt)")
    p.add_argument("--data", required=True, help="dataset root it was trained on (COCO layout, as for train)")
    p.add_argument("--out", required=True, help="QAT run directory")
    p.add_argument("--minutes", type=float, metavar="M", help="fine-tuning time budget (default: --epochs)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs without --minutes (default: 1)")
    p.add_argument("--lr-scale", type=float, default=0.01,
                   help="fine-tuning lr as a fraction of the checkpoint's (default: 0.01)")
    p.add_argument("--calib-images", type=int, default=64, help="calibration images (default: 64)")
    p.add_argument("--nms", default="efficient", choices=["efficient", "onnx", "none"],
                   help="NMS tail of the exported ONNX (default: efficient)")
    p.add_argument("--resume", action="store_true", help="continue the QAT run in --out from its ckpt_last.pt")
    p.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from retinaedge.export.qat import QatConfig, run_qat
    from retinaedge.runtime.cocoeval import format_stats

    config = QatConfig(checkpoint=Path(args.checkpoint), data=Path(args.data), out=Path(args.out),
                       minutes=args.minutes, epochs=args.epochs, lr_scale=args.lr_scale,
                       calib_images=args.calib_images, resume=args.resume, stop_after_steps=args.stop_after_steps,
                       nms=args.nms)
    result = run_qat(config, echo=print)
    m = result.metrics
    print(format_stats(m))
    print(f"QAT best AP {m['best_AP']:.4f} (torch, fake-quantised); {m['step']} steps, ended by: {m.get('ended_by')}; "
          f"ONNX {result.onnx} (lint: {result.lint})")
    return 0
