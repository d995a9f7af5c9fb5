"""Data inspection and the recipe fit on hand-made box sets with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from retinaedge.runtime.errors import DataError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.train.data.inspect import (
    BoxSet,
    anchor_coverage,
    choose_input_size,
    fit_anchor_sizes,
    fit_recipe,
    inspect_boxes,
    letterboxed_boxes,
    read_box_set,
    write_report,
)

STRIDES = (8, 16, 32, 64, 128)


def spec(size: int = 256, sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)) -> DetectorSpec:
    return DetectorSpec(class_names=("a", "b"), input_height=size, input_width=size,
                        anchors=AnchorSpec(strides=STRIDES, sizes=sizes))


def box_set(wh: list[tuple[float, float]], *, image: tuple[int, int] = (256, 256), seed: int = 0) -> BoxSet:
    """Boxes of the given sizes at random positions inside one image size (one image per box)."""
    rng = np.random.default_rng(seed)
    boxes = [(rng.uniform(0, image[0] - w), rng.uniform(0, image[1] - h), w, h) for w, h in wh]
    n = len(wh)
    return BoxSet(class_names=("a", "b"), image_sizes=np.tile(np.asarray(image, float), (max(n, 1), 1)),
                  boxes=np.asarray(boxes, float).reshape(-1, 4), image_index=np.arange(n),
                  labels=np.arange(n) % 2)


def test_one_size_gets_an_anchor_of_that_size() -> None:
    # 200 boxes of 20x20 px: the paper's anchors (32 px and up at stride 8) cover none of them at IoU 0.5
    bs = box_set([(20.0, 20.0)] * 200)
    s = spec()
    assert anchor_coverage(s, bs).covered < 0.05
    sizes, _ = fit_anchor_sizes(s, letterboxed_boxes(bs, (256, 256)))
    # one level's 3 octave scales (x1, x1.26, x1.59) must bracket 20 px: a base size in [20/1.59, 20]
    assert any(20 / 1.6 <= z <= 20.0 for z in sizes), sizes
    fitted = s.replace(anchors=AnchorSpec(strides=STRIDES, sizes=sizes))
    assert anchor_coverage(fitted, bs).covered > 0.9


def test_two_clusters_get_two_levels_and_sizes_stay_increasing() -> None:
    bs = box_set([(16.0, 16.0)] * 150 + [(100.0, 100.0)] * 150)
    s = spec()
    sizes, _ = fit_anchor_sizes(s, letterboxed_boxes(bs, (256, 256)))
    assert list(sizes) == sorted(sizes) and len(set(sizes)) == len(sizes)  # the spec's per-level order holds
    assert any(16 / 1.6 <= z <= 16 for z in sizes) and any(100 / 1.6 <= z <= 100 for z in sizes), sizes
    fitted = s.replace(anchors=AnchorSpec(strides=STRIDES, sizes=sizes))
    cov = anchor_coverage(fitted, bs)
    assert cov.covered > 0.9 and set(cov.covered_per_class) == {"a", "b"}


def test_extreme_aspect_fits_ratios_and_keeps_nine_anchors() -> None:
    # 1:4 boxes (h/w = 4): the paper's ratios (0.5, 1, 2) reach IoU < 0.5 for most of them
    bs = box_set([(12.0, 48.0)] * 200)
    s = spec(sizes=(12.0, 24.0, 48.0, 96.0, 192.0))
    fit = fit_recipe(s, bs, fg_iou=0.5, fit_input=False, fit_anchors=True)
    assert len(fit.aspect_ratios) == 3 and max(fit.aspect_ratios) >= 3.5  # quantile ratios around h/w = 4
    assert fit.after.covered > fit.before.covered + 0.3
    fitted = s.replace(anchors=AnchorSpec(strides=STRIDES, sizes=fit.sizes, aspect_ratios=fit.aspect_ratios))
    assert fitted.num_anchors_per_cell == 9
    assert any("coverage" in n for n in fit.notes)


def test_input_size_native_never_above_the_preset_and_follows_a_shared_aspect() -> None:
    assert choose_input_size(box_set([(30, 30)] * 20, image=(192, 192)), (256, 256))[0] == (192, 192)
    assert choose_input_size(box_set([(30, 30)] * 20, image=(640, 640)), (256, 256))[0] == (256, 256)
    assert choose_input_size(box_set([(40, 30)] * 20, image=(320, 240)), (256, 256))[0] == (192, 256)
    # tiny boxes in small images: the input grows back towards the preset so they keep >= 8 px
    hw, why = choose_input_size(box_set([(4, 4)] * 20, image=(128, 128)), (256, 256))
    assert hw == (256, 256) and "raised" in why


def test_fitted_spec_is_valid_and_progressive_size_fits_the_input() -> None:
    bs = box_set([(30.0, 20.0)] * 50, image=(320, 240))
    fit = fit_recipe(spec(), bs, fg_iou=0.5, fit_input=True, fit_anchors=True, progressive_size=128)
    assert fit.input_size == (192, 256) and fit.progressive_size == 96  # 96 x 128: both multiples of 32
    DetectorSpec(class_names=("a", "b"), input_height=192, input_width=256,
                 anchors=AnchorSpec(strides=STRIDES, sizes=fit.sizes, aspect_ratios=fit.aspect_ratios))
    assert "--set data.input_size=[192, 256]" in " ".join("--set " + o for o in fit.overrides())


def _write(path: Path, images: list[dict], anns: list[dict]) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}))
    return path


def test_read_box_set_skips_what_the_loader_skips(tmp_path: Path) -> None:
    ann = _write(tmp_path / "a.json", [{"id": 1, "file_name": "x.jpg", "width": 100, "height": 50}], [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 20]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},  # crowd
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 0, 5]},  # degenerate
        {"id": 4, "image_id": 9, "category_id": 3, "bbox": [0, 0, 5, 5]},  # unknown image
        {"id": 5, "image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5]},  # unknown category
    ])
    bs = read_box_set(ann)
    assert bs.boxes.tolist() == [[1, 2, 10, 20]] and bs.labels.tolist() == [1]
    assert bs.image_sizes.tolist() == [[100, 50]]


def test_inspect_one_image_and_no_boxes(tmp_path: Path) -> None:
    one = read_box_set(_write(tmp_path / "one.json", [{"id": 1, "file_name": "x.jpg", "width": 128, "height": 128}],
                              [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 20]}]))
    s = spec(128, (12.0, 24.0, 48.0, 96.0, 192.0))
    stats = inspect_boxes(one, s)
    assert stats["images"] == 1 and stats["boxes"] == 1 and stats["box_width_px"]["median"] == 40.0
    assert stats["class_balance"]["empty_classes"] == ["b"]
    fit = fit_recipe(s, one, fg_iou=0.5, fit_input=True, fit_anchors=True)
    j, png = write_report(tmp_path / "rep", one, stats, fit, spec=s)
    assert json.loads(j.read_text())["fit"]["coverage_after"]["covered"] == 1.0
    assert png.read_bytes()[:4] == b"\x89PNG"
    empty = read_box_set(_write(tmp_path / "e.json", [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 64}], []))
    with pytest.raises(DataError, match=r"lists 1 image\(s\) but no usable box"):
        inspect_boxes(empty, s)
    with pytest.raises(DataError, match="no boxes to fit anchors to"):
        fit_recipe(s, empty, fg_iou=0.5, fit_input=False, fit_anchors=True)
    with pytest.raises(DataError, match="lists no image"):
        read_box_set(_write(tmp_path / "n.json", [], []))


def test_ceil_feature_maps_for_inputs_off_the_largest_stride() -> None:
    s = spec(192)
    assert s.feature_shapes() == [(24, 24), (12, 12), (6, 6), (3, 3), (2, 2)]
    assert s.num_anchors == 9 * sum(h * w for h, w in s.feature_shapes())
    assert math.isclose(float(s.anchors_xyxy()[-1, 0] + s.anchors_xyxy()[-1, 2]) / 2, 192.0)  # last P7 centre
