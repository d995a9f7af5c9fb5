"""Export-stage CPU benchmark (issue 3): latency ratios and AP retention of the exported ONNX variants.

Measured in one run, against the peer in the same run (ratios, not absolute times):

* ORT FP32 vs torch eager, batch 1, network only (raw heads) — goal >= 2x;
* ORT ``int8-cpu`` (U8S8 QDQ) vs ORT FP32, batch 1 — goal >= 2.5x faster, keeping >= 99% of the FP32 AP;
* AP retention vs ORT FP32 on the val set (ORT + the numpy EfficientNMS twin): FP16 (goal 99.9%), INT8 Q/DQ for
  TensorRT (goal 99%; it is validated for accuracy here, never timed: TensorRT-style symmetric Q/DQ runs slower
  than FP32 in ORT, docs/TENSORRT.md), int8-cpu (goal 99%).

Usage::

    python benchmarks/bench_export_cpu.py --checkpoint runs/edge/ckpt_best.pt --data DATA \
        --out benchmarks/out/export [--export-dir DIR] [--iters 50] [--threads 2] [--max-images 240]

Writes ``<out>/bench_export_cpu.json`` and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _latency(fn: Any, iters: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))], "iters": iters}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="COCO-layout dir: annotations/instances_val.json + val/")
    ap.add_argument("--out", default="benchmarks/out/export")
    ap.add_argument("--export-dir", default=None, help="reuse an existing export (else export into OUT/models)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-images", type=int, default=240)
    ap.add_argument("--calib-images", type=int, default=64)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from retinaedge.export.config import ExportConfig
    from retinaedge.export.pipeline import export_model
    from retinaedge.runtime.cocoeval import coco_evaluate, load_coco
    from retinaedge.runtime.ort_runner import OrtRunner
    from retinaedge.runtime.preprocess import load_image, preprocess_batch
    from retinaedge.runtime.runner import Detector
    from retinaedge.train.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    if args.export_dir:
        models = Path(args.export_dir)
    else:
        models = out / "models"
        t0 = time.perf_counter()
        export_model(ExportConfig(checkpoint=Path(args.checkpoint), out_dir=models,
                                  precisions=("fp32", "fp16", "int8", "int8-cpu"), nms="efficient",
                                  calib_data=data, calib_images=args.calib_images), echo=print)
        print(f"export took {time.perf_counter() - t0:.1f} s")
    model, spec, _ = load_checkpoint(args.checkpoint)

    gt = load_coco(data / "annotations" / "instances_val.json")
    records = sorted(gt.dataset["images"], key=lambda r: r["id"])[: args.max_images]
    images = [load_image(data / "val" / r["file_name"]) for r in records]
    ids = [int(r["id"]) for r in records]
    one, _ = preprocess_batch(images[:1], spec)

    result: dict[str, Any] = {"checkpoint": args.checkpoint, "data": str(data), "threads": args.threads,
                              "images": len(images), "latency_b1": {}, "AP": {}}
    with torch.no_grad():
        x = torch.from_numpy(one)
        result["latency_b1"]["torch_fp32"] = _latency(lambda: model(x), args.iters)
    for prec in ("fp32", "int8-cpu"):
        with OrtRunner(path=models / f"model.{prec}.onnx", threads=args.threads, raw=True) as r:
            result["latency_b1"][f"ort_{prec}"] = _latency(lambda r=r: r.infer(one), args.iters)

    for prec in ("fp32", "fp16", "int8", "int8-cpu"):
        det = Detector(runner=OrtRunner(path=models / f"model.{prec}.onnx", threads=args.threads))
        dets = []
        for i in range(0, len(images), 8):
            dets += det(images[i : i + 8])
        det.runner.deactivate()
        m = coco_evaluate(gt, dict(zip(ids, dets, strict=True)), spec.category_ids, spec.class_names)
        result["AP"][prec] = {"AP": m["AP"], "AP50": m["AP50"]}

    lat, aps = result["latency_b1"], result["AP"]
    ap32 = aps["fp32"]["AP"] or float("nan")
    result["ratios"] = {
        "ort_fp32_speedup_vs_torch": lat["torch_fp32"]["p50_ms"] / lat["ort_fp32"]["p50_ms"],
        "int8_cpu_speedup_vs_ort_fp32": lat["ort_fp32"]["p50_ms"] / lat["ort_int8-cpu"]["p50_ms"],
        "fp16_AP_retained": aps["fp16"]["AP"] / ap32,
        "int8_AP_retained": aps["int8"]["AP"] / ap32,
        "int8_cpu_AP_retained": aps["int8-cpu"]["AP"] / ap32,
    }
    goals = {"ort_fp32_speedup_vs_torch": 2.0, "int8_cpu_speedup_vs_ort_fp32": 2.5, "fp16_AP_retained": 0.999,
             "int8_AP_retained": 0.99, "int8_cpu_AP_retained": 0.99}
    result["goals"] = goals
    export_log = models / "export.json"
    if export_log.is_file():
        result["calibration"] = json.loads(export_log.read_text()).get("calibration", {})
    for k, v in result["ratios"].items():
        print(f"{k:32s} {v:7.3f}  (goal >= {goals[k]})  {'PASS' if np.isfinite(v) and v >= goals[k] else 'FAIL'}")
    for prec, v in aps.items():
        print(f"AP {prec:9s} {v['AP']:.4f}  AP50 {v['AP50']:.4f}")
    (out / "bench_export_cpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out / 'bench_export_cpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
