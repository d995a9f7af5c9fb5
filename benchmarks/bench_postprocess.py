"""Host post-processing: our numpy EfficientNMS path vs torchvision RetinaNet's ``postprocess_detections``.

Both take the same raw head outputs of an edge-sized RetinaNet (256x256 input, P3-P7, 9 anchors per cell:
N = 12276 anchors; ``--classes`` classes) and return per-image detections:

* ours: ``retinaedge.runtime.postprocess.to_detections({"cls_logits", "box_deltas"}, spec, metas)`` -- the
  EfficientNMS_TRT twin (threshold in logit space, (anchor, class) pool, per-class greedy NMS) plus the
  mapping back to original-image pixels, numpy only;
* torchvision: a real ``torchvision.models.detection.RetinaNet`` (dummy backbone, never run) and its bound
  ``postprocess_detections(head_outputs, anchors, image_sizes)`` with the same thresholds
  (score 0.05, IoU 0.5, 100 detections, its default top-1000 per level), tensors prepared outside the timing.

Score distributions (``--scenario``):

* ``trained``: what a trained detector emits -- ``--objects`` objects per image; each anchor's logit for
  its object's class rises with its IoU to the object (``-4.6 + 12 * (IoU - 0.3)`` plus N(0, 0.5): the prior
  at IoU 0.3, 0.1 at IoU 0.5), the deltas point at the object; every other logit is background, far below
  the -4.6 prior (N(-7.6, 1.2)). Tens of candidates per object pass 0.05 and NMS collapses them.
* ``prior``: an untrained head right after the focal-loss prior init: every logit N(-4.6, 1) -- thousands
  of candidates; a stress case.

Both run single-threaded (``torch.set_num_threads(1)``; numpy's element-wise ops are single-threaded),
alternately in rounds; the ratio of median per-call times (torchvision / ours) is printed per scenario.

    .venv/bin/python benchmarks/bench_postprocess.py                       # both scenarios, 4 and 10 classes
    .venv/bin/python benchmarks/bench_postprocess.py --scenario trained --classes 10 --batch 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def make_spec(size: int, num_classes: int):
    from retinaedge.runtime.spec import AnchorSpec, DetectorSpec, PostProcess

    return DetectorSpec(class_names=tuple(f"c{i}" for i in range(num_classes)), input_height=size,
                        input_width=size, anchors=AnchorSpec(sizes=(16.0, 32.0, 64.0, 128.0, 256.0)),
                        postprocess=PostProcess(score_threshold=0.05, iou_threshold=0.5, max_detections=100,
                                                topk_per_level=1000))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (G, 4) xyxy -> (N, G) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None] - inter)


def make_outputs(spec, batch: int, scenario: str, objects: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw heads (B, N, C) logits and (B, N, 4) deltas with the chosen score distribution."""
    rng = np.random.default_rng(seed)
    n, c = spec.num_anchors, spec.num_classes
    anchors = spec.anchors_xyxy().astype(np.float64)
    if scenario == "prior":
        logits = rng.normal(-4.6, 1.0, (batch, n, c))
        deltas = rng.normal(0, 0.2, (batch, n, 4))
        return logits.astype(np.float32), deltas.astype(np.float32)
    logits = rng.normal(-7.6, 1.2, (batch, n, c))
    deltas = rng.normal(0, 0.2, (batch, n, 4))
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    size = spec.input_width
    for b in range(batch):
        wh = rng.uniform(16, size / 2, (objects, 2))
        xy = rng.uniform(0, 1, (objects, 2)) * (size - wh)
        gt = np.concatenate([xy, xy + wh], 1)
        cls = rng.integers(0, c, objects)
        iou = _iou(anchors, gt)
        best = iou.argmax(1)
        best_iou = iou[np.arange(n), best]
        pos = best_iou > 0.1  # deltas regress toward the object from any overlapping anchor
        g = gt[best[pos]]
        gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        gx, gy = g[:, 0] + gw / 2, g[:, 1] + gh / 2
        enc = np.stack([(gx - ax[pos]) / aw[pos], (gy - ay[pos]) / ah[pos], np.log(gw / aw[pos]),
                        np.log(gh / ah[pos])], 1)
        deltas[b, pos] = enc + rng.normal(0, 0.1, enc.shape)
        # trained as RetinaNet: IoU < 0.4 negatives pushed down, >= 0.5 positives up; the prior at IoU 0.3
        rows = np.flatnonzero(pos)
        logits[b, rows, cls[best[pos]]] = -4.6 + 12 * (best_iou[pos] - 0.3) + rng.normal(0, 0.5, len(rows))
    return logits.astype(np.float32), deltas.astype(np.float32)


def build_torchvision(spec):
    """A real torchvision RetinaNet whose ``postprocess_detections`` we call (the backbone is never run)."""
    import torch
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    class NoBackbone(torch.nn.Module):
        out_channels = 8

    pp = spec.postprocess
    gen = AnchorGenerator(tuple((s,) for s in spec.anchors.sizes), ((0.5, 1.0, 2.0),) * len(spec.anchors.sizes))
    return RetinaNet(NoBackbone(), num_classes=spec.num_classes, anchor_generator=gen,
                     score_thresh=pp.score_threshold, nms_thresh=pp.iou_threshold,
                     detections_per_img=pp.max_detections, topk_candidates=pp.topk_per_level).eval()


def _median_ms(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _agreement(ours, theirs) -> float:
    """Share of torchvision's detections that ours has too (same class, IoU >= 0.9)."""
    hit = total = 0
    for d, t in zip(ours, theirs, strict=True):
        tb, tl = t["boxes"].numpy(), t["labels"].numpy()
        total += len(tb)
        if len(tb) and len(d):
            iou = _iou(tb.astype(np.float64), d.boxes.astype(np.float64))
            same = tl[:, None] == d.classes[None]
            hit += int(((iou >= 0.9) & same).any(1).sum())
    return hit / total if total else 1.0


def run_case(scenario: str, classes: int, args) -> dict:
    import torch

    from retinaedge.runtime.postprocess import to_detections
    from retinaedge.runtime.preprocess import Letterbox

    spec = make_spec(args.size, classes)
    logits, deltas = make_outputs(spec, args.batch, scenario, args.objects, args.seed)
    metas = [Letterbox(1.0, 0.0, 0.0, spec.input_height, spec.input_width)] * args.batch
    raw = {spec.io.cls_logits: logits, spec.io.box_deltas: deltas}

    model = build_torchvision(spec)
    sizes = spec.level_sizes()
    head = {"cls_logits": list(torch.from_numpy(logits).split(sizes, 1)),
            "bbox_regression": list(torch.from_numpy(deltas).split(sizes, 1))}
    anchors = [list(torch.from_numpy(spec.anchors_xyxy()).split(sizes, 0))] * args.batch
    shapes = [(spec.input_height, spec.input_width)] * args.batch

    def ours():
        return to_detections(raw, spec, metas)

    def theirs():
        with torch.no_grad():
            return model.postprocess_detections(head, anchors, shapes)

    candidates = int((logits >= np.log(0.05 / 0.95)).sum()) / args.batch
    ours(), theirs()  # warm-up
    t_ours, t_theirs = [], []
    for _ in range(args.rounds):
        t_ours.append(_median_ms(ours, args.iters))
        t_theirs.append(_median_ms(theirs, args.iters))
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    d_ours, d_theirs = ours(), theirs()
    return {"scenario": scenario, "classes": classes, "anchors": spec.num_anchors, "batch": args.batch,
            "candidates_per_image": candidates,
            "detections_per_image": sum(len(d) for d in d_ours) / args.batch,
            "ours_ms": mo, "torchvision_ms": mt, "ratio": mt / mo,
            "agreement_with_torchvision": _agreement(d_ours, d_theirs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=["trained", "prior", "all"], default="all")
    ap.add_argument("--classes", type=int, nargs="+", default=[4, 10])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--objects", type=int, default=8, help="objects per image (trained scenario)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    scenarios = ["trained", "prior"] if args.scenario == "all" else [args.scenario]
    rows = []
    print(f"{'scenario':9s} {'C':>3s} {'N':>6s} {'B':>2s} {'cand/img':>9s} {'det/img':>8s} {'ours ms':>8s} "
          f"{'tv ms':>8s} {'ratio':>6s} {'agree':>6s}")
    for scenario in scenarios:
        for c in args.classes:
            r = run_case(scenario, c, args)
            rows.append(r)
            print(f"{r['scenario']:9s} {c:3d} {r['anchors']:6d} {r['batch']:2d} {r['candidates_per_image']:9.0f} "
                  f"{r['detections_per_image']:8.1f} {r['ours_ms']:8.3f} {r['torchvision_ms']:8.3f} "
                  f"{r['ratio']:5.2f}x {r['agreement_with_torchvision']:6.3f}")
    print("ratio = torchvision postprocess_detections time / numpy EfficientNMS twin time (same run, median); "
          "goal >= 3x on the trained scenario")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=2))


if __name__ == "__main__":
    main()
