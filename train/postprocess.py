"""Torch post-processing for evaluation: raw head outputs -> per-image detections.

The recipe of torchvision's ``RetinaNet.postprocess_detections`` with the spec's thresholds: per level, the
top ``topk_per_level`` (anchor, class) pairs with ``sigmoid(logit) >= score_threshold``; decode; clip to the
input; ``torchvision.ops.batched_nms`` (per class, or class-agnostic when the spec says so); keep the best
``max_detections``. The candidate selection runs for the whole batch at once, and one NMS call serves all
images (image index folded into the NMS group).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import DetectorSpec
from retinaedge.train.box_coder import BoxCoder

__all__ = ["postprocess"]


@torch.no_grad()
def postprocess(outputs: Mapping[str, Tensor], anchors: Tensor, spec: DetectorSpec, *,
                box_coder: BoxCoder | None = None) -> list[dict[str, Tensor]]:
    """Detections of each image from raw outputs.

    Args:
        outputs: ``"cls_logits"`` (B, N, K) raw logits and ``"box_deltas"`` (B, N, 4) raw deltas, in the spec's
            anchor order.
        anchors: (N, 4) ``xyxy`` anchors (`retinaedge.train.anchors.anchors_for`).
        spec: thresholds (``spec.postprocess``), box coding and input size.
        box_coder: injected coder; default `BoxCoder.from_spec(spec)`.

    Returns:
        One dict per image: ``"boxes"`` (D, 4) float ``xyxy`` in network-input pixels, clipped to the input;
        ``"scores"`` (D,) sigmoid scores, descending; ``"labels"`` (D,) int64 class indices ``0..K-1``;
        ``D <= spec.postprocess.max_detections``.
    """
    cls_logits, box_deltas = outputs["cls_logits"], outputs["box_deltas"]
    b, n, k = cls_logits.shape
    if n != spec.num_anchors or tuple(anchors.shape) != (n, 4) or tuple(box_deltas.shape) != (b, n, 4):
        raise InputError(
            f"cls_logits {tuple(cls_logits.shape)}, box_deltas {tuple(box_deltas.shape)}, anchors "
            f"{tuple(anchors.shape)} do not fit the spec's N={spec.num_anchors} anchors; same spec for model and "
            "anchors?"
        )
    pp = spec.postprocess
    coder = box_coder if box_coder is not None else BoxCoder.from_spec(spec)
    device = cls_logits.device
    anchors = anchors.to(device)
    scores_all = torch.sigmoid(cls_logits.float()).reshape(b, n * k)  # flat index e = anchor * K + class

    img_idx, flat_idx, scores = [], [], []
    start = 0
    for size in spec.level_sizes():
        s = scores_all[:, start * k:(start + size) * k]  # (B, size*K)
        # below-threshold pairs to -1 so topk over the whole batch picks the same set as threshold-then-topk
        s = torch.where(s >= pp.score_threshold, s, s.new_tensor(-1.0))
        top, idx = s.topk(min(pp.topk_per_level, s.shape[1]), dim=1)  # (B, T)
        keep = top >= 0
        img_idx.append(torch.arange(b, device=device).unsqueeze(1).expand_as(idx)[keep])
        flat_idx.append(idx[keep] + start * k)
        scores.append(top[keep])
        start += size
    img = torch.cat(img_idx)
    flat = torch.cat(flat_idx)
    score = torch.cat(scores)
    anchor_idx = torch.div(flat, k, rounding_mode="floor")
    labels = flat % k
    boxes = coder.decode(box_deltas[img, anchor_idx].float(), anchors[anchor_idx])
    boxes = clip_boxes_to_image(boxes, (spec.input_height, spec.input_width))

    group = img * (1 if pp.class_agnostic else k) + (0 if pp.class_agnostic else labels)
    keep = batched_nms(boxes, score, group, pp.iou_threshold)  # sorted by score, all images together
    kept_img = img[keep]
    results = []
    for i in range(b):  # only splits the kept indices; no per-image compute
        sel = keep[kept_img == i][: pp.max_detections]
        results.append({"boxes": boxes[sel], "scores": score[sel], "labels": labels[sel]})
    return results
