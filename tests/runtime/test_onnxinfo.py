"""What an exported ONNX says about itself: metadata, spec lookup, and `describe_onnx`'s one reading."""

from __future__ import annotations

import json

import pytest

from retinaedge.runtime import onnxinfo
from retinaedge.runtime.errors import ModelError

pytest.importorskip("onnx")
from tests.support.onnx_files import make_spec, write_onnx


def test_read_onnx_metadata(tmp_path):
    spec = make_spec()
    meta = {"retinaedge.spec": spec.to_json(), "retinaedge.precision": "fp16", "retinaedge.nms": "onnx",
            "retinaedge.target": "tensorrt"}
    p = write_onnx(tmp_path / "m.onnx", meta)
    assert onnxinfo.read_onnx_metadata(p) == meta
    assert onnxinfo.read_onnx_metadata(write_onnx(tmp_path / "plain.onnx")) == {}
    assert onnxinfo.spec_for_onnx(p) == spec


def test_spec_lookup_falls_back_to_spec_json_and_names_both_sources(tmp_path):
    p = write_onnx(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"no 'retinaedge\.spec' metadata and no spec\.json"):
        onnxinfo.spec_for_onnx(p)
    spec = make_spec(category_ids=(4, 8))
    spec.save(tmp_path / "spec.json")
    assert onnxinfo.spec_for_onnx(p) == spec
    bad = write_onnx(tmp_path / "bad.onnx", {"retinaedge.spec": '{"class_names": []}'})
    with pytest.raises(ModelError, match="not a valid spec"):
        onnxinfo.spec_for_onnx(bad)


def test_missing_and_corrupt_onnx(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        onnxinfo.read_onnx_metadata(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelError, match=r"junk\.onnx") as e:
        onnxinfo.read_onnx_metadata(junk)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("kw", "want"), [
    ({}, "fp32"),
    ({"op": "QuantizeLinear"}, "int8"),
    ({"fp16_weight": True}, "fp16"),
])
def test_describe_reads_precision_from_the_graph_when_the_metadata_is_silent(tmp_path, kw, want):
    p = write_onnx(tmp_path / "m.onnx", {"retinaedge.spec": make_spec().to_json()}, **kw)
    info = onnxinfo.describe_onnx(p)
    assert info.precision == want and info.target == "tensorrt" and info.keep_high is None
    assert info.spec == make_spec() and info.nms == make_spec().nms


def test_describe_prefers_the_metadata_and_names_int8_with_keep_high_mixed(tmp_path):
    keep = {"nodes": ["/fpn/p3/Conv"], "dtype": "fp32"}
    meta = {"retinaedge.spec": make_spec().to_json(), "retinaedge.precision": "int8", "retinaedge.nms": "onnx",
            "retinaedge.target": "cpu", "retinaedge.keep_high": json.dumps(keep)}
    info = onnxinfo.describe_onnx(write_onnx(tmp_path / "m.onnx", meta, fp16_weight=True))
    assert (info.precision, info.nms, info.target, info.keep_high) == ("int8-mixed", "onnx", "cpu", keep)
    assert info.metadata == meta


def test_describe_says_efficient_when_the_plugin_node_is_in_the_graph(tmp_path):
    meta = {"retinaedge.spec": make_spec().to_json(), "retinaedge.nms": "none"}
    info = onnxinfo.describe_onnx(write_onnx(tmp_path / "m.onnx", meta, op="EfficientNMS_TRT"))
    assert info.nms == "efficient"


@pytest.mark.parametrize(("key", "value", "match"), [
    ("retinaedge.precision", "int4", r"retinaedge\.precision='int4'; allowed: \['fp32', 'fp16', 'int8'\]"),
    ("retinaedge.keep_high", "{nodes", r"retinaedge\.keep_high is not JSON"),
    ("retinaedge.keep_high", '{"nodes": ["a"], "dtype": "bf16"}', r"keep_high=.* is malformed; expected"),
])
def test_describe_refuses_bad_metadata_in_one_line_naming_the_value(tmp_path, key, value, match):
    p = write_onnx(tmp_path / "m.onnx", {"retinaedge.spec": make_spec().to_json(), key: value})
    with pytest.raises(ModelError, match=match) as e:
        onnxinfo.describe_onnx(p)
    assert "\n" not in str(e.value) and "m.onnx" in str(e.value)


def test_describe_uses_a_passed_spec_over_the_files(tmp_path):
    other = make_spec(class_names=("x",))
    info = onnxinfo.describe_onnx(write_onnx(tmp_path / "m.onnx"), spec=other)
    assert info.spec == other
