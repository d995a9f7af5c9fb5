"""``retinaedge infer``: detections on a video file, a live stream/camera or an image folder.

Images in a folder are read as displayed (EXIF orientation applied), like OpenCV's ``imread``: boxes, sizes and
annotated copies are in the frame a viewer shows.

Never imports torch: an edge box needs only the runtime (ORT on CPU, TensorRT + PyCUDA on a GPU).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "infer",
        help="run a model on a video, stream URL, /dev/videoN, image folder or image",
        description="Run an .onnx (ONNX Runtime, CPU) or .engine (TensorRT, GPU) model on a video file, a live "
        "stream (tcp://, rtsp://, udp://, http://...), a capture device (/dev/videoN), a folder of images or one "
        "image. Writes detections.jsonl, stats.json and an annotated MP4 (video) or annotated/ images. "
        "Images are read as displayed: their EXIF orientation is applied (as OpenCV's imread does), so boxes, "
        "sizes and annotated images are in the displayed frame.",
    )
    p.add_argument("--model", required=True, help="model file: .onnx or .engine")
    p.add_argument("--source", required=True,
                   help="VIDEO file, URL, /dev/videoN, IMG_DIR or IMAGE (.jpg/.png/...; images are turned by "
                   "their EXIF orientation)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch", type=int, default=1, help="frames/images per inference call (default 1)")
    p.add_argument("--stall-timeout", type=float, default=10.0, metavar="S",
                   help="live sources: stop after S seconds without data (default 10)")
    p.add_argument("--open-timeout", type=float, default=10.0, metavar="S",
                   help="live sources: seconds to connect/open (default 10)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames (cameras, streams)")
    p.add_argument("--format", default=None, help="force the input container format (e.g. mpegts, v4l2)")
    p.add_argument("--no-draw", action="store_true", help="write detections.jsonl only, no annotated output")
    p.add_argument("--min-score", type=float, default=0.3,  # runtime.outputs.DRAW_MIN_SCORE (tested)
                   help="draw detections at or above this score (all go to the JSONL; default 0.3)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (.onnx only)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from retinaedge.runtime.images import run_images
    from retinaedge.runtime.models import load_runner
    from retinaedge.runtime.runner import Detector
    from retinaedge.runtime.sources import is_image_source
    from retinaedge.runtime.video import run_video

    console = Console(stderr=True)
    kwargs = {"threads": args.threads} if args.threads and str(args.model).endswith(".onnx") else {}
    detector = Detector(runner=load_runner(args.model, **kwargs))
    source = Path(args.source)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.quiet, transient=True) as progress:
        if is_image_source(source):
            from retinaedge.runtime.preprocess import image_files

            task = progress.add_task("images", total=len(image_files(source)))
            stats = run_images(detector=detector, source_dir=source, out_dir=args.out, batch=args.batch,
                               write_images=not args.no_draw, min_score=args.min_score,
                               progress=lambda n: progress.update(task, completed=n))
            console.print(f"retinaedge infer: {stats.summary()}; wrote {stats.jsonl_path}")
            return 0
        task = progress.add_task("frames", total=args.max_frames)
        vstats = run_video(detector=detector, source=args.source, out_dir=args.out, batch=args.batch,
                           write_video=not args.no_draw, stall_timeout=args.stall_timeout,
                           open_timeout=args.open_timeout, max_frames=args.max_frames, format=args.format,
                           min_score=args.min_score, progress=lambda n: progress.update(task, completed=n))
    outputs = ", ".join(p for p in (vstats.video_path, vstats.jsonl_path) if p)
    if vstats.status in ("ok", "interrupted"):
        console.print(f"retinaedge infer: {vstats.summary()}; wrote {outputs}")
        return 0
    # a broken or stalled stream is not a crash: the outputs are valid, but say so and exit non-zero
    print(f"retinaedge infer: warning: {vstats.summary()}; wrote {outputs}", file=sys.stderr)
    return 1
