"""`load_runner` dispatch by suffix, ONNX metadata and spec lookup."""

from __future__ import annotations

import numpy as np
import pytest

from retinaedge.runtime import models
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.ort_runner import OrtRunner
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def make_spec(**kw) -> DetectorSpec:
    base = dict(class_names=("a", "b"), input_height=64, input_width=64,
                anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0,), aspect_ratios=(1.0,)))
    base.update(kw)
    return DetectorSpec(**base)


def write_onnx(path, metadata=None):
    """images (B,3,64,64) uint8 -> Cast -> "cls_logits"; enough for metadata and dispatch."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["cls_logits"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["B", 3, 64, 64])],
        [helper.make_tensor_value_info("cls_logits", TensorProto.FLOAT, ["B", 3, 64, 64])])
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
    assert models.read_onnx_metadata(p) == meta
    assert models.read_onnx_metadata(write_onnx(tmp_path / "plain.onnx")) == {}
    assert models.spec_for_onnx(p) == spec


def test_spec_lookup_falls_back_to_spec_json_and_names_both_sources(tmp_path):
    p = write_onnx(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"no 'retinaedge\.spec' metadata and no spec\.json"):
        models.spec_for_onnx(p)
    spec = make_spec(category_ids=(4, 8))
    spec.save(tmp_path / "spec.json")
    assert models.spec_for_onnx(p) == spec
    bad = write_onnx(tmp_path / "bad.onnx", {"retinaedge.spec": '{"class_names": []}'})
    with pytest.raises(ModelError, match="not a valid spec"):
        models.spec_for_onnx(bad)


def test_missing_and_corrupt_onnx(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        models.read_onnx_metadata(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelError, match=r"junk\.onnx") as e:
        models.read_onnx_metadata(junk)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["model.onnx", "MODEL.ONNX"])
def test_onnx_suffix_gives_an_ort_runner_with_kwargs(tmp_path, name):
    p = write_onnx(tmp_path / name, {"retinaedge.spec": make_spec().to_json(), "retinaedge.precision": "int8"})
    r = models.load_runner(p, threads=1, name="mine")
    assert isinstance(r, OrtRunner) and r.threads == 1 and r.name == "mine" and r.precision == "int8"
    assert not r.is_active
    with r:
        out = r.infer(np.zeros((1, 3, 64, 64), np.uint8))
    assert out["cls_logits"].shape == (1, 3, 64, 64)


@pytest.mark.parametrize("suffix", [".engine", ".plan"])
def test_engine_suffixes_go_to_the_tensorrt_runner(tmp_path, monkeypatch, suffix):
    import retinaedge.runtime.trt_runner as trt_runner

    seen = {}

    class FakeTrtRunner:
        def __init__(self, *, path, **kwargs):
            seen.update(path=path, **kwargs)

    monkeypatch.setattr(trt_runner, "TrtRunner", FakeTrtRunner)
    r = models.load_runner(tmp_path / f"model.fp16{suffix}", device=1)
    assert isinstance(r, FakeTrtRunner)
    assert seen == {"path": tmp_path / f"model.fp16{suffix}", "device": 1}


@pytest.mark.parametrize("name", ["ckpt.pt", "model.tflite", "model"])
def test_other_suffixes_are_refused_with_the_allowed_set(tmp_path, name):
    with pytest.raises(InputError, match=r"\['.onnx', '.engine', '.plan'\]") as e:
        models.load_runner(tmp_path / name)
    suffix = name[name.index("."):] if "." in name else ""
    assert repr(suffix) in str(e.value)
