"""``retinaedge validate``: every model (torch FP32, ONNX on ORT, engines where TensorRT runs) on the same
images, one report row each, PASS/FAIL against the gate; exit code 1 when a gate fails.
"""

from __future__ import annotations

import argparse

ENGINE_SUFFIXES = (".engine", ".plan")


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


def find_models(entries: list[str]) -> list[str]:
    """Expand directories into their .onnx and engine files (sorted); keep files as given."""
    from pathlib import Path

    from retinaedge.runtime.errors import InputError

    found: list[str] = []
    for entry in entries:
        p = Path(entry)
        if p.is_dir():
            found += [str(f) for f in sorted(p.iterdir()) if f.suffix in (".onnx", *ENGINE_SUFFIXES) and f.is_file()]
        elif p.is_file():
            found.append(str(p))
        else:
            raise InputError(f"--models entry {entry!r} does not exist; pass model files or a directory of them")
    if not found:
        raise InputError(f"no .onnx or .engine files in {entries}; run retinaedge export/build first")
    return found


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from retinaedge.runtime.cocoeval import split_layout
    from retinaedge.runtime.errors import RetinaEdgeError
    from retinaedge.runtime.models import load_runner
    from retinaedge.runtime.runner import Runner
    from retinaedge.runtime.validate import DEFAULT_GATE, ExportNmsRunner, parse_gate, validate

    console = Console() if sys.stdout.isatty() else Console(width=200)  # no wrapping in logs and pipes
    gate = parse_gate(args.gate) if args.gate else dict(DEFAULT_GATE)
    default_ann, default_images = split_layout(args.data, "val")  # or COCO's instances_val2017.json, val2017/
    ann = Path(args.val_ann) if args.val_ann else default_ann
    images = Path(args.val_images) if args.val_images else default_images
    runners: list[Runner] = []
    raws: list[Runner | None] = []
    skipped: list[dict[str, str]] = []
    for path in find_models(args.models):
        is_engine = path.endswith(ENGINE_SUFFIXES)
        kwargs = {} if is_engine or not args.threads else {"threads": args.threads}
        try:
            runner = load_runner(path, **kwargs)
            if is_engine:  # engines need TensorRT + a GPU here: find out now, list them as skipped otherwise
                runner.activate()
                runner.deactivate()
        except RetinaEdgeError as e:
            if not is_engine:
                raise
            skipped.append({"model": path, "reason": str(e)})
            console.print(f"[yellow]skipped[/] {path}: {e}")
            continue
        runners.append(runner)
        raws.append(None if is_engine else load_runner(path, raw=True, **kwargs))
    reference: Runner | None = None
    raw_reference: Runner | None = None
    if args.checkpoint:
        from retinaedge.train.torch_runner import TorchRunner  # the CLI, not runtime/, may import torch

        ckpt = Path(args.checkpoint)
        if args.reference_nms == "export":
            reference = ExportNmsRunner(raw=TorchRunner(checkpoint=ckpt, raw=True))
        else:
            reference = TorchRunner(checkpoint=ckpt)
        raw_reference = TorchRunner(checkpoint=ckpt, raw=True)
    elif runners:
        fp32 = [i for i, r in enumerate(runners) if r.precision == "fp32"]
        if fp32:  # validate() would pick it too; its raw twin goes with it
            i = fp32[0]
            reference, raw_reference = runners.pop(i), raws.pop(i)
    if not runners and reference is None:
        console.print("retinaedge validate: nothing to validate here (every model was skipped)")
        return 1
    report = validate(
        ann_file=ann, image_dir=images, runners=runners, reference=reference, report_dir=args.report, gate=gate,
        batch=args.batch, max_images=args.max_images, raw_runners=raws, raw_reference=raw_reference,
        skipped=skipped, progress=lambda msg: console.print(f"[dim]{msg}[/]"),
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
