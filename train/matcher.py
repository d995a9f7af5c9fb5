"""Anchor-to-ground-truth matching for a whole batch at once (no per-image Python loop).

Semantics follow torchvision's ``det_utils.Matcher`` on ``box_iou(gt, anchors)``: each anchor takes the
ground-truth box of highest IoU; IoU ``>= fg_iou`` is a match, ``< bg_iou`` is background, anything in
``[bg_iou, fg_iou)`` is ignored. With ``allow_low_quality`` every ground-truth box's best anchor(s), ties
included, are made positive (and keep their own best match, as torchvision does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from retinaedge.runtime.errors import InputError

__all__ = ["BACKGROUND", "IGNORE", "match_anchors", "batched_box_iou"]

BACKGROUND = -1
"""Matched index of an anchor whose best IoU is below ``bg_iou``."""
IGNORE = -2
"""Matched index of an anchor whose best IoU is in ``[bg_iou, fg_iou)``: no loss on it."""


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair, broadcast over leading dimensions (``torchvision.ops.box_iou`` semantics).

    Args:
        boxes1: (..., M, 4) ``xyxy``.
        boxes2: (..., N, 4) ``xyxy``; leading dims broadcast against ``boxes1``'s.

    Returns:
        (..., M, N) IoU in ``[0, 1]``; ``nan`` where both boxes have zero area, as torchvision.
    """
    b1 = boxes1.unsqueeze(-2)  # (..., M, 1, 4)
    b2 = boxes2.unsqueeze(-3)  # (..., 1, N, 4)
    # width/height of the overlap computed separately: two (..., M, N) temporaries instead of (..., M, N, 2) pairs
    iw = (torch.minimum(b1[..., 2], b2[..., 2]) - torch.maximum(b1[..., 0], b2[..., 0])).clamp_(min=0)
    ih = (torch.minimum(b1[..., 3], b2[..., 3]) - torch.maximum(b1[..., 1], b2[..., 1])).clamp_(min=0)
    inter = iw.mul_(ih)
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    union = area1.unsqueeze(-1) + area2.unsqueeze(-2) - inter
    return inter.div_(union)


def match_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    *,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    allow_low_quality: bool = False,
) -> Tensor:
    """Assign every anchor of every image a ground-truth index, background or ignore.

    Args:
        anchors: (N, 4) ``xyxy`` anchors in network-input pixels.
        gt_boxes: (B, M, 4) ``xyxy`` ground-truth boxes in the same pixels; padded rows are arbitrary.
        gt_valid: (B, M) bool, False on padding rows (they never match).
        fg_iou: IoU at or above which an anchor is positive.
        bg_iou: IoU below which an anchor is background; ``bg_iou <= fg_iou``.
        allow_low_quality: also make each valid box's highest-IoU anchor(s) positive (ties included). A box
            that overlaps no anchor at all (best IoU 0) adds nothing, unlike torchvision, which would then
            make every anchor positive.

    Returns:
        (B, N) int64: the matched index into ``M`` (``>= 0``), `BACKGROUND` (-1) or `IGNORE` (-2). Empty
        targets (``M == 0`` or no valid row) give all `BACKGROUND`.

    Raises:
        InputError: thresholds out of order or shapes that do not fit together.
    """
    if not 0.0 <= bg_iou <= fg_iou <= 1.0:
        raise InputError(
            f"match thresholds bg_iou={bg_iou!r}, fg_iou={fg_iou!r} must satisfy 0 <= bg_iou <= fg_iou <= 1; "
            "the paper uses bg_iou=0.4, fg_iou=0.5"
        )
    if anchors.ndim != 2 or anchors.shape[-1] != 4 or gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
        raise InputError(
            f"shapes anchors={tuple(anchors.shape)}, gt_boxes={tuple(gt_boxes.shape)} are not (N, 4) and "
            "(B, M, 4); pad per-image boxes to M and mark padding in gt_valid"
        )
    if tuple(gt_valid.shape) != tuple(gt_boxes.shape[:2]):
        raise InputError(f"gt_valid has shape {tuple(gt_valid.shape)}, expected {tuple(gt_boxes.shape[:2])} (B, M)")
    b, m = gt_boxes.shape[:2]
    n = anchors.shape[0]
    if m == 0:
        return torch.full((b, n), BACKGROUND, dtype=torch.int64, device=anchors.device)

    iou = batched_box_iou(gt_boxes, anchors.to(gt_boxes.dtype))  # (B, M, N)
    # Padding can never win: -1 is below any threshold and below any real IoU (nan from 0-area padding too).
    iou = torch.where(gt_valid.unsqueeze(-1), iou.nan_to_num_(nan=0.0), iou.new_tensor(-1.0))
    best_iou, matches = iou.max(dim=1)  # (B, N): best gt per anchor
    raw_matches = matches
    matches = torch.where(best_iou < bg_iou, matches.new_tensor(BACKGROUND), matches)
    matches = torch.where((best_iou >= bg_iou) & (best_iou < fg_iou), matches.new_tensor(IGNORE), matches)
    if allow_low_quality:
        best_per_gt = iou.amax(dim=2, keepdim=True)  # (B, M, 1)
        is_best = (iou == best_per_gt) & (best_per_gt > 0)  # padding rows: -1 everywhere, excluded by > 0
        low_quality = is_best.any(dim=1)  # (B, N)
        matches = torch.where(low_quality, raw_matches, matches)
    return matches
