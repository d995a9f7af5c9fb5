"""Graph outputs -> `Detections` in original-image pixels, for every kind of output a backend returns.

Which post-processing runs is decided by the output *names* (``spec.io``), checked in this order:

===================  ==============================================================  ===========================
kind                 outputs                                                         host work
===================  ==============================================================  ===========================
``detections``       ``num_detections`` (B,1), ``detection_boxes`` (B,K,4),           read ``num_detections``;
                     ``detection_scores`` (B,K), ``detection_classes`` (B,K)          drop score < threshold
``onnx``             ``boxes`` (B,N,4) xyxy, ``scores`` (B,N,C) sigmoid,               gather; top
                     ``selected_indices`` (M,3) ``[batch, class, anchor]``            ``max_detections``
``raw``              ``cls_logits`` (B,N,C), ``box_deltas`` (B,N,4) (also ``none``)   `efficient_nms` with the
                                                                                     spec's anchors
``decoded``          ``boxes`` (B,N,4) xyxy, ``scores`` (B,N,C) sigmoid               `efficient_nms` on corners
===================  ==============================================================  ===========================

The score filter after ``detections`` is needed because EfficientNMS_TRT's dense kernel (threshold < 0.007)
can write below-threshold boxes with score 0 when fewer than K survive (see `retinaedge.runtime.nms`), and
because padded slots are zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.nms import efficient_nms
from retinaedge.runtime.preprocess import Letterbox
from retinaedge.runtime.spec import DetectorSpec

OutputKind = Literal["detections", "onnx", "raw", "decoded"]

_SCORE_SLACK = 1e-6
"""Scores within this of the threshold pass: a logit exactly at the plugin's logit-space threshold can come
back a few ulp under the probability threshold after the sigmoid."""


def output_kind(outputs: Mapping[str, np.ndarray], spec: DetectorSpec) -> OutputKind:
    """Which kind of outputs these are (see the module table).

    Raises:
        InputError: naming the outputs found and the sets expected, when none matches.
    """
    io = spec.io
    sets: dict[OutputKind, tuple[str, ...]] = {
        "detections": (io.num_detections, io.detection_boxes, io.detection_scores, io.detection_classes),
        "onnx": (io.boxes, io.scores, io.selected_indices),
        "raw": (io.cls_logits, io.box_deltas),
        "decoded": (io.boxes, io.scores),
    }
    for kind, names in sets.items():
        if all(n in outputs for n in names):
            return kind
    raise InputError(
        f"outputs {sorted(outputs)} are none of the known sets {[list(v) for v in sets.values()]}; "
        "is the spec's io section the one this model was exported with?"
    )


def to_detections(
    outputs: Mapping[str, np.ndarray], spec: DetectorSpec, metas: Sequence[Letterbox]
) -> list[Detections]:
    """Detections of each image from a backend's outputs.

    Args:
        outputs: graph outputs by name, any kind in the module table; batch size B.
        spec: the model's spec (names, thresholds, anchors).
        metas: B letterboxes, one per image, from `retinaedge.runtime.preprocess.preprocess_batch`.

    Returns:
        B `Detections`: boxes (D, 4) float32 xyxy in original-image pixels, clipped to the image; scores
        (D,) float32 descending; classes (D,) int64; ``D <= spec.postprocess.max_detections``.

    Raises:
        InputError: unknown output names, or a batch size that does not match ``metas``.
    """
    kind = output_kind(outputs, spec)
    io = spec.io
    if kind == "detections":
        num, boxes, scores, classes = (
            outputs[io.num_detections], outputs[io.detection_boxes], outputs[io.detection_scores],
            outputs[io.detection_classes],
        )
    elif kind == "raw":
        det = raw_to_detection_outputs(outputs[io.cls_logits], outputs[io.box_deltas], spec)
        num, boxes, scores, classes = (
            det[io.num_detections], det[io.detection_boxes], det[io.detection_scores], det[io.detection_classes],
        )
    elif kind == "decoded":
        pp = spec.postprocess
        num, boxes, scores, classes = efficient_nms(
            np.asarray(outputs[io.boxes], np.float32), np.asarray(outputs[io.scores], np.float32),
            score_threshold=pp.score_threshold, iou_threshold=pp.iou_threshold,
            max_output_boxes=pp.max_detections, score_activation=False, class_agnostic=pp.class_agnostic,
            box_coding=0,
        )
    else:
        return _from_onnx_nms(outputs, spec, metas)
    return _from_detection_outputs(num, boxes, scores, classes, spec, metas)


def raw_to_detection_outputs(
    cls_logits: np.ndarray, box_deltas: np.ndarray, spec: DetectorSpec
) -> dict[str, np.ndarray]:
    """What the spec's EfficientNMS_TRT node would output for these raw heads.

    Args:
        cls_logits: (B, N, C) class logits in the spec's anchor order.
        box_deltas: (B, N, 4) center-size deltas, box-coding weights already undone (the graph's
            ``box_deltas`` tensor); ``dw, dh`` are clamped at ``spec.box_coding.clamp`` here (a no-op when
            the graph did it already).

    Returns:
        ``{num_detections (B,1) int32, detection_boxes (B,K,4) float32 xyxy network px, detection_scores
        (B,K) float32, detection_classes (B,K) int32}`` keyed by ``spec.io`` names, ``K = max_detections``.

    Raises:
        InputError: if the shapes do not fit the spec's anchors and classes.
    """
    logits = np.asarray(cls_logits, np.float32)
    deltas = np.asarray(box_deltas, np.float32)
    n, c = spec.num_anchors, spec.num_classes
    if logits.ndim != 3 or logits.shape[1:] != (n, c) or deltas.shape != (logits.shape[0], n, 4):
        raise InputError(
            f"cls_logits {logits.shape} and box_deltas {deltas.shape} do not fit the spec's (B, {n}, {c}) and "
            f"(B, {n}, 4); use the spec the model was exported with"
        )
    clamp = np.float32(spec.box_coding.clamp)
    # the whole-array max is contiguous (fast); only if it exceeds the clamp look at dw/dh
    if deltas.size and float(deltas.max()) > clamp and float(deltas[..., 2:].max()) > clamp:
        deltas = deltas.copy()
        np.minimum(deltas[..., 2:], clamp, out=deltas[..., 2:])
    pp = spec.postprocess
    num, boxes, scores, classes = efficient_nms(
        deltas, logits, anchors_cxcywh(spec),
        score_threshold=pp.score_threshold, iou_threshold=pp.iou_threshold, max_output_boxes=pp.max_detections,
        class_agnostic=pp.class_agnostic, score_activation=True, box_coding=1,
    )
    io = spec.io
    return {io.num_detections: num, io.detection_boxes: boxes, io.detection_scores: scores,
            io.detection_classes: classes}


@functools.lru_cache(maxsize=8)
def anchors_cxcywh(spec: DetectorSpec) -> np.ndarray:
    """The spec's anchors as EfficientNMS_TRT's anchors input: (1, N, 4) float32 ``(cx, cy, w, h)``, read-only.

    Cached per spec: generating them costs more than the whole NMS of a trained model's outputs.
    """
    anchors = spec.anchors_cxcywh()[None]
    anchors.flags.writeable = False
    return anchors


def _check_batch(b: int, metas: Sequence[Letterbox]) -> None:
    if b != len(metas):
        raise InputError(
            f"outputs hold {b} images but {len(metas)} letterbox metas were given; pass one meta per image"
        )


def _from_detection_outputs(
    num: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, spec: DetectorSpec,
    metas: Sequence[Letterbox],
) -> list[Detections]:
    num = np.asarray(num).reshape(len(num), -1)[:, 0]
    _check_batch(len(num), metas)
    k_max = scores.shape[1] if scores.ndim == 2 else 0
    thr = spec.postprocess.score_threshold - _SCORE_SLACK
    out = []
    for b, meta in enumerate(metas):
        k = int(min(max(int(num[b]), 0), k_max))
        s = np.asarray(scores[b, :k], np.float32)
        keep = s >= thr
        out.append(_make(boxes[b, :k][keep], s[keep], classes[b, :k][keep], meta))
    return out


def _from_onnx_nms(
    outputs: Mapping[str, np.ndarray], spec: DetectorSpec, metas: Sequence[Letterbox]
) -> list[Detections]:
    io = spec.io
    boxes = outputs[io.boxes]
    scores = outputs[io.scores]
    b_size = boxes.shape[0]
    _check_batch(b_size, metas)
    sel = np.asarray(outputs[io.selected_indices]).reshape(-1, 3).astype(np.int64)
    # INMSLayer / EfficientNMS_ONNX_TRT may pad with -1 or repeat rows: keep valid, first occurrences only
    valid = (sel >= 0).all(axis=1) & (sel[:, 0] < b_size) & (sel[:, 1] < scores.shape[2]) & (sel[:, 2] < boxes.shape[1])
    sel = sel[valid]
    if len(sel):
        _, first = np.unique(sel, axis=0, return_index=True)
        sel = sel[np.sort(first)]
    k = spec.postprocess.max_detections
    thr = spec.postprocess.score_threshold - _SCORE_SLACK
    out = []
    for b, meta in enumerate(metas):
        rows = sel[sel[:, 0] == b]
        s = np.asarray(scores[b, rows[:, 2], rows[:, 1]], np.float32)
        keep = s >= thr
        rows, s = rows[keep], s[keep]
        order = np.argsort(-s, kind="stable")[:k]
        out.append(_make(boxes[b, rows[order, 2]], s[order], rows[order, 1], meta))
    return out


def _make(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, meta: Letterbox) -> Detections:
    """Sorted (score descending, stable) `Detections` in original-image pixels."""
    order = np.argsort(-scores, kind="stable")
    return Detections(
        meta.to_original(np.asarray(boxes, np.float32).reshape(-1, 4)[order]),
        np.asarray(scores, np.float32)[order],
        np.asarray(classes).astype(np.int64)[order],
    )
