"""``retinaedge validate``: every model (torch FP32, ONNX on ORT, engines where TensorRT runs) on the same
images, one report row each, PASS/FAIL against the gate; exit code 1 when a gate fails.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "validate",
        help="accuracy vs precision: AP, ΔAP, raw-output error, agreement, batch consistency, gate",
        description="Evaluate the torch FP32 reference (--checkpoint) and every .onnx/.engine given (or found in "
        "a directory) on the same validation images; write report.md, report.json, pr_curves.png and sample "
        "sheets. Exit code 1 when a model fails the gate. Without --checkpoint the ORT FP32 model is the "
        "reference.",
    )
    p.add_argument("--data", required=True, help="COCO-layout DATA dir (annotations/instances_val.json, val/; "
                   "or COCO's instances_val2017.json, val2017/)")
    p.add_argument("--models", required=True, nargs="+", help="model files or directories holding them")
    p.add_argument("--checkpoint", default=None, help="torch checkpoint: the FP32 reference row")
    p.add_argument("--report", required=True, help="report directory")
    p.add_argument("--gate", default=None, help="minimum AP retained per precision, e.g. fp16=0.999,int8=0.99")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N val images")
    p.add_argument("--batch", type=int, default=1, help="images per inference call (default 1)")
    p.add_argument("--val-ann", default=None, help="override DATA/annotations/instances_val.json")
    p.add_argument("--val-images", default=None, help="override DATA/val")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--reference-nms", choices=("export", "torch"), default="export",
                   help="NMS of the torch reference: 'export' (default) runs the torch heads through the exported "
                   "graph's NMS so ΔAP measures precision alone; 'torch' uses training's torchvision NMS")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from retinaedge.runtime.cocoeval import split_layout
    from retinaedge.runtime.runner import Runner
    from retinaedge.runtime.validate import (
        DEFAULT_GATE,
        ExportNmsRunner,
        find_models,
        load_models,
        parse_gate,
        validate,
    )

    console = Console() if sys.stdout.isatty() else Console(width=200)  # no wrapping in logs and pipes
    gate = parse_gate(args.gate) if args.gate else dict(DEFAULT_GATE)
    default_ann, default_images = split_layout(args.data, "val")  # or COCO's instances_val2017.json, val2017/
    ann = Path(args.val_ann) if args.val_ann else default_ann
    images = Path(args.val_images) if args.val_images else default_images
    models = load_models(find_models(args.models), threads=args.threads,
                         on_skip=lambda path, reason: console.print(f"[yellow]skipped[/] {path}: {reason}"))
    reference: Runner | None = None  # None: validate() takes the first FP32 model (with its raw twin)
    raw_reference: Runner | None = None
    if args.checkpoint:
        from retinaedge.train.torch_runner import TorchRunner  # the CLI, not runtime/, may import torch

        ckpt = Path(args.checkpoint)
        if args.reference_nms == "export":
            reference = ExportNmsRunner(raw=TorchRunner(checkpoint=ckpt, raw=True))
        else:
            reference = TorchRunner(checkpoint=ckpt)
        raw_reference = TorchRunner(checkpoint=ckpt, raw=True)
    if not models.runners and reference is None:
        console.print("retinaedge validate: nothing to validate here (every model was skipped)")
        return 1
    report = validate(
        ann_file=ann, image_dir=images, runners=models.runners, reference=reference, report_dir=args.report,
        gate=gate, batch=args.batch, max_images=args.max_images, raw_runners=models.raw_runners,
        raw_reference=raw_reference, skipped=models.skipped, progress=lambda msg: console.print(f"[dim]{msg}[/]"),
    )
    lines = report.table()
    table = Table(title=f"retinaedge validate — reference {report.reference}, {report.images} images")
    for h in lines[0]:
        table.add_column(h, justify="left" if h in ("model", "backend", "prec", "nms") else "right")
    for line in lines[1:]:
        style = {"FAIL": "red", "PASS": "green"}.get(line[-1])
        table.add_row(*line, style=style)
    console.print(table)
    for row in report.rows:
        for note in row.notes:
            console.print(f"  {row.label}: {note}")
    console.print(f"report: {Path(args.report) / 'report.md'}")
    if not report.passed:
        failed = [r.label for r in report.rows if not r.passed]
        console.print(f"[red]gate FAILED[/] for {failed} (gate {gate})")
        return 1
    console.print("[green]gate passed[/]")
    return 0
