"""Focal loss (Lin et al. 2017) and the RetinaNet training loss, vectorised over the whole batch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import DetectorSpec
from retinaedge.train.anchors import anchors_for
from retinaedge.train.box_coder import BoxCoder
from retinaedge.train.matcher import IGNORE, match_anchors

__all__ = ["BoxLoss", "RetinaNetLoss", "sigmoid_focal_loss"]

Reduction = Literal["none", "mean", "sum"]
BoxLoss = Literal["smooth_l1", "giou"]
_REDUCTIONS: tuple[str, ...] = get_args(Reduction)
_BOX_LOSSES: tuple[str, ...] = get_args(BoxLoss)


def _check_alpha_gamma(alpha: float, gamma: float) -> None:
    if not (0.0 <= alpha <= 1.0 or alpha == -1):
        raise InputError(f"focal loss alpha={alpha!r} is not allowed; use a value in [0, 1] or -1 (no weighting)")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise InputError(f"focal loss gamma={gamma!r} is not allowed; use a finite value >= 0 (0 = cross-entropy)")


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "none",
) -> Tensor:
    """Sigmoid focal loss, ``-alpha_t (1 - p_t)^gamma log(p_t)``; equal to ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        logits: (...) raw scores, any shape.
        targets: (...) same shape, 1 for the positive class and 0 for the negative (soft values allowed).
        alpha: weight of positives in ``[0, 1]`` (negatives get ``1 - alpha``), or -1 for no weighting.
        gamma: focusing exponent ``>= 0``; 0 gives (alpha-balanced) binary cross-entropy.
        reduction: ``"none"`` (same shape as ``logits``), ``"mean"`` or ``"sum"`` (scalars).

    Returns:
        The loss, reduced as asked.

    Raises:
        InputError: (a ``ValueError``) for an alpha, gamma or reduction outside the allowed set.
    """
    if reduction not in _REDUCTIONS:
        raise InputError(f"reduction={reduction!r} is not allowed; choose one of {list(_REDUCTIONS)}")
    _check_alpha_gamma(alpha, gamma)
    loss = _focal_elementwise(logits, targets, alpha, gamma)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _focal_elementwise(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    # Same arithmetic as torchvision/fvcore (BCE-with-logits for log(p_t), p_t from the sigmoid) so the results
    # agree to rounding; the gamma == 0 shortcut skips a pow whose value would be exactly 1.
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma != 0:
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        ce = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        ce = (alpha * targets + (1 - alpha) * (1 - targets)) * ce
    return ce


class RetinaNetLoss:
    """Focal classification loss plus box regression on positives, normalised by the number of positives.

    Every anchor of every image is matched in one batched call (`match_anchors`); the focal loss is summed
    over all non-ignored anchors and all classes, the box loss over positive anchors, and both are divided by
    ``max(1, number of positive anchors in the batch)``.

    Args:
        spec: gives the anchors, the number of classes and the box coding.
        alpha: focal-loss alpha in ``[0, 1]``, or -1 for no weighting.
        gamma: focal-loss gamma ``>= 0``; ``gamma=0`` is alpha-balanced CE, with ``alpha=-1`` plain BCE.
        box_loss: ``"smooth_l1"`` on the encoded deltas or ``"giou"`` on the decoded boxes.
        smooth_l1_beta: transition point of smooth-L1 (0 gives L1).
        fg_iou: IoU at or above which an anchor is positive.
        bg_iou: IoU below which an anchor is background.
        allow_low_quality: also make each box's best anchor(s) positive.
        box_weight: multiplier of the box term in ``"loss"``.
        box_coder: injected coder; default `BoxCoder.from_spec(spec)`.
    """

    def __init__(
        self,
        *,
        spec: DetectorSpec,
        alpha: float = 0.25,
        gamma: float = 2.0,
        box_loss: BoxLoss = "smooth_l1",
        smooth_l1_beta: float = 0.1,
        fg_iou: float = 0.5,
        bg_iou: float = 0.4,
        allow_low_quality: bool = False,
        box_weight: float = 1.0,
        box_coder: BoxCoder | None = None,
    ) -> None:
        _check_alpha_gamma(alpha, gamma)
        if box_loss not in _BOX_LOSSES:
            raise InputError(f"box_loss={box_loss!r} is not allowed; choose one of {list(_BOX_LOSSES)}")
        if not (math.isfinite(smooth_l1_beta) and smooth_l1_beta >= 0):
            raise InputError(f"smooth_l1_beta={smooth_l1_beta!r} must be a finite value >= 0 (0.1 or 1/9 are usual)")
        if not (math.isfinite(box_weight) and box_weight >= 0):
            raise InputError(f"box_weight={box_weight!r} must be a finite value >= 0")
        if not 0.0 <= bg_iou <= fg_iou <= 1.0:
            raise InputError(
                f"bg_iou={bg_iou!r}, fg_iou={fg_iou!r} must satisfy 0 <= bg_iou <= fg_iou <= 1; "
                "the paper uses 0.4 and 0.5"
            )
        self.spec = spec
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.box_loss = box_loss
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.fg_iou = float(fg_iou)
        self.bg_iou = float(bg_iou)
        self.allow_low_quality = allow_low_quality
        self.box_weight = float(box_weight)
        self.box_coder = box_coder if box_coder is not None else BoxCoder.from_spec(spec)
        self._anchors: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def for_spec(self, spec: DetectorSpec) -> RetinaNetLoss:
        """The same loss (every option, the same box coder) for another spec, e.g. a smaller input size."""
        return RetinaNetLoss(spec=spec, alpha=self.alpha, gamma=self.gamma, box_loss=self.box_loss,
                             smooth_l1_beta=self.smooth_l1_beta, fg_iou=self.fg_iou, bg_iou=self.bg_iou,
                             allow_low_quality=self.allow_low_quality, box_weight=self.box_weight,
                             box_coder=self.box_coder)

    def anchors(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """(N, 4) ``xyxy`` anchors of the spec on ``device``, cached."""
        key = (device, dtype)
        if key not in self._anchors:
            self._anchors[key] = anchors_for(self.spec, device=device, dtype=dtype)
        return self._anchors[key]

    def __call__(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Loss of one batch.

        Args:
            outputs: ``"cls_logits"`` (B, N, K) raw logits and ``"box_deltas"`` (B, N, 4) raw deltas, in the
                spec's anchor order (what `RetinaNet.forward` returns).
            targets: ``"boxes"`` (B, M, 4) float ``xyxy`` in network-input pixels and ``"labels"`` (B, M) int64
                class indices ``0..K-1``, -1 on padding rows.

        Returns:
            Scalars: ``"loss"`` = ``cls_loss + box_weight * box_loss``, ``"cls_loss"``, ``"box_loss"``
            (unweighted) and ``"num_pos"`` (positive anchors in the batch, float, not clamped).

        Raises:
            InputError: shapes that do not match the spec, or a label outside ``-1..K-1``.
        """
        cls_logits = outputs["cls_logits"].float()  # the loss runs in fp32 even under autocast
        box_deltas = outputs["box_deltas"].float()
        gt_boxes = targets["boxes"].to(device=cls_logits.device, dtype=torch.float32)
        gt_labels = targets["labels"].to(device=cls_logits.device, dtype=torch.int64)
        b, n, k = cls_logits.shape
        if n != self.spec.num_anchors or k != self.spec.num_classes or tuple(box_deltas.shape) != (b, n, 4):
            raise InputError(
                f"outputs cls_logits {tuple(cls_logits.shape)} / box_deltas {tuple(box_deltas.shape)} do not match "
                f"the spec (B, {self.spec.num_anchors}, {self.spec.num_classes}) / (B, {self.spec.num_anchors}, 4); "
                "was the model built from the same spec?"
            )
        if gt_labels.ndim != 2 or gt_labels.shape[0] != b or tuple(gt_boxes.shape) != (*gt_labels.shape, 4):
            raise InputError(
                f"targets boxes {tuple(gt_boxes.shape)} / labels {tuple(gt_labels.shape)} are not (B, M, 4) / (B, M) "
                f"with B={b}; pad per-image targets with label -1"
            )
        if gt_labels.numel() and not bool(((gt_labels >= -1) & (gt_labels < k)).all()):
            bad = gt_labels[(gt_labels < -1) | (gt_labels >= k)][0].item()
            raise InputError(f"target label {bad} is outside 0..{k - 1} (and -1 for padding); check the category map")

        anchors = self.anchors(cls_logits.device)
        gt_valid = gt_labels >= 0
        matched = match_anchors(
            anchors, gt_boxes, gt_valid,
            fg_iou=self.fg_iou, bg_iou=self.bg_iou, allow_low_quality=self.allow_low_quality,
        )  # (B, N)
        pos = matched >= 0
        b_idx, a_idx = pos.nonzero(as_tuple=True)  # (P,), (P,)
        gt_idx = matched[b_idx, a_idx]
        num_pos = torch.tensor(float(b_idx.numel()), device=cls_logits.device)
        normaliser = max(1.0, float(b_idx.numel()))

        # One-hot targets for positives only; background rows stay all-zero.
        cls_target = torch.zeros_like(cls_logits)
        cls_target[b_idx, a_idx, gt_labels[b_idx, gt_idx]] = 1.0
        focal = _focal_elementwise(cls_logits, cls_target, self.alpha, self.gamma)  # (B, N, K)
        not_ignored = (matched != IGNORE).to(focal.dtype)  # (B, N)
        cls_loss = torch.einsum("bnk,bn->", focal, not_ignored) / normaliser

        pos_deltas = box_deltas[b_idx, a_idx]  # (P, 4)
        pos_anchors = anchors[a_idx]  # (P, 4)
        pos_gt = gt_boxes[b_idx, gt_idx]  # (P, 4)
        if self.box_loss == "giou":
            from torchvision.ops import generalized_box_iou_loss

            pred = self.box_coder.decode(pos_deltas, pos_anchors)
            box_loss = generalized_box_iou_loss(pred, pos_gt, reduction="sum") / normaliser
        else:
            target = self.box_coder.encode(pos_gt, pos_anchors)
            box_loss = F.smooth_l1_loss(pos_deltas, target, beta=self.smooth_l1_beta, reduction="sum") / normaliser
        return {
            "loss": cls_loss + self.box_weight * box_loss,
            "cls_loss": cls_loss,
            "box_loss": box_loss,
            "num_pos": num_pos,
        }
