"""`load_runner` dispatch by suffix."""

from __future__ import annotations

import numpy as np
import pytest

from retinaedge.runtime import models
from retinaedge.runtime.errors import InputError
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
