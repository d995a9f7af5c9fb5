import json
import math

import numpy as np
import pytest

from retinaedge.runtime.errors import SpecError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec


def tiny_spec(**kw):
    base = dict(class_names=("a", "b"), input_height=64, input_width=64,
                anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0,), aspect_ratios=(1.0,)))
    base.update(kw)
    return DetectorSpec(**base)


def test_json_round_trip_is_exact(tmp_path):
    spec = tiny_spec(category_ids=(3, 17))
    p = tmp_path / "spec.json"
    spec.save(p)
    assert DetectorSpec.load(p) == spec
    assert json.loads(p.read_text())["spec_version"] == 1


def test_default_category_ids_are_one_based():
    assert tiny_spec().category_ids == (1, 2)


def test_anchors_hand_computed():
    spec = tiny_spec()
    a = spec.anchors_xyxy()
    # level 0: 8x8 cells, stride 8, size 16, offset .5 -> first centre (4, 4), second (12, 4)
    assert a.shape == (8 * 8 + 4 * 4, 4)
    np.testing.assert_allclose(a[0], [-4, -4, 12, 12])
    np.testing.assert_allclose(a[1], [4, -4, 20, 12])
    np.testing.assert_allclose(a[8], [-4, 4, 12, 20])  # next row
    # level 1 starts after 64 anchors: centre (8, 8), size 32
    np.testing.assert_allclose(a[64], [-8, -8, 24, 24])
    c = spec.anchors_cxcywh()
    np.testing.assert_allclose(c[64], [8, 8, 32, 32])
    assert spec.num_anchors == 80 and spec.level_sizes() == [64, 16]


def test_cell_anchor_order_scales_outer_ratios_inner():
    spec = tiny_spec(anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0, 2.0),
                                        aspect_ratios=(0.5, 2.0)))
    cell = spec.cell_anchors(0)
    wh = cell[:, 2:] - cell[:, :2]
    # ratio is h/w; area (16*scale)^2
    np.testing.assert_allclose(wh[0], [16 * math.sqrt(2), 16 / math.sqrt(2)])
    np.testing.assert_allclose(wh[1], [16 / math.sqrt(2), 16 * math.sqrt(2)])
    np.testing.assert_allclose(wh[2], [32 * math.sqrt(2), 32 / math.sqrt(2)])


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"input_height": 60}, "input_height=60 must be a positive multiple of the largest stride 16; try 64"),
        ({"nms": "fast"}, "nms='fast' is not allowed; choose one of ['efficient', 'onnx', 'none']"),
        ({"class_names": ()}, "class_names is empty"),
        ({"class_names": ("a", "a")}, "contains duplicates"),
        ({"category_ids": (1,)}, "category_ids has 1 entries but class_names has 2"),
    ],
)
def test_bad_values_are_named(kw, msg):
    with pytest.raises(SpecError, match=msg.replace("[", r"\[").replace("(", r"\(")):
        tiny_spec(**kw)


def test_unknown_keys_and_versions_refused():
    d = tiny_spec().to_dict()
    with pytest.raises(SpecError, match="unknown spec keys"):
        DetectorSpec.from_dict({**d, "bogus": 1})
    with pytest.raises(SpecError, match="spec_version=2 is not supported"):
        DetectorSpec.from_dict({**d, "spec_version": 2})
    with pytest.raises(SpecError, match="not valid JSON"):
        DetectorSpec.from_json("{nope")


def test_replace_accepts_nested_dicts():
    s = tiny_spec().replace(postprocess={"score_threshold": 0.2})
    assert s.postprocess.score_threshold == 0.2 and s.postprocess.iou_threshold == 0.5
