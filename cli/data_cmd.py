"""``retinaedge data synth OUT ...`` writes the synthetic set; ``retinaedge data inspect --data DATA`` reports on a set:
sizes, boxes, classes and anchor coverage before and after the fit `retinaedge train` would make."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("data", help="dataset tools (synthetic data, inspection)",
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

    ins = sub.add_parser(
        "inspect", help="statistics of a COCO-format set and the recipe fitted to it",
        description="Image sizes and aspect ratios, boxes per image, box size/aspect per class, class balance, "
                    "tiny boxes, and the share of boxes the config's anchors cover at the matcher's IoU "
                    "threshold, before and after the input-size and anchor fit that `retinaedge train` makes. "
                    "Writes data_report.json and data_report.png to --out (default DATA/). Decodes no image.")
    ins.add_argument("--data", help="dataset root (COCO layout, as for train)")
    ins.add_argument("--split", default="train", choices=["train", "val"], help="split to inspect (default train)")
    ins.add_argument("--ann", help="annotation file (overrides DATA/annotations/instances_<split>.json)")
    ins.add_argument("--config", default="edge", help="preset or .toml whose anchors and fit are used (default edge)")
    ins.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, as for train")
    ins.add_argument("--out", help="folder for data_report.json/.png (default: the dataset root)")
    ins.set_defaults(func=run_inspect)


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


def run_inspect(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from retinaedge.runtime.cocoeval import split_layout
    from retinaedge.runtime.errors import InputError
    from retinaedge.runtime.io import ensure_writable_dir
    from retinaedge.train.config import FitConfig, load_config, make_spec
    from retinaedge.train.data.coco import read_categories
    from retinaedge.train.data.inspect import fit_recipe, inspect_boxes, read_box_set, write_report

    if args.ann is None and args.data is None:
        raise InputError("data inspect needs --data DATA (or --ann FILE); e.g. retinaedge data inspect --data DATA")
    ann = Path(args.ann) if args.ann else split_layout(args.data, args.split)[0]
    if not ann.is_file():
        raise InputError(f"{args.split} annotations {str(ann)!r} do not exist; expected "
                         f"DATA/annotations/instances_{args.split}.json or pass --ann")
    config = load_config(args.config, args.overrides)
    names, ids = read_categories(ann)
    box_set = read_box_set(ann)
    spec = make_spec(config, names, ids)
    inspect_boxes(box_set, spec)  # a split without boxes stops here, with the message that says so
    fc = config.fit if (config.fit.input_size or config.fit.anchors) else FitConfig(input_size=True, anchors=True)
    fit = fit_recipe(spec, box_set, fg_iou=config.loss.fg_iou, fit_input=fc.input_size, fit_anchors=fc.anchors,
                     progressive_size=config.data.progressive_size, seed=config.seed)
    stats_spec = spec.replace(input_height=fit.input_size[0], input_width=fit.input_size[1])
    stats = inspect_boxes(box_set, stats_spec)
    out = Path(args.out) if args.out else (Path(args.data) if args.data else ann.parent)
    ensure_writable_dir(out)
    anchors = dataclasses.replace(stats_spec.anchors, sizes=fit.sizes, aspect_ratios=fit.aspect_ratios)
    json_path, png_path = write_report(out, box_set, stats, fit, spec=stats_spec.replace(anchors=anchors))
    q = lambda d: f"{d.get('min', 0):g} / {d.get('median', 0):g} / {d.get('max', 0):g}"  # noqa: E731
    print(f"{ann}: {stats['images']} images ({stats['images_without_boxes']} without boxes), {stats['boxes']} boxes, "
          f"{len(names)} classes")
    print(f"  image width / height (min / median / max)  {q(stats['image_width'])}  x  {q(stats['image_height'])}")
    print(f"  boxes per image                            {q(stats['boxes_per_image'])}")
    print(f"  box side at input {fit.input_size[0]}x{fit.input_size[1]} (w, min/med/max)  {q(stats['box_width_px'])}"
          f"   h {q(stats['box_height_px'])}")
    print(f"  tiny boxes (< {stats['tiny_boxes']['below_px']:g} px)                    "
          f"{stats['tiny_boxes']['count']} ({stats['tiny_boxes']['share']:.1%})")
    print(f"  class balance (most / fewest boxes)        {stats['class_balance']['max_over_min']:g}x"
          + (f"; no boxes: {stats['class_balance']['empty_classes']}" if stats['class_balance']['empty_classes']
             else ""))
    for note in fit.notes:
        print(f"  fit: {note}")
    print(f"  pin it with: {' '.join('--set ' + o for o in fit.overrides())}")
    print(f"wrote {json_path} and {png_path}")
    return 0
