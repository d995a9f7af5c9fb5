"""Anchors come from the spec, in the spec's order, checked against a table computed by hand."""

from __future__ import annotations

import pytest
import torch

from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.train.anchors import anchors_for, level_slices

# strides (8, 16) on a 32x32 input: level 0 has 4x4 cells, level 1 has 2x2; A = 2 scales x 2 ratios = 4.
# size s, scale c, ratio r = h/w: w = s*c/sqrt(r), h = s*c*sqrt(r); r=4 gives w = s*c/2, h = 2*s*c.
HAND = {
    # row: (x1, y1, x2, y2)
    0: (-4, -4, 12, 12),  # P3 cell (y0, x0) centre (4, 4), size 16, scale 1, ratio 1
    1: (0, -12, 8, 20),  # scale 1, ratio 4: w 8, h 32
    2: (-12, -12, 20, 20),  # scale 2, ratio 1: 32 x 32
    3: (-4, -28, 12, 36),  # scale 2, ratio 4: w 16, h 64
    4: (4, -4, 20, 12),  # cell (y0, x1): centre (12, 4); x before y
    16: (-4, 4, 12, 20),  # cell (y1, x0): centre (4, 12)
    63: (20, -4, 36, 60),  # last P3 anchor: cell (y3, x3) centre (28, 28), scale 2, ratio 4
    64: (-8, -8, 24, 24),  # first P4 anchor: cell (y0, x0) centre (8, 8), size 32
    65: (0, -24, 16, 40),  # P4 scale 1 ratio 4: w 16, h 64
    79: (8, -40, 40, 88),  # P4 cell (y1, x1) centre (24, 24), scale 2 ratio 4: w 32, h 128
}


def _spec(offset: float = 0.5) -> DetectorSpec:
    return DetectorSpec(
        class_names=("a",), input_height=32, input_width=32,
        anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0, 2.0), aspect_ratios=(1.0, 4.0),
                           offset=offset),
    )


def test_anchors_match_hand_table() -> None:
    a = anchors_for(_spec())
    assert a.shape == (80, 4)
    assert a.dtype == torch.float32
    for row, box in HAND.items():
        torch.testing.assert_close(a[row], torch.tensor(box, dtype=torch.float32), msg=f"row {row}")


def test_offset_zero_puts_centres_on_grid_corners() -> None:
    a = anchors_for(_spec(offset=0.0))
    torch.testing.assert_close(a[0], torch.tensor([-8.0, -8.0, 8.0, 8.0]))  # centre (0, 0)
    torch.testing.assert_close(a[64 + 4 * 3], torch.tensor([0.0, 0.0, 32.0, 32.0]))  # P4 cell (1, 1): centre (16, 16)


def test_non_square_input_orders_y_outer_x_inner() -> None:
    spec = DetectorSpec(class_names=("a",), input_height=16, input_width=48,
                        anchors=AnchorSpec(strides=(16,), sizes=(16.0,), scales=(1.0,), aspect_ratios=(1.0,)))
    centres = anchors_for(spec).reshape(-1, 2, 2).mean(dim=1)  # (cx, cy)
    torch.testing.assert_close(centres, torch.tensor([[8.0, 8.0], [24.0, 8.0], [40.0, 8.0]]))


def test_dtype_device_and_fresh_tensor() -> None:
    spec = _spec()
    a = anchors_for(spec, dtype=torch.float64, device="cpu")
    assert a.dtype == torch.float64
    a.zero_()  # the cache must not be shared with callers
    torch.testing.assert_close(anchors_for(spec)[0], torch.tensor(HAND[0], dtype=torch.float32))


def test_default_spec_count_and_level_slices() -> None:
    spec = DetectorSpec(class_names=("a",), input_height=256, input_width=256)
    a = anchors_for(spec)
    assert a.shape[0] == spec.num_anchors == (32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2) * 9
    slices = level_slices(spec)
    assert [s.stop - s.start for s in slices] == spec.level_sizes()
    assert slices[0].start == 0 and slices[-1].stop == spec.num_anchors
    # each level's anchors have that level's base size for scale 1, ratio 1 (cell index 1 of 9)
    for s, size in zip(slices, spec.anchors.sizes, strict=True):
        w = a[s][1, 2] - a[s][1, 0]
        assert w.item() == pytest.approx(size)
