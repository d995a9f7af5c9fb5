"""``retinaedge build``: a TensorRT engine (+ JSON sidecar) from an exported ONNX, on the GPU host that runs it.

Module top level imports argparse only; TensorRT is imported inside `run` (a missing one is a one-line hint).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "fp32", "fp16", "int8")


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1:4:8"`` -> ``(1, 4, 8)``; ``"4"`` -> ``(4, 4, 4)``; needs ``1 <= min <= opt <= max``."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(
            f"--batch {text!r} is not min:opt:max integers with 1 <= min <= opt <= max (e.g. 1:4:8, or 4)"
        )
    return values[0], values[1], values[2]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "build",
        help="build a TensorRT engine from an exported ONNX (GPU host)",
        description="Build model.<precision>.engine + model.<precision>.engine.json from an exported ONNX. "
        "Needs TensorRT and PyCUDA. The path (strongly typed from an FP16/Q-DQ ONNX, or weakly typed with "
        "FP16/INT8 flags + calibrator on TensorRT 8.6/10.x) is chosen from what the installed TensorRT offers; "
        "a precision it cannot honour is refused.",
    )
    p.add_argument("--onnx", type=Path, required=True, help="model.fp32.onnx, model.fp16.onnx or model.int8.onnx")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="default: the ONNX's own precision")
    p.add_argument("--batch", type=parse_batch, default=None, metavar="MIN:OPT:MAX",
                   help="dynamic batch profile (default 1:1:8, or the ONNX's static batch)")
    p.add_argument("--workspace", type=int, default=2048, metavar="MB", help="workspace memory cap (default 2048)")
    p.add_argument("--dla", type=int, default=None, metavar="N",
                   help="DLA core (Jetson), with GPU fallback; needs a fixed --batch B (DLA has no dynamic shapes)")
    p.add_argument("--timing-cache", type=Path, default=None, metavar="F", help="timing cache file (read + written)")
    p.add_argument("--calib-data", type=Path, default=None, metavar="DATA",
                   help="calibration images for weakly-typed INT8 from the FP32 ONNX (folder or dataset root)")
    p.add_argument("--spec", type=Path, default=None, help="spec.json (default: beside the ONNX)")
    p.add_argument("--version-compatible", action="store_true",
                   help="engine runs on later TensorRT (same major, 10.x on 11.x); not with EfficientNMS (--nms onnx)")
    p.add_argument("--hardware-compatible", action="store_true", help="engine runs on any Ampere+ GPU")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retinaedge.engines.build import BuildConfig, build_engine

    config = BuildConfig(
        onnx=args.onnx,
        out_dir=args.out,
        precision=args.precision,
        batch=args.batch,
        workspace_mb=args.workspace,
        dla_core=args.dla,
        timing_cache=args.timing_cache,
        calib_data=args.calib_data,
        spec=args.spec,
        version_compatible=args.version_compatible,
        hardware_compatible=args.hardware_compatible,
    )
    result = build_engine(config)
    for note in result.notes:
        print(note)
    side = result.sidecar
    shares = ", ".join(f"{k} {v:.0%}" for k, v in side.layer_precisions.items() if v)
    print(f"wrote {result.engine_path} ({side.num_layers} layers: {shares}; built in {side.build_time_s:.1f} s "
          f"with {side.describe()})")
    return 0
