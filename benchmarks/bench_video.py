"""Video-pipeline fps against model-only fps, same clip, same model, same batch, same run (issue 5; goal >= 0.9).

* model-only: the clip's frames decoded into memory first, then letterbox + model + post-process for every frame
  (the `Detector` work and nothing else), timed;
* pipeline: `retinaedge.runtime.video.run_video` on the file: decode thread, inference thread, writer thread
  (annotated MP4 + JSONL). Its running rate is ``VideoStats.steady_fps`` (first to last written frame), the
  counterpart of model-only, which excludes model loading too; the end-to-end rate (opening the file,
  creating the ORT session and the encoder included) is printed beside it.

The ratio ``pipeline fps / model fps`` says how much the three-thread pipeline loses to decoding, drawing and
encoding; on a 2-core CPU those stages share the cores with ONNX Runtime. Runs alternate (model, pipeline, model,
...) and the median of each is reported.

    .venv/bin/python benchmarks/bench_video.py --model demo_out/export/model.fp32.onnx --video demo_out/data/video.mp4
    .venv/bin/python benchmarks/bench_video.py              # defaults: random-weight `edge` export + synthetic clip
    .venv/bin/python benchmarks/bench_video.py --repeats 1 --frames 30   # a quick sanity run

Writes ``benchmarks/out/bench_video.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
GOAL = 0.9


def default_model(out: Path) -> Path:
    """A random-weight `edge` preset exported to FP32 ONNX with EfficientNMS (timing does not need training)."""
    path = out / "edge_random" / "model.fp32.onnx"
    if path.is_file():
        return path
    import torch

    from retinaedge.export.config import ExportConfig
    from retinaedge.export.pipeline import export_model
    from retinaedge.train.checkpoint import save_checkpoint
    from retinaedge.train.config import config_to_dict, load_config, make_spec
    from retinaedge.train.data.synth import CATEGORIES
    from retinaedge.train.model import build_model

    print(f"exporting a random-weight edge model to {path.parent} ...", flush=True)
    config = load_config("edge")
    spec = make_spec(config, [n for _, n in CATEGORIES], [c for c, _ in CATEGORIES])
    torch.manual_seed(0)
    model = build_model(spec, config.model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = path.parent / "ckpt.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": config_to_dict(config), "spec": spec.to_dict(),
                           "epoch": 0, "step": 0, "batch": 0, "elapsed_s": 0.0, "best_ap": -1.0, "optimizer": {},
                           "scaler": {}, "rng": {}})
    export_model(ExportConfig(checkpoint=ckpt, out_dir=path.parent, precisions=("fp32",), nms="efficient"),
                 echo=print)
    return path


def default_video(out: Path, frames: int) -> Path:
    path = out / f"video_{frames}.mp4"
    if not path.is_file():
        from retinaedge.train.data.video_synth import write_synthetic_video

        out.mkdir(parents=True, exist_ok=True)
        write_synthetic_video(path, out / f"video_{frames}_gt.json", frames=frames)
    return path


def decode_all(video: Path) -> list:
    import av

    with av.open(str(video)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def model_only(detector, frames: list, batch: int) -> float:
    """fps of letterbox + model + post-process over in-memory frames (runner already active)."""
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        detector(frames[i:i + batch])
    return len(frames) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="an .onnx (default: random-weight edge export)")
    ap.add_argument("--video", type=Path, default=None, help="a clip (default: synthetic, --frames frames)")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's choice)")
    ap.add_argument("--no-video-out", action="store_true", help="pipeline writes the JSONL only")
    ap.add_argument("--min-score", type=float, default=0.3, help="draw boxes at or above it (`infer`'s default)")
    args = ap.parse_args()

    from retinaedge.runtime.models import load_runner
    from retinaedge.runtime.runner import Detector
    from retinaedge.runtime.video import run_video

    OUT.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model(OUT)
    video = args.video or default_video(OUT, args.frames)
    kwargs = {"threads": args.threads} if args.threads else {}
    frames = decode_all(video)
    print(f"model {model}\nvideo {video}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, "
          f"batch {args.batch}", flush=True)

    detector = Detector(runner=load_runner(model, **kwargs))
    detector.runner.activate()
    detector(frames[:2])  # warm-up: session set-up is not throughput
    model_fps, pipe_fps, e2e_fps, stats = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            model_fps.append(model_only(detector, frames, args.batch))
            detector.runner.deactivate()  # the pipeline's inference thread activates its own
            s = run_video(detector=detector, source=str(video), out_dir=Path(tmp) / str(r), batch=args.batch,
                          write_video=not args.no_video_out, min_score=args.min_score)
            detector.runner.activate()
            pipe_fps.append(s.steady_fps)
            e2e_fps.append(s.fps)
            stats.append(s.to_dict())
            print(f"  run {r + 1}: model-only {model_fps[-1]:.1f} fps, pipeline {s.steady_fps:.1f} fps "
                  f"(end to end {s.fps:.1f}) "
                  f"(stages ms/frame: " + ", ".join(f"{k} {v:.2f}" for k, v in s.stage_ms.items()) + ")",
                  flush=True)
    detector.runner.deactivate()
    m, p, e = statistics.median(model_fps), statistics.median(pipe_fps), statistics.median(e2e_fps)
    ratio = p / m
    verdict = "meets" if ratio >= GOAL else "misses"
    print(f"\nmodel-only {m:.1f} fps | video pipeline {p:.1f} fps | ratio {ratio:.3f} ({verdict} the goal >= {GOAL})"
          f"\nend to end (start-up included): {e:.1f} fps, ratio {e / m:.3f}")
    result = {"model": str(model), "video": str(video), "frames": len(frames), "batch": args.batch,
              "model_only_fps": model_fps, "pipeline_fps": pipe_fps, "median_model_only_fps": m,
              "median_pipeline_fps": p, "ratio": ratio, "pipeline_end_to_end_fps": e2e_fps,
              "median_end_to_end_fps": e, "end_to_end_ratio": e / m, "goal": GOAL, "pipeline_stats": stats,
              "write_video": not args.no_video_out}
    (OUT / "bench_video.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT / 'bench_video.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
