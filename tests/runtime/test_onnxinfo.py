"""What an exported ONNX says about itself: metadata, spec lookup, and `describe_onnx`'s one reading."""

from __future__ import annotations

import json

import pytest

from retinaedge.runtime import onnxinfo
from retinaedge.runtime.errors import ModelError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec

onnx = pytest.importorskip("onnx")
import numpy as np  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def make_spec(**kw) -> DetectorSpec:
    base = dict(class_names=("a", "b"), input_height=64, input_width=64,
                anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0,), aspect_ratios=(1.0,)))
    base.update(kw)
    return DetectorSpec(**base)


def write_onnx(path, metadata=None, *, op="Cast", fp16_weight=False):
    """images (B,3,64,64) uint8 -> Cast -> "cls_logits"; ``op`` adds one node of that type (a Q/DQ or the plugin
    as a graph would hold it), ``fp16_weight`` one FLOAT16 initializer."""
    nodes = [helper.make_node("Cast", ["images"], ["cls_logits"], to=TensorProto.FLOAT)]
    inits = []
    if op != "Cast":
        nodes.append(helper.make_node(op, ["cls_logits"], ["extra"]))
    if fp16_weight:
        inits.append(numpy_helper.from_array(np.ones(3, np.float16), "w16"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["B", 3, 64, 64])],
        [helper.make_tensor_value_info("cls_logits", TensorProto.FLOAT, ["B", 3, 64, 64])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


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
