"""``retinaedge bench``: latency p50/p90/p99, throughput, peak RSS and cold start per model and batch size.

Each model runs in its own fresh process (cold start = process start to first detection; peak RSS belongs to
that model alone). Warm-up iterations are excluded from the timings.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "bench",
        help="latency, throughput, peak memory and cold start of models",
        description="Benchmark .onnx (ORT CPU) and .engine (TensorRT) models: one fresh process per model; "
        "latency p50/p90/p99 and throughput per batch size (warm-up excluded), peak RSS, cold start.",
    )
    p.add_argument("--model", required=True, nargs="+", help="model files (or directories of them)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--iters", type=int, default=50, help="timed iterations per batch size (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model before giving up")
    p.set_defaults(func=run)


def parse_batches(text: str) -> list[int]:
    from retinaedge.runtime.errors import InputError

    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) <= 0:
        raise InputError(f"--batch {text!r} is not a comma-separated list of positive integers, e.g. 1,4")
    return batches


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from rich.console import Console
    from rich.table import Table

    from retinaedge.runtime.bench import BenchResult, bench_model
    from retinaedge.runtime.io import atomic_write_text
    from retinaedge.runtime.models import ENGINE_SUFFIXES
    from retinaedge.runtime.validate import TRT_INT8_NOTE, find_models

    console = Console() if sys.stdout.isatty() else Console(width=200)  # no wrapping in logs and pipes
    batches = parse_batches(args.batch)
    results: list[BenchResult] = []

    def note(r: BenchResult) -> str | None:
        if r.precision != "int8" or r.backend != "ort":
            return None
        from retinaedge.runtime.onnxinfo import META_TARGET, read_onnx_metadata

        return TRT_INT8_NOTE if read_onnx_metadata(r.model).get(META_TARGET) == "tensorrt" else None

    for path in find_models(args.model):
        kwargs = {"threads": args.threads} if args.threads and not path.endswith(ENGINE_SUFFIXES) else {}
        console.print(f"[dim]benchmarking {path} (batch {batches}, {args.iters} iters, {args.warmup} warm-up)[/]")
        results += bench_model(path, batches=batches, iters=args.iters, warmup=args.warmup, runner_kwargs=kwargs,
                               timeout=args.timeout, note=note)
    table = Table(title="retinaedge bench (per call: letterbox + model + post-process)")
    for h in ("model", "backend", "prec", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "peak RSS MB",
              "cold start s"):
        table.add_column(h, justify="left" if h in ("model", "backend", "prec") else "right")
    for r in results:
        table.add_row(r.model.rsplit("/", 1)[-1], r.backend, r.precision + ("*" if r.note else ""), str(r.batch),
                      f"{r.latency_ms_p50:.2f}", f"{r.latency_ms_p90:.2f}", f"{r.latency_ms_p99:.2f}",
                      f"{r.throughput_ips:.1f}", f"{r.peak_rss_mb:.0f}",
                      "-" if r.cold_start_s is None else f"{r.cold_start_s:.2f}")
    console.print(table)
    if any(r.note for r in results):
        console.print(f"* {TRT_INT8_NOTE}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"results": [r.to_dict() for r in results]}, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0
