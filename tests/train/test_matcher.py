"""Anchor matching: exact thresholds, padding, empty targets, low-quality matches, torchvision's Matcher."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from retinaedge.runtime.errors import InputError
from retinaedge.train.matcher import BACKGROUND, IGNORE, batched_box_iou, match_anchors

ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])


def _one_gt_per_image(heights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    # gt (0, 0, 10, h) against anchor 0 (0, 0, 10, 10): IoU = 10h / 100 = h / 10 exactly
    boxes = torch.tensor([[[0.0, 0.0, 10.0, h]] for h in heights])
    return boxes, torch.ones(len(heights), 1, dtype=torch.bool)


def test_thresholds_are_inclusive_at_fg_and_bg() -> None:
    boxes, valid = _one_gt_per_image([5.0, 4.0, 4.5, 3.0, 9.0])  # IoU 0.5, 0.4, 0.45, 0.3, 0.9
    m = match_anchors(ANCHORS, boxes, valid)
    assert m.dtype == torch.int64 and m.shape == (5, 2)
    assert m[:, 0].tolist() == [0, IGNORE, IGNORE, BACKGROUND, 0]
    assert m[:, 1].tolist() == [BACKGROUND] * 5  # the far anchor overlaps nothing


def test_custom_thresholds() -> None:
    boxes, valid = _one_gt_per_image([5.0, 4.0, 3.0])
    m = match_anchors(ANCHORS, boxes, valid, fg_iou=0.4, bg_iou=0.3)
    assert m[:, 0].tolist() == [0, 0, IGNORE]
    m = match_anchors(ANCHORS, boxes, valid, fg_iou=0.45, bg_iou=0.45)  # no ignore band
    assert m[:, 0].tolist() == [0, BACKGROUND, BACKGROUND]


def test_best_gt_wins_and_index_points_into_m() -> None:
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 6.0], [0.0, 0.0, 10.0, 9.0], [101.0, 100.0, 110.0, 110.0]]])
    m = match_anchors(ANCHORS, boxes, torch.ones(1, 3, dtype=torch.bool))
    assert m.tolist() == [[1, 2]]


def test_padding_never_matches() -> None:
    # row 0 is padding placed exactly on anchor 0; row 1 is a real box on anchor 1
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]]])
    valid = torch.tensor([[False, True]])
    assert match_anchors(ANCHORS, boxes, valid).tolist() == [[BACKGROUND, 1]]
    zeros = torch.zeros(1, 2, 4)  # zero-area padding (what a loader writes) with low-quality matching on
    assert match_anchors(ANCHORS, zeros, torch.tensor([[False, False]]), allow_low_quality=True).tolist() == [
        [BACKGROUND, BACKGROUND]
    ]


@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_empty_targets_are_all_background(allow_low_quality: bool) -> None:
    m = match_anchors(ANCHORS, torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool),
                      allow_low_quality=allow_low_quality)
    assert m.shape == (3, 2) and (m == BACKGROUND).all()
    boxes, _ = _one_gt_per_image([5.0, 5.0])
    m = match_anchors(ANCHORS, boxes, torch.zeros(2, 1, dtype=torch.bool), allow_low_quality=allow_low_quality)
    assert (m == BACKGROUND).all()


def test_low_quality_makes_best_anchor_positive_with_ties() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    # straddles anchors 0 and 1 equally: IoU 30 / (100 + 60 - 30) = 3/13 each, below bg_iou
    boxes = torch.tensor([[[7.0, 0.0, 13.0, 10.0]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert match_anchors(anchors, boxes, valid).tolist() == [[BACKGROUND, BACKGROUND, BACKGROUND]]
    assert match_anchors(anchors, boxes, valid, allow_low_quality=True).tolist() == [[0, 0, BACKGROUND]]
    # a box overlapping no anchor does not turn every zero-IoU anchor positive
    far = torch.tensor([[[200.0, 200.0, 210.0, 210.0]]])
    assert match_anchors(anchors, far, valid, allow_low_quality=True).tolist() == [[BACKGROUND] * 3]


@pytest.mark.parametrize("allow_low_quality", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchvision_matcher(allow_low_quality: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(300, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 30 + 5], dim=1)
    b, m = 4, 6
    gxy = torch.rand(b, m, 2, generator=g) * 90
    boxes = torch.cat([gxy, gxy + torch.rand(b, m, 2, generator=g) * 30 + 5], dim=2)
    valid = torch.rand(b, m, generator=g) > 0.3
    valid[0] = False  # an image without objects
    ours = match_anchors(anchors, boxes, valid, allow_low_quality=allow_low_quality)
    ref_matcher = Matcher(0.5, 0.4, allow_low_quality_matches=allow_low_quality)
    for i in range(b):
        idx = valid[i].nonzero().squeeze(1)
        if idx.numel() == 0:
            assert (ours[i] == BACKGROUND).all()
            continue
        ref = ref_matcher(box_iou(boxes[i, idx], anchors))
        expected = torch.where(ref >= 0, idx[ref.clamp(min=0)], ref)  # back to indices into M
        assert torch.equal(ours[i], expected), f"image {i}"


def test_batched_box_iou_equals_torchvision() -> None:
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 5, 2, generator=g) * 50
    a = torch.cat([xy, xy + 10], dim=2)
    xy = torch.rand(7, 2, generator=g) * 50
    b = torch.cat([xy, xy + 20], dim=1)
    out = batched_box_iou(a, b)
    assert out.shape == (2, 5, 7)
    for i in range(2):
        torch.testing.assert_close(out[i], box_iou(a[i], b))


def test_bad_thresholds_and_shapes() -> None:
    boxes, valid = _one_gt_per_image([5.0])
    with pytest.raises(InputError, match=r"bg_iou=0.6, fg_iou=0.5"):
        match_anchors(ANCHORS, boxes, valid, bg_iou=0.6)
    with pytest.raises(InputError, match=r"gt_boxes=\(1, 4\)"):
        match_anchors(ANCHORS, boxes[0], valid)
    with pytest.raises(InputError, match=r"gt_valid has shape \(1,\)"):
        match_anchors(ANCHORS, boxes, valid[0])
