"""``retinaedge export``: checkpoint -> ONNX files (+ EfficientNMS_TRT / ONNX NMS), FP32/FP16/INT8/INT8-CPU."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (fp32, fp16, int8 Q/DQ, int8-cpu) with the NMS tail",
        description="Export a trained checkpoint to DIR/model.<precision>.onnx + spec.json + export.json; "
        "each file is linted for TensorRT compatibility and the summary printed.",
    )
    p.add_argument("--checkpoint", required=True, help="RUN/ckpt_best.pt written by `retinaedge train`")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--precision", default="fp32",
                   help="comma-separated: fp32,fp16,int8,int8-cpu (default fp32)")
    p.add_argument("--nms", default="efficient", choices=["efficient", "onnx", "none"],
                   help="graph tail: EfficientNMS_TRT (default), ONNX NonMaxSuppression, or raw heads + boxes")
    p.add_argument("--calib-data", default=None,
                   help="dataset dir (DATA/train, else DATA/val) or image folder; needed for int8/int8-cpu")
    p.add_argument("--calib-images", type=int, default=64, help="calibration images (default 64)")
    p.add_argument("--calib-method", default="auto", choices=["auto", "entropy", "max"],
                   help="ModelOpt INT8 calibration; auto picks by held-out AP (needs DATA/annotations)")
    p.add_argument("--mixed", default="off", choices=["off", "auto"],
                   help="auto: also write model.int8-mixed.onnx, keeping the fewest most INT8-sensitive units "
                   "(measured on the held-out val split) in FP16/FP32 until --gate passes; writes "
                   "sensitivity.json/.png")
    p.add_argument("--gate", default="int8=0.99",
                   help="the INT8 gate --mixed auto must pass, as validate's: int8=FRACTION (default int8=0.99)")
    p.add_argument("--mixed-unit", default="block", choices=["block", "layer"],
                   help="sensitivity unit: block (stem/stage/FPN level/head part, default) or layer (each node)")
    p.add_argument("--mixed-dtype", default="auto", choices=["auto", "fp16", "fp32"],
                   help="precision of the kept units: auto = FP16 unless FP16 itself loses AP (default)")
    p.add_argument("--mixed-max-units", type=int, default=None, help="try at most N kept units (default all)")
    p.add_argument("--heldout-images", type=int, default=32,
                   help="held-out val images scoring --calib-method auto and --mixed auto (cap; default 32)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17..20 (default 17)")
    p.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                   help="torch.onnx exporter: auto = dynamo at opset >= 18, torchscript at 17 (default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retinaedge.export.config import ExportConfig, parse_precisions
    from retinaedge.export.pipeline import export_model
    from retinaedge.runtime.errors import InputError
    from retinaedge.runtime.validate import parse_gate

    gate = parse_gate(args.gate)
    if "int8" not in gate:
        raise InputError(f"--gate {args.gate!r} names no int8 entry; --mixed auto needs one, e.g. --gate int8=0.99")

    config = ExportConfig(
        checkpoint=args.checkpoint,
        out_dir=args.out,
        precisions=parse_precisions(args.precision),
        nms=args.nms,
        opset=args.opset,
        exporter=args.exporter,
        calib_data=args.calib_data,
        calib_images=args.calib_images,
        calib_method=args.calib_method,
        heldout_images=args.heldout_images,
        mixed=args.mixed,
        gate=gate["int8"],
        mixed_unit=args.mixed_unit,
        mixed_dtype=args.mixed_dtype,
        mixed_max_units=args.mixed_max_units,
    )
    result = export_model(config, echo=print)
    bad = [p for p, r in result.lint.items() if not r.ok and not r.cpu_only]
    print(f"wrote {len(result.files)} model(s), spec.json and export.json to {result.out_dir}")
    if bad:
        print(f"lint errors in {', '.join(bad)}: see above and export.json")
        return 1
    return 0
