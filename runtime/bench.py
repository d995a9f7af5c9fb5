"""Latency, throughput, peak memory and cold start of a model, per backend/precision and batch size.

`bench_runner` times an active runner in this process: after ``warmup`` excluded iterations, each iteration is
one `Detector`-equivalent call (letterbox + model + post-process) on ``batch`` copies of a synthetic
``640x480`` image, with each stage timed separately.

`bench_model` runs `bench_runner` in a fresh Python process per model, so that

* the **cold start** is honest: wall time from spawning the process to its first detection (interpreter
  start, imports, model load, session/engine creation and the first call), measured by the parent;
* the **peak RSS** (``ru_maxrss`` of that process) belongs to that model alone.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.runner import Runner

FIRST_MARK = "RETINAEDGE-FIRST-DETECTION "
RESULT_MARK = "RETINAEDGE-BENCH-RESULT "


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``, the high-water mark of this program's own memory.
    ``ru_maxrss`` is not used there: Linux carries the spawning parent's RSS over ``exec`` into the child's
    ``ru_maxrss`` (``setmax_mm_hiwater_rss`` in ``exec_mmap``), so a process started from a big parent (a test
    run that imported torch) would report the parent's size. Elsewhere: ``ru_maxrss`` (bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def synthetic_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 RGB test image: smooth gradients plus a few solid rectangles."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)),
                    np.full_like(x, 96)], axis=-1).astype(np.uint8)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        w, h = int(rng.integers(8, max(9, width // 4))), int(rng.integers(8, max(9, height // 4)))
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


@dataclass(frozen=True)
class BenchResult:
    """Timing of one (model, batch size).

    Attributes:
        model: model path or runner name.
        backend: ``torch`` | ``ort`` | ``trt``.
        precision: ``fp32`` | ``fp16`` | ``int8``.
        batch: images per call.
        iters: timed iterations (warm-up excluded).
        warmup: untimed iterations before them.
        latency_ms_p50: median call latency (whole batch: letterbox + model + post-process).
        latency_ms_p90: 90th percentile.
        latency_ms_p99: 99th percentile.
        latency_ms_mean: mean.
        stage_ms: mean milliseconds per call of ``preprocess``, ``infer`` and ``postprocess``.
        throughput_ips: images per second over the timed iterations.
        peak_rss_mb: peak RSS of the process that ran it (its own process with `bench_model`).
        cold_start_s: process start to first detection (only with `bench_model`), else None.
        note: one-line caveat, e.g. for TensorRT-style INT8 ONNX timed on ORT.
    """

    model: str
    backend: str
    precision: str
    batch: int
    iters: int
    warmup: int
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_mean: float
    stage_ms: dict[str, float]
    throughput_ips: float
    peak_rss_mb: float
    cold_start_s: float | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench_runner(
    runner: Runner,
    *,
    batch: int = 1,
    iters: int = 50,
    warmup: int = 5,
    image: np.ndarray | None = None,
    model: str | None = None,
) -> BenchResult:
    """Time an (active or inactive) runner on ``batch`` copies of one image.

    Args:
        runner: the backend; activated here if needed (left active).
        batch: images per call.
        iters: timed iterations.
        warmup: untimed iterations first (session/kernel/engine warm-up).
        image: (H, W, 3) uint8 RGB; defaults to `synthetic_image`.
        model: name to report; defaults to the runner's path or name.
    """
    from retinaedge.runtime.postprocess import to_detections
    from retinaedge.runtime.preprocess import preprocess_batch

    if batch <= 0 or iters <= 0 or warmup < 0:
        raise InputError(f"batch={batch}, iters={iters} must be > 0 and warmup={warmup} >= 0")
    img = synthetic_image() if image is None else image
    images = [img] * batch
    spec = runner.spec
    runner.activate()
    for _ in range(warmup):
        x, metas = preprocess_batch(images, spec)
        to_detections(runner.infer(x), spec, metas)
    lat, stages = [], np.zeros(3)
    start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        x, metas = preprocess_batch(images, spec)
        t1 = time.perf_counter()
        out = runner.infer(x)
        t2 = time.perf_counter()
        to_detections(out, spec, metas)
        t3 = time.perf_counter()
        lat.append(t3 - t0)
        stages += (t1 - t0, t2 - t1, t3 - t2)
    total = time.perf_counter() - start
    ms = np.asarray(lat) * 1000.0
    return BenchResult(
        model=model or str(getattr(runner, "path", None) or runner.name), backend=runner.backend,
        precision=runner.precision, batch=batch, iters=iters, warmup=warmup,
        latency_ms_p50=float(np.percentile(ms, 50)), latency_ms_p90=float(np.percentile(ms, 90)),
        latency_ms_p99=float(np.percentile(ms, 99)), latency_ms_mean=float(ms.mean()),
        stage_ms={k: float(v) * 1000.0 / iters for k, v in zip(("preprocess", "infer", "postprocess"), stages,
                                                                 strict=True)},
        throughput_ips=batch * iters / total, peak_rss_mb=peak_rss_mb(),
    )


def _worker(config_json: str) -> None:
    """Body of the `bench_model` subprocess: first detection (marked on stdout), then every batch size."""
    from retinaedge.runtime.models import load_runner
    from retinaedge.runtime.runner import Detector

    cfg = json.loads(config_json)
    runner = load_runner(cfg["model"], **cfg.get("runner_kwargs", {}))
    img = synthetic_image()
    Detector(runner=runner)([img])
    print(f"{FIRST_MARK}{time.time():.6f}", flush=True)
    results = [bench_runner(runner, batch=b, iters=cfg["iters"], warmup=cfg["warmup"], image=img,
                            model=cfg["model"]).to_dict() for b in cfg["batches"]]
    runner.deactivate()
    rss = peak_rss_mb()
    for r in results:
        r["peak_rss_mb"] = rss  # the process peak covers loading too, not only the last batch size
    print(RESULT_MARK + json.dumps(results), flush=True)


def bench_model(
    model: str | Path,
    *,
    batches: Sequence[int] = (1,),
    iters: int = 50,
    warmup: int = 5,
    runner_kwargs: dict[str, Any] | None = None,
    timeout: float = 600.0,
    env: dict[str, str] | None = None,
    note: Callable[[BenchResult], str | None] | None = None,
) -> list[BenchResult]:
    """Benchmark one model file in a fresh process: cold start, peak RSS, and latency per batch size.

    Args:
        model: ``.onnx`` or ``.engine`` (loaded with `retinaedge.runtime.models.load_runner`).
        batches: batch sizes to time, in order.
        iters: timed iterations per batch size.
        warmup: untimed iterations per batch size.
        runner_kwargs: extra keyword arguments for ``load_runner`` (JSON-serialisable, e.g. ``threads``).
        timeout: seconds before the subprocess is killed.
        env: environment of the subprocess (defaults to this one).
        note: optional function giving a one-line caveat per result.

    Returns:
        One `BenchResult` per batch size, each with the process's ``cold_start_s`` and ``peak_rss_mb``.

    Raises:
        ModelError: the subprocess failed (its last stderr line is in the message) or timed out.
    """
    path = Path(model)
    if not path.is_file():
        raise InputError(f"model {str(path)!r} does not exist; pass an .onnx or .engine file")
    cfg = {"model": str(path), "batches": list(batches), "iters": iters, "warmup": warmup,
           "runner_kwargs": runner_kwargs or {}}
    code = f"from retinaedge.runtime.bench import _worker; _worker({json.dumps(json.dumps(cfg))})"
    start = time.time()  # wall clock: the child stamps its first detection with the same clock
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=env if env is not None else dict(os.environ), check=False)
    except subprocess.TimeoutExpired:
        raise ModelError(f"benchmark of {str(path)!r} did not finish within {timeout:g} s") from None
    cold: float | None = None
    results: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        if line.startswith(FIRST_MARK):
            cold = float(line[len(FIRST_MARK):]) - start
        elif line.startswith(RESULT_MARK):
            results = json.loads(line[len(RESULT_MARK):])
    if proc.returncode != 0 or not results:
        last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), "no output")
        raise ModelError(f"benchmark of {str(path)!r} failed (exit {proc.returncode}): {last}")
    out = []
    for r in results:
        res = BenchResult(**{**r, "cold_start_s": cold})
        if note is not None:
            res = BenchResult(**{**res.to_dict(), "note": note(res)})
        out.append(res)
    return out
