"""``retinaedge demo``: the whole pipeline on built-in synthetic data, on CPU, in about 15 minutes on 2 cores.

1. synthesise a COCO-format set and a test video;  2. train the ``edge`` preset on a time budget;
3. export FP32, FP16, INT8 (TensorRT Q/DQ) and INT8-CPU ONNX with EfficientNMS_TRT;
4. validate every precision against the torch FP32 reference on CPU (pycocotools AP, Polygraphy raw-output
stats, detection agreement, gate); 5. run the video pipeline; 6. print the report and where the files are.
On a host with TensorRT and a GPU it also builds FP32/FP16/INT8 engines and validates them.

Every step is the same code path as its own subcommand (this module calls `retinaedge.cli.main` with the
arguments a user would type), so the demo is also the integration test of the documented CLI.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path

STEPS = ("data", "train", "export", "build", "validate", "video")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the whole pipeline on synthetic data (CPU, ~15 min on 2 cores)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--train-minutes", type=float, default=9.0,
                   help="training time budget in minutes (default: 9.0)")
    p.add_argument("--train-images", type=int, default=None, help="synthetic training images (default: synth's)")
    p.add_argument("--val-images", type=int, default=None, help="synthetic validation images (default: synth's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override, as for `retinaedge train --set` (repeatable)")
    p.add_argument("--skip", default="", help=f"comma-separated steps to skip, from {list(STEPS)} "
                   "(a skipped step reuses what an earlier demo left in --out)")
    p.set_defaults(func=run)


def _tensorrt_available() -> bool:
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        return False
    import tensorrt as trt

    return hasattr(trt, "Builder")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from retinaedge.cli import main
    from retinaedge.runtime.errors import InputError

    console = Console()
    out: Path = args.out
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bad = sorted(skip - set(STEPS))
    if bad:
        raise InputError(f"--skip {','.join(bad)} is not a step; choose from {list(STEPS)}")
    data, run_dir, export_dir = out / "data", out / "run", out / "export"
    engine_dir, report_dir, video_dir = out / "engines", out / "report", out / "video"
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def step(name: str, title: str, argv: list[str], *, ok_codes: tuple[int, ...] = (0,)) -> int:
        if name in skip:
            console.rule(f"[dim]{title} (skipped)")
            return 0
        console.rule(f"[bold cyan]{title}")
        console.print("[dim]$ retinaedge " + " ".join(argv))
        t0 = time.perf_counter()
        code = main(argv)
        timings[name] = time.perf_counter() - t0
        if code not in ok_codes:
            raise SystemExit(code)
        return code

    synth = ["data", "synth", str(data), "--video"]
    if args.train_images is not None:
        synth += ["--train", str(args.train_images)]
    if args.val_images is not None:
        synth += ["--val", str(args.val_images)]
    step("data", "1/6 synthesise data and a test video", synth)

    train = ["train", "--data", str(data), "--config", "edge", "--time-budget", str(args.train_minutes),
             "--out", str(run_dir)]
    for o in args.overrides:
        train += ["--set", o]
    if run_dir.exists() and "train" not in skip:
        train.append("--resume")  # a re-run continues (and finishes at once if the budget was spent)
    step("train", f"2/6 train the edge preset ({args.train_minutes:g} min budget)", train)

    ckpt = run_dir / "ckpt_best.pt"
    step("export", "3/6 export FP32, FP16, INT8 (TensorRT Q/DQ) and INT8-CPU ONNX with EfficientNMS_TRT",
         ["export", "--checkpoint", str(ckpt), "--out", str(export_dir), "--precision", "fp32,fp16,int8,int8-cpu",
          "--nms", "efficient", "--calib-data", str(data)])

    models = [str(export_dir)]
    if _tensorrt_available():
        for prec in ("fp32", "fp16", "int8"):
            step("build", f"3b/6 build the {prec} TensorRT engine",
                 ["build", "--onnx", str(export_dir / f"model.{'fp32' if prec == 'fp32' else prec}.onnx"),
                  "--out", str(engine_dir), "--precision", prec, "--calib-data", str(data)])
        models.append(str(engine_dir))
    else:
        console.print("[dim]TensorRT/PyCUDA not found: engines are built on a GPU host (make gpu-check)")

    gate_code = step("validate", "4/6 validate every precision against torch FP32 (CPU)",
                     ["validate", "--data", str(data), "--models", *models, "--checkpoint", str(ckpt),
                      "--report", str(report_dir)], ok_codes=(0, 1))

    step("video", "5/6 run the video pipeline",
         ["infer", "--model", str(export_dir / "model.fp32.onnx"), "--source", str(data / "video.mp4"),
          "--out", str(video_dir)])

    total = time.perf_counter() - t_start
    _summary(console.print, out, report_dir, video_dir, run_dir, timings, total)
    (out / "demo.json").write_text(json.dumps({"timings_s": timings, "total_s": total,
                                               "gate_passed": gate_code == 0}, indent=2) + "\n")
    # the demo shows the pipeline; the gate verdict is printed, and `retinaedge validate` is what exits 1 on it
    verdict = "[bold green]PASS" if gate_code == 0 else "[bold red]FAIL (a precision lost more AP than the gate allows)"
    console.print(f"accuracy gate: {verdict}")
    return 0


def _summary(say: Callable[..., None], out: Path, report_dir: Path, video_dir: Path, run_dir: Path,
             timings: dict[str, float], total: float) -> None:
    from rich.table import Table

    say("")
    t = Table(title="6/6 demo summary", show_lines=False)
    t.add_column("step")
    t.add_column("seconds", justify="right")
    for k, v in timings.items():
        t.add_row(k, f"{v:.0f}")
    t.add_row("[bold]total", f"[bold]{total:.0f}")
    say(t)
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        say(f"trained edge model: AP {m.get('AP', float('nan')):.3f}  AP50 {m.get('AP50', float('nan')):.3f}")
    report = report_dir / "report.md"
    if report.is_file():
        say(report.read_text())
    say(f"files: data {out / 'data'} | run {run_dir} | ONNX {out / 'export'} | report {report_dir} | "
        f"video {video_dir / 'annotated.mp4'}")
