"""``retinaedge data synth OUT [--train N] [--val N] [--size S] [--seed K] [--video]``: write the synthetic set."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("data", help="dataset tools (synthetic data)",
                                   description="Dataset tools.")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = sub.add_parser(
        "synth", help="write a synthetic COCO-format detection set",
        description="Write shapes on cluttered backgrounds in the COCO 2017 layout: OUT/annotations/"
                    "instances_{train,val}.json and OUT/{train,val}/*.jpg (plus OUT/video.mp4 and "
                    "OUT/annotations/video_gt.json with --video). Deterministic by --seed.")
    synth.add_argument("out", metavar="OUT", help="dataset root to write")
    synth.add_argument("--train", type=int, default=2400, metavar="N", help="training images (default 2400)")
    synth.add_argument("--val", type=int, default=240, metavar="N", help="validation images (default 240)")
    synth.add_argument("--size", type=int, default=256, metavar="S",
                       help="nominal image side in pixels; sides vary in 0.75..1.25 x S (default 256)")
    synth.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    synth.add_argument("--video", action="store_true", help="also write video.mp4 with per-frame ground truth")
    synth.add_argument("--frames", type=int, default=90, metavar="N", help="video frames (default 90)")
    synth.add_argument("--workers", type=int, default=None, metavar="N",
                       help="rendering processes (default min(4, CPUs)); the output does not depend on it")
    synth.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from retinaedge.train.data.synth import write_synthetic_coco

    t0 = time.perf_counter()
    summary = write_synthetic_coco(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed,
                                   video=args.video, video_frames=args.frames, workers=args.workers)
    dt = time.perf_counter() - t0
    cats = ", ".join(f"{c['id']}:{c['name']}" for c in summary["categories"])
    print(f"wrote {summary['root']} in {dt:.1f}s (seed {summary['seed']}, size {summary['size']})")
    print(f"  categories  {cats}")
    for name, s in summary["splits"].items():
        print(f"  {name:<5}       {s['images']} images, {s['annotations']} boxes -> {s['ann_file']}")
    if summary["video"]:
        v = summary["video"]
        print(f"  video       {v['frames']} frames {v['width']}x{v['height']} @ {v['fps']} fps ({v['codec']}), "
              f"{v['annotations']} boxes -> {v['path']}, {v['gt_path']}")
    return 0
