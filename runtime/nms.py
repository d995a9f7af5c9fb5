"""A numpy twin of TensorRT's ``EfficientNMS_TRT`` plugin (version "1"), for running ``efficient`` graphs on CPU.

The semantics follow the plugin's *source* (``plugin/efficientNMSPlugin/efficientNMSInference.cu`` and
``.cuh``, byte-identical from TensorRT 8.6.1 to 11.1; see docs/TENSORRT.md), not its README:

* ``score_activation=1`` moves the threshold into logit space (``log(t / (1 - t))``, or ``-32768`` for
  ``t <= 0``); selection tests raw scores ``>=`` it, sorting and NMS use raw scores, and the sigmoid is
  applied only when writing ``detection_scores``.
* Candidates are **(anchor, class) pairs** (not a per-anchor argmax), one pool per image, flat index
  ``e = n * C + c``, sorted by score descending (ties by ascending ``e``), truncated to the top
  ``pool_size`` (5000 since TRT 8.2; the README's 4096 is overwritten).
* Thresholds below 0.007 (0.007 in probability space with ``score_activation``) select the plugin's
  *dense* kernel: below-threshold and background entries stay in the pool with score ``-32768`` and are
  written out (score 0.0 after the sigmoid) when fewer than ``max_output_boxes`` real boxes survive. This
  twin reproduces that quirk; readers filter ``detection_scores`` by the threshold afterwards.
* Box decode with anchors, ``box_coding=1``: ``p = d[:2] * a[2:] + a[:2]``, ``s = a[2:] * exp(d[2:])``,
  corners ``p -/+ s/2``; no clamp of ``d[2:]`` and no clip to the image (both belong outside the plugin).
  ``box_coding=0`` adds the (reordered) corner anchors to the (reordered) corner boxes. Axis order
  carries through: ``(cx, cy, w, h)`` in gives ``(x1, y1, x2, y2)`` out.
* Greedy NMS in sorted order: keep ``i``, drop every later ``j`` of the same class (any class when
  ``class_agnostic``) with IoU ``>= iou_threshold``; stop once ``max_output_boxes`` are kept. IoU uses
  corners reordered to min/max, area 0 for ``w <= 0`` or ``h <= 0``, no ``+1``, and 0 when the
  intersection or the union is ``<= 0``.
* Output slot ``r`` holds the ``r``-th kept box; unused slots are zeros with class 0 (read
  ``num_detections``).

Known, documented differences from the GPU: ``exp`` and the sigmoid are numpy's, the GPU uses ``__expf``
(a few ulp apart, so compare boxes and scores with a tolerance); ties on the GPU's filter kernel (threshold
``>= 0.007``) come out in a non-deterministic order, here always by ascending ``e``; NaN scores are never
selected (the GPU's dense kernel would keep and sort them by bit pattern).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from retinaedge.runtime.errors import InputError

DEFAULT_POOL_SIZE = 5000
"""Top-scoring candidates per image that enter NMS (``numSelectedBoxes``; 2000 on Jetson TX1/TX2)."""

DENSE_KERNEL_THRESHOLD = 0.007
"""Below this (probability-space) score threshold the plugin uses its dense selection kernel."""

_DENSE_FILL = -32768.0  # -(1 << 15): the plugin's score for below-threshold entries in the dense pool

# Greedy NMS looks at candidates in windows (first _WINDOW, then doubling) and stops at K kept; per-class
# NMS runs class by class or on one class-masked matrix, whichever _class_by_class_is_cheaper says.
_WINDOW = 256
_CALL_COST = 13000.0
_ROUNDS = 6  # vectorised settling rounds in _greedy_matrix before walking the rest in order


def efficient_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    anchors: np.ndarray | None = None,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_output_boxes: int,
    background_class: int = -1,
    score_activation: bool = True,
    class_agnostic: bool = False,
    box_coding: int = 1,
    pool_size: int = DEFAULT_POOL_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run EfficientNMS_TRT's algorithm on the host.

    Args:
        boxes: (B, N, 4) or (B, N, 1, 4) boxes shared by all classes, or (B, N, C, 4) one box per class.
            With ``anchors`` these are deltas; ``box_coding=1``: ``(dx, dy, dw, dh)`` center-size deltas,
            ``box_coding=0``: corner offsets. Without ``anchors``: boxes in that coding
            (``box_coding=1``: ``(cx, cy, w, h)``, ``box_coding=0``: ``(x1, y1, x2, y2)``).
        scores: (B, N, C) (or (B, N, C, 1)) raw scores; logits when ``score_activation``.
        anchors: None, or (1, N, 4) / (B, N, 4) anchors in the same coding (``(cx, cy, w, h)`` for 1).
        score_threshold: in probability space when ``score_activation``, else in score space; ``>= 0``.
        iou_threshold: suppress at IoU ``>=`` this; ``> 0``.
        max_output_boxes: K, detections per image; ``> 0``.
        background_class: a class index never selected; ``-1`` (or out of range) disables it.
        score_activation: apply the sigmoid (threshold moved to logit space, sigmoid only on output).
        class_agnostic: suppress across classes.
        box_coding: 1 center-size, 0 corners.
        pool_size: candidates per image entering NMS (the plugin's ``numSelectedBoxes``).

    Returns:
        ``(num_detections, detection_boxes, detection_scores, detection_classes)``:
        (B, 1) int32; (B, K, 4) xyxy corners (input float dtype); (B, K) scores (sigmoid applied when
        ``score_activation``); (B, K) int32. Slots past ``num_detections`` are zero (class 0).

    Raises:
        InputError: for a parameter the plugin refuses or for shapes that do not fit together.
    """
    _check_params(score_threshold, iou_threshold, max_output_boxes, box_coding, pool_size)
    scores, boxes, anchors = _check_shapes(scores, boxes, anchors)
    dtype = scores.dtype
    b_size, n_anchors, n_classes = scores.shape
    k = int(max_output_boxes)

    out_num = np.zeros((b_size, 1), np.int32)
    out_boxes = np.zeros((b_size, k, 4), dtype)
    out_scores = np.zeros((b_size, k), dtype)
    out_classes = np.zeros((b_size, k), np.int32)
    n_elem = n_anchors * n_classes
    if n_elem == 0 or b_size == 0:
        return out_num, out_boxes, out_scores, out_classes

    thr, dense = _score_threshold(score_threshold, score_activation)
    fill = dtype.type(_DENSE_FILL)
    flat = scores.reshape(b_size, n_elem)
    background = background_class if 0 <= background_class < n_classes else None
    pool = min(int(pool_size), n_elem)
    iou_thr = np.float32(iou_threshold)

    with np.errstate(all="ignore"):  # inf/NaN inputs follow IEEE rules, as on the GPU
        for b in range(b_size):
            selected = flat[b] >= dtype.type(thr)  # NaN never selects
            if background is not None:
                selected[background::n_classes] = False
            e = np.flatnonzero(selected)  # 1-D: an order of magnitude faster than 2-D np.nonzero
            vals = flat[b, e]
            order = np.argsort(-vals, kind="stable")[:pool]
            e, cand_scores = e[order], vals[order]
            if dense and len(e) < pool:
                e, cand_scores = _dense_pool(flat[b], selected, e, cand_scores, pool, fill)
            if len(e) == 0:
                continue
            n_idx = e // n_classes
            c_idx = e % n_classes
            corners = _decode(boxes, anchors, b, n_idx, c_idx, box_coding)
            kept = _greedy_nms(corners, None if class_agnostic else c_idx, iou_thr, k)
            m = len(kept)
            out_num[b, 0] = m
            if m == 0:
                continue
            out_boxes[b, :m] = corners[kept]
            s = cand_scores[kept]
            out_scores[b, :m] = _sigmoid(s) if score_activation else s
            out_classes[b, :m] = c_idx[kept]
    return out_num, out_boxes, out_scores, out_classes


def _dense_pool(
    flat: np.ndarray, selected: np.ndarray, e: np.ndarray, vals: np.ndarray, pool: int, fill: np.floating
) -> tuple[np.ndarray, np.ndarray]:
    """The dense kernel's pool: every element, failing ones scored ``-32768``, stable-sorted, top ``pool``."""
    if len(vals) and vals[-1] <= fill:
        # real scores tie with the filler value: sort everything, exactly as the plugin does
        key = np.where(selected, flat, fill)
        e = np.argsort(-key, kind="stable")[:pool]
        return e, key[e]
    rest = np.flatnonzero(~selected)[: pool - len(e)]  # fillers sort after every real score, by ascending e
    return np.concatenate([e, rest]), np.concatenate([vals, np.full(len(rest), fill, flat.dtype)])


def _check_params(
    score_threshold: float, iou_threshold: float, max_output_boxes: int, box_coding: int, pool_size: int
) -> None:
    # the same checks as the plugin's creator (TRT >= 8.6), one line each
    if not (isinstance(iou_threshold, int | float) and iou_threshold > 0):
        raise InputError(f"iou_threshold={iou_threshold!r} must be > 0 (EfficientNMS_TRT refuses it); try 0.5")
    if not (isinstance(score_threshold, int | float) and score_threshold >= 0):
        raise InputError(
            f"score_threshold={score_threshold!r} must be >= 0 (EfficientNMS_TRT refuses it); try 0.05"
        )
    if not _is_count(max_output_boxes):
        raise InputError(f"max_output_boxes={max_output_boxes!r} must be an integer > 0; try 100")
    if box_coding not in (0, 1):
        raise InputError(f"box_coding={box_coding!r} is not allowed; choose 0 (corners) or 1 (center-size)")
    if not _is_count(pool_size):
        raise InputError(f"pool_size={pool_size!r} must be an integer > 0; the plugin uses {DEFAULT_POOL_SIZE}")


def _is_count(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and bool(v > 0)


def _check_shapes(
    scores: np.ndarray, boxes: np.ndarray, anchors: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    scores = np.asarray(scores)
    boxes = np.asarray(boxes)
    if scores.ndim == 4 and scores.shape[3] == 1:
        scores = scores[..., 0]
    if scores.ndim != 3:
        raise InputError(f"scores shape {scores.shape} is not (B, N, C); pass the class logits of every anchor")
    if scores.dtype not in (np.float32, np.float16):
        raise InputError(f"scores dtype {scores.dtype} is not float32 or float16 (the plugin's input types)")
    b, n, c = scores.shape
    if boxes.ndim == 3:
        boxes = boxes[:, :, None, :]
    ok = boxes.ndim == 4 and boxes.shape[:2] == (b, n) and boxes.shape[2] in (1, c) and boxes.shape[3] == 4
    if not ok:
        raise InputError(
            f"boxes shape {boxes.shape} does not fit scores {scores.shape}; expected ({b}, {n}, 4), "
            f"({b}, {n}, 1, 4) or ({b}, {n}, {c}, 4)"
        )
    boxes = boxes.astype(scores.dtype, copy=False)
    if anchors is not None:
        anchors = np.asarray(anchors)
        if anchors.ndim != 3 or anchors.shape[0] not in (1, b) or anchors.shape[1:] != (n, 4):
            raise InputError(f"anchors shape {anchors.shape} is not (1, {n}, 4) or ({b}, {n}, 4)")
        anchors = anchors.astype(scores.dtype, copy=False)
    return scores, boxes, anchors


def _score_threshold(score_threshold: float, score_activation: bool) -> tuple[float, bool]:
    """The threshold in the space selection compares in, and whether the dense kernel is used."""
    thr = np.float32(score_threshold)
    select = np.float32(DENSE_KERNEL_THRESHOLD)
    if score_activation:
        with np.errstate(divide="ignore", invalid="ignore"):
            thr = np.float32(_DENSE_FILL) if thr <= 0 else np.log(thr / (np.float32(1) - thr))
            select = np.log(select / (np.float32(1) - select))
    return float(thr), bool(thr < select)


def _decode(
    boxes: np.ndarray, anchors: np.ndarray | None, b: int, n_idx: np.ndarray, c_idx: np.ndarray, box_coding: int
) -> np.ndarray:
    """Corner boxes (P, 4) of the candidates, in the input dtype, exactly as the plugin forms them."""
    per_class = boxes.shape[2] > 1
    box = boxes[b, n_idx, c_idx] if per_class else boxes[b, n_idx, 0]
    half = box.dtype.type(0.5)
    if anchors is None:
        if box_coding == 0:
            return np.array(box)
        c, s = box[:, :2], box[:, 2:] * half
        return np.concatenate([c - s, c + s], axis=1)
    a = anchors[0 if anchors.shape[0] == 1 else b, n_idx]
    if box_coding == 0:
        out: np.ndarray = _reorder(box) + _reorder(a)
        return out
    p = box[:, :2] * a[:, 2:] + a[:, :2]
    s = a[:, 2:] * np.exp(box[:, 2:])
    s = s * half
    return np.concatenate([p - s, p + s], axis=1)


def _reorder(box: np.ndarray) -> np.ndarray:
    lo = np.minimum(box[:, :2], box[:, 2:])
    hi = np.maximum(box[:, :2], box[:, 2:])
    return np.concatenate([lo, hi], axis=1)


def _greedy_nms(corners: np.ndarray, classes: np.ndarray | None, iou_thr: np.float32, k: int) -> np.ndarray:
    """Positions (ascending) of the boxes greedy NMS keeps, at most ``k``; the input is already score-sorted.

    Args:
        corners: (P, 4) corner boxes in score order (the plugin's decoded boxes).
        classes: (P,) class of each box, or None for class-agnostic NMS.
        iou_thr: suppress at IoU ``>=`` this.
        k: stop after this many are kept.
    """
    p = len(corners)
    if p == 0:
        return np.zeros(0, np.int64)
    box = _reorder(corners)
    coords = [np.ascontiguousarray(box[:, i]) for i in range(4)]
    area = _area(coords[0], coords[1], coords[2], coords[3])
    if classes is None or not _class_by_class_is_cheaper(classes, p):
        return _greedy_windowed(coords, area, classes, iou_thr, k)
    # classes never suppress each other, so run each class alone (at most K kept each) and merge by position
    # (= score order); the first K of the merge are exactly the plugin's first K kept.
    order = np.argsort(classes, kind="stable")
    cls_sorted = classes[order]
    starts = np.flatnonzero(np.r_[True, cls_sorted[1:] != cls_sorted[:-1]])
    ends = np.r_[starts[1:], p]
    parts = []
    for s, t in zip(starts.tolist(), ends.tolist(), strict=True):
        idx = order[s:t]
        sub = [c[idx] for c in coords]
        parts.append(idx[_greedy_windowed(sub, area[idx], None, iou_thr, k)])
    return np.sort(np.concatenate(parts))[:k]


def _class_by_class_is_cheaper(classes: np.ndarray, p: int) -> bool:
    """Per-class NMS: one class-masked IoU matrix, or one smaller matrix per class? (same result, speed only)

    Costs in matrix elements: each group costs ~40 numpy calls of ~1.5 us, worth ~13000 elements of the
    ~15 element-wise passes a matrix takes; the class mask adds ~15% to the shared matrix. Matrices are at
    most one window wide. (A padded (classes, M, M) stack was tried: slower than both here.)
    """
    counts = np.bincount(classes)
    counts = np.minimum(counts[counts > 0], _WINDOW).astype(np.float64)
    per_class = float((counts * counts).sum()) + _CALL_COST * len(counts)
    shared = 1.15 * float(min(p, _WINDOW)) ** 2 + _CALL_COST
    return per_class < shared


def _greedy_windowed(
    coords: list[np.ndarray], area: np.ndarray, classes: np.ndarray | None, iou_thr: np.float32, k: int
) -> np.ndarray:
    """Exact greedy NMS over score-sorted boxes, one window of candidates at a time.

    Suppression only flows from earlier (higher-score) boxes to later ones, so a window's decisions need the
    boxes kept before it and the window itself, never what comes after: once K are kept the rest of the
    pool is never looked at. Each window costs one (kept x W) IoU matrix and one among its survivors.
    """
    p = len(area)
    kept: list[np.ndarray] = []
    n_kept = 0
    start, width = 0, _WINDOW
    while start < p and n_kept < k:
        end = min(p, start + width)
        cand = np.arange(start, end)
        if n_kept:
            prev = _suppresses(coords, area, classes, np.concatenate(kept), cand, iou_thr)
            cand = cand[~prev.any(axis=0)]
        if len(cand):
            sup = _suppresses(coords, area, classes, cand, cand, iou_thr) & _strict_upper(len(cand))
            won = cand[_greedy_matrix(sup)][: k - n_kept]
            kept.append(won)
            n_kept += len(won)
        start, width = end, width * 2
    return np.concatenate(kept) if kept else np.zeros(0, np.int64)


@functools.lru_cache(maxsize=16)
def _strict_upper(n: int) -> np.ndarray:
    """(n, n) bool, True above the diagonal (np.triu costs ~10x more per call than one ``&``)."""
    m = np.triu(np.ones((n, n), bool), k=1)
    m.flags.writeable = False
    return m


def _greedy_matrix(sup: np.ndarray) -> np.ndarray:
    """Greedy NMS on a suppression matrix: ``sup[j, i]`` (``j < i`` only) says j suppresses i; kept rows.

    A box none of whose possible suppressors is still undecided has its fate settled: kept if no kept box
    suppressed it. Rounds of that rule settle whole clusters at once (the top box and everything it
    suppresses, isolated boxes, ...); a long chain of partial overlaps would need one round per link, so
    after a few rounds the rest is walked in order.
    """
    undecided = np.ones(len(sup), bool)
    keep = np.zeros(len(sup), bool)
    for _ in range(_ROUNDS):
        blocked = sup[undecided].any(axis=0)
        new = undecided & ~blocked
        keep |= new
        undecided &= ~new
        undecided &= ~sup[new].any(axis=0)
        if not undecided.any():
            return np.flatnonzero(keep)
    for i in np.flatnonzero(undecided).tolist():
        if undecided[i]:  # not suppressed by any box kept before it
            keep[i] = True
            undecided &= ~sup[i]
    return np.flatnonzero(keep)


def _area(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """Plugin ``area()``: ``float(h) * float(w)``, 0 when ``w <= 0`` or ``h <= 0`` (boxes already reordered)."""
    w = (x2 - x1).astype(np.float32)
    h = (y2 - y1).astype(np.float32)
    return np.where((w > 0) & (h > 0), w * h, np.float32(0))


def _suppresses(
    coords: list[np.ndarray],
    area: np.ndarray,
    classes: np.ndarray | None,
    rows: np.ndarray,
    cols: np.ndarray,
    iou_thr: np.float32,
) -> np.ndarray:
    """(R, W) bool: box ``rows[r]`` suppresses box ``cols[w]`` (IoU ``>=`` threshold, same class if given).

    IoU exactly as the plugin computes it: intersection corners in the box dtype, areas and the ratio in
    float32, 0 when the intersection or union is ``<= 0``.
    """
    x1, y1, x2, y2 = coords
    iw = np.minimum(x2[rows, None], x2[None, cols])
    iw -= np.maximum(x1[rows, None], x1[None, cols])
    ih = np.minimum(y2[rows, None], y2[None, cols])
    ih -= np.maximum(y1[rows, None], y1[None, cols])
    np.maximum(iw, 0, out=iw)
    np.maximum(ih, 0, out=ih)
    inter = iw.astype(np.float32, copy=False) * ih.astype(np.float32, copy=False)
    union = area[rows, None] + area[None, cols]
    union -= inter
    # inter == 0 gives 0 (or NaN for 0/0): never >= a threshold > 0, as the plugin's early "return 0"
    inter /= union
    out: np.ndarray = inter >= iou_thr
    if classes is not None:
        out &= classes[rows, None] == classes[None, cols]
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x.astype(np.float32)))).astype(x.dtype)


def logit(p: float) -> float:
    """``log(p / (1 - p))``: a probability threshold in the logit space EfficientNMS selects in."""
    return math.log(p / (1 - p))
