"""Focal loss against torchvision; the RetinaNet loss against a per-image reference built from torchvision parts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou
from torchvision.ops import sigmoid_focal_loss as tv_focal

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.train.anchors import anchors_for
from retinaedge.train.box_coder import BoxCoder
from retinaedge.train.losses import RetinaNetLoss, sigmoid_focal_loss

SPEC = DetectorSpec(class_names=("a", "b", "c"), input_height=64, input_width=64,
                    anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [-1.0, 0.25, 0.75])
def test_focal_loss_equals_torchvision(alpha: float, gamma: float, reduction: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(int(alpha * 100) + int(gamma * 10))
    logits = (torch.randn(64, 5, generator=g) * 6).to(dtype)  # includes confident right and wrong predictions
    targets = (torch.rand(64, 5, generator=g) > 0.8).to(dtype)
    ours = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    ref = tv_focal(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    assert ours.dtype == dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_focal_loss_soft_targets_and_gradient() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.rand(10, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), tv_focal(logits, targets))
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, targets, reduction="sum"), (logits,))


def test_focal_loss_bad_arguments_name_the_value() -> None:
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=r"reduction='avg'.*'none', 'mean', 'sum'"):
        sigmoid_focal_loss(x, x, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"alpha=1.5.*\[0, 1\] or -1"):
        sigmoid_focal_loss(x, x, alpha=1.5)
    with pytest.raises(ValueError, match=r"gamma=-1"):
        sigmoid_focal_loss(x, x, gamma=-1.0)


def _targets(boxes: list[list[list[float]]], labels: list[list[int]]) -> dict[str, torch.Tensor]:
    """Pad per-image lists to (B, M, 4) / (B, M) with label -1, as the data loader does."""
    m = max(1, max(len(b) for b in boxes))
    out_b = torch.zeros(len(boxes), m, 4)
    out_l = torch.full((len(boxes), m), -1, dtype=torch.int64)
    for i, (bx, lb) in enumerate(zip(boxes, labels, strict=True)):
        if bx:
            out_b[i, : len(bx)] = torch.tensor(bx)
            out_l[i, : len(lb)] = torch.tensor(lb)
    return {"boxes": out_b, "labels": out_l}


def _outputs(b: int, seed: int = 0, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, k = SPEC.num_anchors, SPEC.num_classes
    return {
        "cls_logits": (torch.randn(b, n, k, generator=g) * 2 - 3).requires_grad_(requires_grad),
        "box_deltas": (torch.randn(b, n, 4, generator=g) * 0.3).requires_grad_(requires_grad),
    }


def _reference_loss(outputs, targets, *, alpha=0.25, gamma=2.0, beta=0.1, allow_low_quality=False):
    """Per-image loop with torchvision's Matcher, BoxCoder and focal loss, normalised by the batch's positives."""
    anchors = anchors_for(SPEC)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=allow_low_quality)
    coder = TvBoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    cls_sum, box_sum, num_pos = 0.0, 0.0, 0
    for i in range(outputs["cls_logits"].shape[0]):
        valid = targets["labels"][i] >= 0
        boxes, labels = targets["boxes"][i][valid], targets["labels"][i][valid]
        logits, deltas = outputs["cls_logits"][i], outputs["box_deltas"][i]
        if boxes.numel() == 0:
            matched = torch.full((anchors.shape[0],), -1)
        else:
            matched = matcher(box_iou(boxes, anchors))
        fg = matched >= 0
        target = torch.zeros_like(logits)
        target[fg, labels[matched[fg]]] = 1.0
        keep = matched != Matcher.BETWEEN_THRESHOLDS
        cls_sum = cls_sum + tv_focal(logits[keep], target[keep], alpha=alpha, gamma=gamma, reduction="sum")
        if fg.any():
            enc = coder.encode_single(boxes[matched[fg]], anchors[fg])
            box_sum = box_sum + F.smooth_l1_loss(deltas[fg], enc, beta=beta, reduction="sum")
        num_pos += int(fg.sum())
    norm = max(1, num_pos)
    return cls_sum / norm, box_sum / norm, num_pos


BATCH_BOXES = [
    [[4.0, 4.0, 20.0, 20.0], [30.0, 10.0, 62.0, 40.0], [10.0, 35.0, 22.0, 60.0]],
    [],
    [[0.0, 0.0, 33.0, 30.0]],
]
BATCH_LABELS = [[0, 2, 1], [], [1]]


@pytest.mark.parametrize("allow_low_quality", [False, True])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 0.0), (-1.0, 0.0)])
def test_loss_equals_per_image_reference(alpha: float, gamma: float, allow_low_quality: bool) -> None:
    outputs, targets = _outputs(3), _targets(BATCH_BOXES, BATCH_LABELS)
    loss = RetinaNetLoss(spec=SPEC, alpha=alpha, gamma=gamma, allow_low_quality=allow_low_quality)(outputs, targets)
    cls_ref, box_ref, num_pos = _reference_loss(outputs, targets, alpha=alpha, gamma=gamma,
                                                allow_low_quality=allow_low_quality)
    assert num_pos > 3  # the batch really has positives
    assert loss["num_pos"].item() == num_pos
    torch.testing.assert_close(loss["cls_loss"], cls_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss["box_loss"], box_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss["loss"], cls_ref + box_ref, rtol=1e-5, atol=1e-6)


def test_plain_bce_ablation_setting() -> None:
    outputs, targets = _outputs(3), _targets(BATCH_BOXES, BATCH_LABELS)
    loss = RetinaNetLoss(spec=SPEC, alpha=-1.0, gamma=0.0)(outputs, targets)
    _, _, num_pos = _reference_loss(outputs, targets)
    # alpha=-1, gamma=0 is binary cross-entropy summed over non-ignored anchors
    bce_sum = loss["cls_loss"] * num_pos
    anchors = anchors_for(SPEC)
    total = 0.0
    for i in range(3):
        valid = targets["labels"][i] >= 0
        bx, lb = targets["boxes"][i][valid], targets["labels"][i][valid]
        matched = Matcher(0.5, 0.4)(box_iou(bx, anchors)) if bx.numel() else torch.full((anchors.shape[0],), -1)
        t = torch.zeros(SPEC.num_anchors, 3)
        t[matched >= 0, lb[matched[matched >= 0]]] = 1
        keep = matched != -2
        total = total + F.binary_cross_entropy_with_logits(outputs["cls_logits"][i][keep], t[keep], reduction="sum")
    torch.testing.assert_close(bce_sum, total, rtol=1e-5, atol=1e-4)


def test_empty_targets_give_finite_cls_only_loss() -> None:
    outputs = _outputs(2, requires_grad=True)
    empty = {"boxes": torch.zeros(2, 0, 4), "labels": torch.zeros(2, 0, dtype=torch.int64)}
    padded = _targets([[], []], [[], []])  # M=1, all padding
    for targets in (empty, padded):
        loss = RetinaNetLoss(spec=SPEC)(outputs, targets)
        assert torch.isfinite(loss["loss"])
        assert loss["cls_loss"].item() > 0
        assert loss["box_loss"].item() == 0.0
        assert loss["num_pos"].item() == 0
        # every anchor is background; normaliser 1
        expected = tv_focal(outputs["cls_logits"], torch.zeros_like(outputs["cls_logits"]), reduction="sum")
        torch.testing.assert_close(loss["cls_loss"], expected)
        loss["loss"].backward()
        assert torch.isfinite(outputs["cls_logits"].grad).all()
        assert torch.isfinite(outputs["box_deltas"].grad).all()
        outputs["cls_logits"].grad = None
        outputs["box_deltas"].grad = None


def test_giou_box_loss_is_zero_for_perfect_deltas() -> None:
    targets = _targets(BATCH_BOXES, BATCH_LABELS)
    outputs = _outputs(3)
    loss_fn = RetinaNetLoss(spec=SPEC, box_loss="giou", box_weight=2.0)
    loss = loss_fn(outputs, targets)
    assert loss["box_loss"].item() > 0
    torch.testing.assert_close(loss["loss"], loss["cls_loss"] + 2.0 * loss["box_loss"])
    # deltas that decode exactly onto each anchor's matched box: GIoU loss 0, smooth-L1 0 too
    from retinaedge.train.matcher import match_anchors

    anchors = anchors_for(SPEC)
    matched = match_anchors(anchors, targets["boxes"], targets["labels"] >= 0)
    gt = targets["boxes"][torch.arange(3)[:, None], matched.clamp(min=0)]
    perfect = BoxCoder().encode(gt, anchors)
    perfect = torch.where((matched >= 0)[..., None], perfect, torch.zeros_like(perfect))
    outputs["box_deltas"] = perfect
    assert loss_fn(outputs, targets)["box_loss"].item() == pytest.approx(0.0, abs=1e-5)
    assert RetinaNetLoss(spec=SPEC)(outputs, targets)["box_loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs_are_named() -> None:
    outputs = _outputs(1)
    with pytest.raises(InputError, match=r"target label 3 is outside 0\.\.2"):
        RetinaNetLoss(spec=SPEC)(outputs, _targets([[[0.0, 0.0, 10.0, 10.0]]], [[3]]))
    with pytest.raises(InputError, match=r"box_loss='iou'.*'smooth_l1', 'giou'"):
        RetinaNetLoss(spec=SPEC, box_loss="iou")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="alpha=2"):
        RetinaNetLoss(spec=SPEC, alpha=2.0)
    wrong = {"cls_logits": torch.zeros(1, 10, 3), "box_deltas": torch.zeros(1, 10, 4)}
    with pytest.raises(InputError, match=rf"\(B, {SPEC.num_anchors}, 3\)"):
        RetinaNetLoss(spec=SPEC)(wrong, _targets([[]], [[]]))


def test_prior_logit_background_loss_is_small() -> None:
    # with the prior init every logit is -log(99); the focal loss of an all-background image is then tiny
    b = -math.log(99)
    outputs = {"cls_logits": torch.full((1, SPEC.num_anchors, 3), b), "box_deltas": torch.zeros(1, SPEC.num_anchors, 4)}
    fl = RetinaNetLoss(spec=SPEC)(outputs, _targets([[]], [[]]))["cls_loss"].item()
    ce = RetinaNetLoss(spec=SPEC, alpha=-1, gamma=0)(outputs, _targets([[]], [[]]))["cls_loss"].item()
    per_elem_ce = -math.log(0.99)
    assert ce == pytest.approx(per_elem_ce * SPEC.num_anchors * 3, rel=1e-5)
    assert fl == pytest.approx(0.75 * 0.01**2 * per_elem_ce * SPEC.num_anchors * 3, rel=1e-4)
