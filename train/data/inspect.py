"""Know the data before training: statistics of a COCO-format split, anchor coverage, and the recipe fitted to it.

`read_box_set` reads the boxes and image sizes straight from the annotation file (no image is decoded, so a
large set inspects in seconds). `inspect_boxes` summarises them: image sizes and aspect ratios, boxes per image,
box width/height/aspect per class, class balance, tiny boxes, and how well a spec's anchors cover the boxes at
the matcher's thresholds. `fit_recipe` chooses, from the same boxes:

- the input size: the images' native size (rounded up to a multiple of 32 and never above the preset's size),
  the preset's size only when native boxes would be too small to match an anchor, and the images' aspect
  when nearly all of them share one (a 4:3 set trains at 192x256, not 256x256);
- the anchor sizes, one per FPN level, fitted to the boxes letterboxed into that input so as many as possible
  have an anchor at IoU >= ``fg_iou`` (YOLOv5's autoanchor does this for its k-means anchors; here the
  RetinaNet layout stays: 3 octave scales x 3 aspect ratios per cell, one base size per level, so the head
  and EfficientNMS see the 9 anchors the paper uses). The fit is a coordinate search over each level's size
  as a multiple of its stride, scored on the exact anchor grid the spec generates (offsets included);
- the aspect ratios: the paper's (0.5, 1, 2) unless the boxes' own aspect quantiles cover more boxes by at
  least one point.

`write_report` stores ``data_report.json`` and ``data_report.png``; ``retinaedge data inspect`` and the start
of ``retinaedge train`` call it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaedge.runtime.errors import DataError
from retinaedge.runtime.io import atomic_write_text
from retinaedge.runtime.spec import MAX_INPUT_MULTIPLE, AnchorSpec, DetectorSpec

__all__ = ["BoxSet", "Coverage", "RecipeFit", "anchor_coverage", "choose_input_size", "fit_anchor_sizes",
           "fit_recipe", "inspect_boxes", "read_box_set", "write_report"]

TINY_PX = 8.0
"""A box whose shorter side is below this many network-input pixels is "tiny": smaller than the P3 stride."""
MULTIPLIERS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
"""Candidate base anchor sizes of a level, as multiples of its stride (the paper: 4; the edge preset: 1.5)."""
MAX_FIT_BOXES = 1500
"""Boxes the anchor fit scores (a seeded sample of larger sets; the reported coverage uses every box)."""


@dataclass(frozen=True)
class BoxSet:
    """The boxes of one split, as read from its annotation file.

    Attributes:
        class_names: one name per class index, in the order training uses (sorted by category id).
        image_sizes: (I, 2) int, ``(width, height)`` of every listed image.
        boxes: (B, 4) float64 ``xywh`` in original-image pixels (crowd and degenerate boxes left out).
        image_index: (B,) int, the row of ``image_sizes`` each box belongs to.
        labels: (B,) int, class index of each box.
    """

    class_names: tuple[str, ...]
    image_sizes: np.ndarray
    boxes: np.ndarray
    image_index: np.ndarray
    labels: np.ndarray


def read_box_set(ann_file: str | Path) -> BoxSet:
    """Read boxes and image sizes from a COCO annotation file, as the training loader counts them.

    Crowd boxes, boxes of unknown images or categories, and boxes with a non-positive or non-finite side are
    left out (the loader skips them too).

    Raises:
        DataError: the file is missing or not a COCO detection file; it lists no images.
    """
    from retinaedge.train.data.coco import load_coco_json, read_categories

    data = load_coco_json(ann_file)
    names, ids = read_categories(ann_file)
    cls_of = {int(c): i for i, c in enumerate(ids)}
    sizes, row_of = [], {}
    for im in data["images"]:
        try:
            w, h = float(im["width"]), float(im["height"])
        except (KeyError, TypeError, ValueError):
            continue
        if w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h):
            row_of[im.get("id")] = len(sizes)
            sizes.append((w, h))
    if not sizes:
        raise DataError(f"annotation file {str(ann_file)!r} lists no image with a width and height; "
                        "a COCO 'images' entry needs 'id', 'width' and 'height'")
    boxes, index, labels = [], [], []
    for a in data["annotations"]:
        if a.get("iscrowd", 0) or a.get("image_id") not in row_of or a.get("category_id") not in cls_of:
            continue
        b = a.get("bbox")
        if not isinstance(b, list | tuple) or len(b) != 4:
            continue
        try:
            x, y, w, h = (float(v) for v in b)
        except (TypeError, ValueError):
            continue
        if not (w > 0 and h > 0 and all(math.isfinite(v) for v in (x, y, w, h))):
            continue
        boxes.append((x, y, w, h))
        index.append(row_of[a["image_id"]])
        labels.append(cls_of[a["category_id"]])
    return BoxSet(class_names=tuple(names), image_sizes=np.asarray(sizes, dtype=np.float64).reshape(-1, 2),
                  boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                  image_index=np.asarray(index, dtype=np.int64), labels=np.asarray(labels, dtype=np.int64))


def letterboxed_boxes(box_set: BoxSet, input_hw: tuple[int, int]) -> np.ndarray:
    """The boxes in network-input pixels after the runtime's letterbox (scale to fit, centred). (B, 4) xyxy."""
    ih, iw = input_hw
    wh = box_set.image_sizes[box_set.image_index]  # (B, 2)
    scale = np.minimum(ih / wh[:, 1], iw / wh[:, 0])
    new_w, new_h = np.maximum(1, np.minimum(iw, np.round(wh[:, 0] * scale))), np.maximum(
        1, np.minimum(ih, np.round(wh[:, 1] * scale)))
    pad_x, pad_y = (iw - new_w) // 2, (ih - new_h) // 2
    b = box_set.boxes
    x0 = b[:, 0] * scale + pad_x
    y0 = b[:, 1] * scale + pad_y
    return np.stack([x0, y0, x0 + b[:, 2] * scale, y0 + b[:, 3] * scale], axis=1)


# ---- anchor coverage ------------------------------------------------------------------------------------

def _level_anchors(spec: DetectorSpec, level: int, size: float, ratios: Sequence[float]) -> np.ndarray:
    """The anchors of one level with base ``size`` (the spec's grid, scales and offset). (N_l, 4) xyxy."""
    a = dataclasses.replace(spec.anchors, sizes=tuple(size if i == level else s
                                                      for i, s in enumerate(spec.anchors.sizes)),
                            aspect_ratios=tuple(ratios))
    one = dataclasses.replace(spec, anchors=a)
    start = sum(one.level_sizes()[:level])
    return one.anchors_xyxy()[start:start + one.level_sizes()[level]].astype(np.float64)


def _best_iou_and_count(boxes: np.ndarray, anchors: np.ndarray, fg_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Per box: the best IoU with any of ``anchors`` and how many reach ``fg_iou``. (B,), (B,).

    Only boxes within a factor 4 of the anchors' sides are compared (IoU needs similar scales: a box 4x
    smaller than the smallest anchor has IoU <= 1/16); the others get 0. Keeps the fit to seconds.
    """
    import torch
    from torchvision.ops import box_iou

    best = np.zeros(len(boxes))
    count = np.zeros(len(boxes), dtype=np.int64)
    if len(boxes) == 0 or len(anchors) == 0:
        return best, count
    a_side = np.sqrt((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]))
    b_side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    near = np.flatnonzero((b_side >= a_side.min() / 4) & (b_side <= a_side.max() * 4))
    if len(near) == 0:
        return best, count
    a = torch.from_numpy(anchors.astype(np.float32))
    for idx in np.array_split(near, max(1, -(-len(near) // 512))):
        iou = box_iou(torch.from_numpy(boxes[idx].astype(np.float32)), a)
        best[idx] = iou.amax(dim=1).numpy()
        count[idx] = (iou >= fg_iou).sum(dim=1).numpy()
    return best, count


@dataclass(frozen=True)
class Coverage:
    """How well anchors cover ground-truth boxes at the matcher's threshold.

    Attributes:
        covered: share of boxes with an anchor at IoU >= ``fg_iou`` (a true positive for the matcher).
        mean_positives: mean number of anchors at IoU >= ``fg_iou`` per box.
        mean_best_iou: mean over boxes of the best anchor IoU (what ``allow_low_quality`` falls back to).
        covered_per_class: ``covered`` per class name (classes without boxes left out).
    """

    covered: float
    mean_positives: float
    mean_best_iou: float
    covered_per_class: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"covered": round(self.covered, 4), "mean_positives": round(self.mean_positives, 3),
                "mean_best_iou": round(self.mean_best_iou, 4),
                "covered_per_class": {k: round(v, 4) for k, v in self.covered_per_class.items()}}


def anchor_coverage(spec: DetectorSpec, box_set: BoxSet, *, fg_iou: float = 0.5) -> Coverage:
    """Coverage of ``box_set``'s boxes, letterboxed into the spec's input, by the spec's anchors."""
    boxes = letterboxed_boxes(box_set, (spec.input_height, spec.input_width))
    best, count = _best_iou_and_count(boxes, spec.anchors_xyxy().astype(np.float64), fg_iou)
    ok = best >= fg_iou
    per_class = {name: float(ok[box_set.labels == i].mean()) for i, name in enumerate(box_set.class_names)
                 if (box_set.labels == i).any()}
    return Coverage(covered=float(ok.mean()) if len(ok) else 0.0,
                    mean_positives=float(count.mean()) if len(count) else 0.0,
                    mean_best_iou=float(best.mean()) if len(best) else 0.0, covered_per_class=per_class)


def _score(best: np.ndarray, count: np.ndarray, fg_iou: float) -> float:
    """Fit objective: coverage first; then a little for more positives per box (up to ~8) and a better IoU."""
    if len(best) == 0:
        return 0.0
    covered = float((best >= fg_iou).mean())
    return covered + 0.01 * float(np.log1p(np.minimum(count, 8)).mean()) + 0.01 * float(best.mean())


def fit_anchor_sizes(spec: DetectorSpec, boxes_xyxy: np.ndarray, *, fg_iou: float = 0.5,
                     ratios: Sequence[float] | None = None,
                     multipliers: Sequence[float] = MULTIPLIERS) -> tuple[tuple[float, ...], float]:
    """Per-level base anchor sizes that cover the most boxes at ``fg_iou``.

    Every level's size is ``m * stride`` with ``m`` from ``multipliers``; sizes stay strictly increasing with
    the level (each level keeps its own scale band). A coordinate search from the spec's own sizes
    (each level tried at every multiplier, the others fixed, until nothing improves) over per-(level, size)
    results computed once on the spec's exact anchor grid.

    Args:
        spec: the input size, strides, scales and offset to fit for.
        boxes_xyxy: (B, 4) ground-truth boxes in network-input pixels.
        fg_iou: the matcher's positive threshold.
        ratios: aspect ratios to fit with (default: the spec's).
        multipliers: candidate sizes per level, in units of the level's stride.

    Returns:
        The sizes (one per level, P3 first) and their objective score.
    """
    ratios = tuple(ratios or spec.anchors.aspect_ratios)
    strides = spec.anchors.strides
    cand = [sorted({float(m * s) for m in multipliers} | {float(spec.anchors.sizes[i])})
            for i, s in enumerate(strides)]
    table: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}
    for lvl, sizes in enumerate(cand):
        for size in sizes:
            table[(lvl, size)] = _best_iou_and_count(boxes_xyxy, _level_anchors(spec, lvl, size, ratios), fg_iou)

    def score(sizes: Sequence[float]) -> float:
        best = np.max([table[(i, s)][0] for i, s in enumerate(sizes)], axis=0)
        count = np.sum([table[(i, s)][1] for i, s in enumerate(sizes)], axis=0)
        return _score(best, count, fg_iou)

    current = [float(s) for s in spec.anchors.sizes]
    best_score = score(current)
    for _ in range(6):
        improved = False
        for lvl in range(len(strides)):
            lo = current[lvl - 1] if lvl > 0 else 0.0
            hi = current[lvl + 1] if lvl + 1 < len(strides) else math.inf
            for size in cand[lvl]:
                if not lo < size < hi or size == current[lvl]:
                    continue
                trial = [*current[:lvl], size, *current[lvl + 1:]]
                s = score(trial)
                if s > best_score + 1e-9:
                    best_score, current, improved = s, trial, True
        if not improved:
            break
    return tuple(current), best_score


def _ratio_candidates(box_set: BoxSet, default: tuple[float, ...]) -> list[tuple[float, ...]]:
    """The paper's ratios, and ratios from the boxes' own h/w quantiles (1/6, 1/2, 5/6), rounded to 2 digits."""
    out = [default]
    if len(box_set.boxes):
        log_ar = np.log(box_set.boxes[:, 3] / box_set.boxes[:, 2])
        q = np.exp(np.quantile(log_ar, [1 / 6, 0.5, 5 / 6]))
        mid = float(np.exp(np.median(log_ar)))
        for cand in ((q[0], q[1], q[2]), (mid / 2, mid, mid * 2)):
            r = tuple(sorted({round(float(v), 2) for v in cand}))
            if len(r) == 3 and all(v > 0 for v in r) and r not in out:
                out.append(r)
    return out


def choose_input_size(box_set: BoxSet, preset: tuple[int, int], *, multiple: int = MAX_INPUT_MULTIPLE,
                      min_box_px: float = TINY_PX) -> tuple[tuple[int, int], str]:
    """The network input for this data: native size, never above the preset's, never too small for its boxes.

    The long side is the images' median long side rounded up to ``multiple``, capped at the preset's long side;
    it grows back towards the preset when the 5th-percentile box side would fall below ``min_box_px`` (the
    boxes need the pixels). When at least 85 % of the images share one orientation and their median aspect is
    at least 1.2, the short side follows that aspect (rounded to ``multiple``); otherwise the input is square.

    Returns:
        ``(height, width)`` and a one-line reason.
    """
    cap = max(preset)
    w, h = box_set.image_sizes[:, 0], box_set.image_sizes[:, 1]
    long_side = float(np.median(np.maximum(w, h)))
    side = min(cap, max(multiple, math.ceil(long_side / multiple) * multiple))
    why = f"median image long side {long_side:.0f} px"
    if len(box_set.boxes):
        per_box_long = np.maximum(w, h)[box_set.image_index]
        short_box = np.minimum(box_set.boxes[:, 2], box_set.boxes[:, 3])
        while side < cap and float(np.quantile(short_box * side / per_box_long, 0.05)) < min_box_px:
            side += multiple
            why = f"median image long side {long_side:.0f} px, raised so 95 % of boxes keep >= {min_box_px:g} px"
    landscape = float(np.mean(w >= h))
    aspect = float(np.median(np.maximum(w, h) / np.minimum(w, h)))
    hw = (side, side)
    if max(landscape, 1 - landscape) >= 0.85 and aspect >= 1.2:
        short = max(multiple, round(side / aspect / multiple) * multiple)
        hw = (short, side) if landscape >= 0.5 else (side, short)
        why += f"; {max(landscape, 1 - landscape):.0%} share one orientation at aspect {aspect:.2f}"
    if hw == tuple(preset):
        why += " (the preset's size)"
    return hw, why


def _progressive_side(hw: tuple[int, int], wanted: int, *, multiple: int = MAX_INPUT_MULTIPLE) -> int:
    """The largest low-resolution short side <= ``wanted`` (and below the input) whose long side, scaled alike,
    is a whole multiple of ``multiple`` too; 0 when none is at least half the input's short side."""
    short, long = min(hw), max(hw)
    for side in range(min(wanted, short - 1) // multiple * multiple, 0, -multiple):
        if side * 2 < short:
            break
        if (side * long) % short == 0 and (side * long // short) % multiple == 0:
            return side
    return 0


@dataclass(frozen=True)
class RecipeFit:
    """What `fit_recipe` chose, and the anchor coverage before and after.

    Attributes:
        input_size: ``(height, width)`` chosen (or the config's, when not fitted).
        config_sizes: the config's own anchor sizes (the starting point).
        sizes: anchor base size per level.
        aspect_ratios: anchor aspect ratios (h / w).
        progressive_size: the progressive-resizing side kept (0 = off).
        before: coverage of the config's own anchors at the chosen input size.
        after: coverage of the fitted anchors.
        notes: one line per decision, for the log.
    """

    input_size: tuple[int, int]
    config_sizes: tuple[float, ...]
    sizes: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    progressive_size: int
    before: Coverage
    after: Coverage
    notes: tuple[str, ...]

    def overrides(self) -> list[str]:
        """The fit as ``--set`` strings (what a user types to pin it)."""
        return [f"data.input_size=[{self.input_size[0]}, {self.input_size[1]}]",
                f"anchors.sizes=[{', '.join(f'{s:g}' for s in self.sizes)}]",
                f"anchors.aspect_ratios=[{', '.join(f'{r:g}' for r in self.aspect_ratios)}]",
                f"data.progressive_size={self.progressive_size}"]


def fit_recipe(spec: DetectorSpec, box_set: BoxSet, *, fg_iou: float, fit_input: bool, fit_anchors: bool,
               progressive_size: int = 0, seed: int = 0) -> RecipeFit:
    """Fit the input size and anchors of ``spec`` to ``box_set`` (see the module docstring).

    Args:
        spec: the spec the config gives (its input size is the cap, its anchors the starting point).
        box_set: the training split's boxes.
        fg_iou: the matcher's positive IoU threshold.
        fit_input: choose the input size from the images (else keep the spec's).
        fit_anchors: fit sizes and aspect ratios (else keep the spec's).
        progressive_size: the config's progressive-resizing side; dropped (0) when the fitted input is not
            larger than it.
        seed: seeds the sample of boxes scored on large sets.

    Raises:
        DataError: the split has no boxes to fit anchors to.
    """
    notes = []
    hw = (spec.input_height, spec.input_width)
    if fit_input:
        hw, why = choose_input_size(box_set, hw)
        notes.append(f"input {hw[0]}x{hw[1]}: {why}")
    fitted = spec.replace(input_height=hw[0], input_width=hw[1])
    if progressive_size:
        low = _progressive_side(hw, progressive_size)
        if low != progressive_size:
            notes.append(f"progressive resizing at {low} px instead of data.progressive_size={progressive_size} "
                         f"(input {hw[0]}x{hw[1]}: both low-resolution sides must be multiples of "
                         f"{MAX_INPUT_MULTIPLE} below the input)" if low else
                         f"progressive resizing off: no low-resolution size up to {progressive_size} px fits the "
                         f"input {hw[0]}x{hw[1]}")
        progressive_size = low
    sample = box_set
    if len(box_set.boxes) > MAX_FIT_BOXES:
        keep = np.sort(np.random.default_rng(seed).choice(len(box_set.boxes), MAX_FIT_BOXES, replace=False))
        sample = dataclasses.replace(box_set, boxes=box_set.boxes[keep], image_index=box_set.image_index[keep],
                                     labels=box_set.labels[keep])
    before = anchor_coverage(fitted, box_set, fg_iou=fg_iou)
    sizes, ratios = spec.anchors.sizes, spec.anchors.aspect_ratios
    if fit_anchors:
        if len(box_set.boxes) == 0:
            raise DataError("the training split has no boxes to fit anchors to; add annotations or set "
                            "fit.anchors=false")
        xyxy = letterboxed_boxes(sample, hw)
        best: tuple[float, tuple[float, ...], tuple[float, ...]] | None = None
        for cand in _ratio_candidates(sample, tuple(spec.anchors.aspect_ratios)):
            s, score = fit_anchor_sizes(fitted, xyxy, fg_iou=fg_iou, ratios=cand)
            # the paper's ratios unless others cover at least one point more
            margin = 0.0 if cand == tuple(spec.anchors.aspect_ratios) else 0.01
            if best is None or score > best[0] + margin:
                best = (score, s, cand)
        assert best is not None
        sizes, ratios = best[1], best[2]
        notes.append(f"anchor sizes {[round(s, 1) for s in sizes]} (x stride "
                     f"{[round(s / st, 2) for s, st in zip(sizes, spec.anchors.strides, strict=True)]}), "
                     f"aspect ratios {list(ratios)}")
        fitted = fitted.replace(anchors=AnchorSpec(strides=spec.anchors.strides, sizes=tuple(sizes),
                                                   scales=spec.anchors.scales, aspect_ratios=tuple(ratios),
                                                   offset=spec.anchors.offset))
    after = anchor_coverage(fitted, box_set, fg_iou=fg_iou)
    notes.append(f"anchor coverage at IoU >= {fg_iou:g}: {before.covered:.1%} -> {after.covered:.1%} of boxes, "
                 f"{before.mean_positives:.1f} -> {after.mean_positives:.1f} positives per box")
    return RecipeFit(input_size=hw, config_sizes=tuple(float(s) for s in spec.anchors.sizes),
                     sizes=tuple(float(s) for s in sizes), aspect_ratios=tuple(ratios),
                     progressive_size=progressive_size, before=before, after=after, notes=tuple(notes))


# ---- statistics and report ----------------------------------------------------------------------------

def _quantiles(v: np.ndarray) -> dict[str, float]:
    if len(v) == 0:
        return {}
    q = np.quantile(v, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {k: round(float(x), 2) for k, x in zip(("min", "p5", "median", "p95", "max"), q, strict=True)}


def inspect_boxes(box_set: BoxSet, spec: DetectorSpec) -> dict[str, Any]:
    """Statistics of a split, with box sizes in network-input pixels of ``spec`` (its letterbox).

    Raises:
        DataError: the split has no boxes (nothing to train on), naming what to check.
    """
    if len(box_set.boxes) == 0:
        raise DataError(f"the split lists {len(box_set.image_sizes)} image(s) but no usable box (crowd, "
                        "degenerate and unknown-category boxes do not count); check the 'annotations' list")
    w, h = box_set.image_sizes[:, 0], box_set.image_sizes[:, 1]
    net = letterboxed_boxes(box_set, (spec.input_height, spec.input_width))
    bw, bh = net[:, 2] - net[:, 0], net[:, 3] - net[:, 1]
    per_image = np.bincount(box_set.image_index, minlength=len(box_set.image_sizes))
    counts = np.bincount(box_set.labels, minlength=len(box_set.class_names))
    classes = {}
    for i, name in enumerate(box_set.class_names):
        sel = box_set.labels == i
        classes[name] = {"boxes": int(counts[i]), "width": _quantiles(bw[sel]), "height": _quantiles(bh[sel]),
                         "aspect_h_over_w": _quantiles(bh[sel] / bw[sel])}
    tiny = np.minimum(bw, bh) < TINY_PX
    return {
        "images": len(box_set.image_sizes), "boxes": len(box_set.boxes),
        "images_without_boxes": int((per_image == 0).sum()),
        "image_width": _quantiles(w), "image_height": _quantiles(h), "image_aspect_w_over_h": _quantiles(w / h),
        "boxes_per_image": _quantiles(per_image.astype(np.float64)),
        "input_size": [spec.input_height, spec.input_width],
        "box_width_px": _quantiles(bw), "box_height_px": _quantiles(bh), "box_aspect_h_over_w": _quantiles(bh / bw),
        "tiny_boxes": {"below_px": TINY_PX, "count": int(tiny.sum()), "share": round(float(tiny.mean()), 4)},
        "class_balance": {"max_over_min": round(float(counts.max() / max(counts.min(), 1)), 2),
                          "empty_classes": [n for n, c in zip(box_set.class_names, counts, strict=True) if c == 0]},
        "classes": classes,
    }


def write_report(out_dir: str | Path, box_set: BoxSet, stats: dict[str, Any], fit: RecipeFit | None,
                 *, spec: DetectorSpec) -> tuple[Path, Path]:
    """Write ``data_report.json`` and ``data_report.png`` (box sizes, aspect, per-class counts, coverage).

    Returns:
        The two paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(stats)
    if fit is not None:
        report["fit"] = {"input_size": list(fit.input_size), "anchor_sizes": list(fit.sizes),
                         "aspect_ratios": list(fit.aspect_ratios), "progressive_size": fit.progressive_size,
                         "coverage_before": fit.before.to_dict(), "coverage_after": fit.after.to_dict(),
                         "notes": list(fit.notes), "overrides": fit.overrides()}
    json_path = out / "data_report.json"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")

    net = letterboxed_boxes(box_set, (spec.input_height, spec.input_width))
    bw, bh = net[:, 2] - net[:, 0], net[:, 3] - net[:, 1]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    a0, a1, a2 = axes
    a0.scatter(bw, bh, s=3, alpha=0.3, label="boxes")
    if fit is not None:
        for sizes, style, lab in ((fit.config_sizes, "x", "anchors (config)"), (fit.sizes, "o", "anchors (fit)")):
            a0.scatter(list(sizes), list(sizes), marker=style, s=60, label=lab)
    a0.set_xscale("log")
    a0.set_yscale("log")
    a0.set_xlabel("box width (input px)")
    a0.set_ylabel("box height (input px)")
    a0.set_title(f"{len(bw)} boxes at input {spec.input_height}x{spec.input_width}")
    a0.legend(fontsize=8)
    a1.hist(np.log2(bh / bw), bins=40)
    a1.set_xlabel("log2(h / w)")
    a1.set_title("box aspect")
    counts = np.bincount(box_set.labels, minlength=len(box_set.class_names))
    a2.bar(range(len(counts)), counts)
    a2.set_xticks(range(len(counts)), [n[:10] for n in box_set.class_names], rotation=60, fontsize=7)
    title = "boxes per class"
    if fit is not None:
        title += f"; anchor coverage {fit.before.covered:.0%} -> {fit.after.covered:.0%}"
    a2.set_title(title)
    fig.tight_layout()
    png_path = out / "data_report.png"
    tmp = out / ".data_report.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(png_path)
    return json_path, png_path
