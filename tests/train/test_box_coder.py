"""Center-size box coding: hand values, round trip, clamp, torchvision and the EfficientNMS decode formula."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.train.anchors import anchors_for
from retinaedge.train.box_coder import BoxCoder


def _random_boxes(g: torch.Generator, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 60 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_hand_example() -> None:
    coder = BoxCoder()
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])  # centre (5, 5), 10 x 10
    gt = torch.tensor([5.0, 5.0, 15.0, 25.0])  # centre (10, 15), 10 x 20
    torch.testing.assert_close(coder.encode(gt, anchor), torch.tensor([0.5, 1.0, 0.0, math.log(2.0)]))
    weighted = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(weighted.encode(gt, anchor), torch.tensor([5.0, 10.0, 0.0, 5 * math.log(2.0)]))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip(weights: tuple[float, float, float, float], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    anchors = _random_boxes(g, 200, dtype)
    gt = _random_boxes(g, 200, dtype)
    coder = BoxCoder(weights=weights)
    torch.testing.assert_close(coder.decode(coder.encode(gt, anchors), anchors), gt, atol=1e-5, rtol=1e-5)


def test_matches_torchvision_box_coder() -> None:
    g = torch.Generator().manual_seed(1)
    anchors, gt = _random_boxes(g, 100), _random_boxes(g, 100)
    weights = (10.0, 10.0, 5.0, 5.0)
    ours, ref = BoxCoder(weights=weights), TvBoxCoder(weights=weights)
    torch.testing.assert_close(ours.encode(gt, anchors), ref.encode_single(gt, anchors))
    deltas = torch.randn(100, 4, generator=g) * 3
    torch.testing.assert_close(ours.decode(deltas, anchors), ref.decode_single(deltas, anchors))


def test_decode_clamps_dw_dh_before_exp() -> None:
    coder = BoxCoder()  # clamp log(1000/16)
    anchor = torch.tensor([0.0, 0.0, 16.0, 16.0])
    box = coder.decode(torch.tensor([0.0, 0.0, 100.0, 1e9]), anchor)
    assert torch.isfinite(box).all()
    torch.testing.assert_close(box[2] - box[0], torch.tensor(1000.0))  # 16 * exp(log(1000/16))
    torch.testing.assert_close(box[3] - box[1], torch.tensor(1000.0))
    # negative dw is not clamped; the clamp applies after dividing by the weight
    small = BoxCoder(weights=(1, 1, 2, 2), clamp=1.0).decode(torch.tensor([0.0, 0.0, -2.0, 4.0]), anchor)
    torch.testing.assert_close(small[2:] - small[:2], torch.tensor([16 * math.exp(-1.0), 16 * math.e]))


def test_broadcasts_over_leading_dims() -> None:
    g = torch.Generator().manual_seed(2)
    anchors = _random_boxes(g, 7)  # (N, 4)
    deltas = torch.randn(3, 7, 4, generator=g)  # (B, N, 4)
    coder = BoxCoder()
    out = coder.decode(deltas, anchors)
    assert out.shape == (3, 7, 4)
    torch.testing.assert_close(out[1], coder.decode(deltas[1], anchors))
    gt = _random_boxes(g, 21).reshape(3, 7, 4)
    torch.testing.assert_close(coder.encode(gt, anchors)[2], coder.encode(gt[2], anchors))


def test_decode_equals_efficient_nms_box_coding_1() -> None:
    # EfficientNMS_TRT box_coding=1 with anchors (cx, cy, w, h): p = d01 * a23 + a01, s = a23 * exp(d23)
    spec = DetectorSpec(class_names=("a",), input_height=32, input_width=32,
                        anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0)))
    anchors = anchors_for(spec)
    a = torch.from_numpy(spec.anchors_cxcywh())
    d = torch.randn(anchors.shape[0], 4, generator=torch.Generator().manual_seed(3))
    p, s = d[:, :2] * a[:, 2:] + a[:, :2], a[:, 2:] * torch.exp(d[:, 2:])
    plugin = torch.cat([p - s / 2, p + s / 2], dim=1)
    torch.testing.assert_close(BoxCoder.from_spec(spec).decode(d, anchors), plugin, atol=1e-4, rtol=1e-5)


def test_from_spec_and_bad_arguments() -> None:
    spec = DetectorSpec(class_names=("a",), input_height=128, input_width=128)
    coder = BoxCoder.from_spec(spec)
    assert coder.weights == spec.box_coding.weights and coder.clamp == spec.box_coding.clamp
    with pytest.raises(InputError, match=r"weights=\(1.0, 0.0"):
        BoxCoder(weights=(1.0, 0.0, 1.0, 1.0))
    with pytest.raises(InputError, match="clamp=-1"):
        BoxCoder(clamp=-1.0)
