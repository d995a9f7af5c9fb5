"""`load_runner` dispatch by suffix."""

from __future__ import annotations

import numpy as np
import pytest

from retinaedge.runtime import models
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.ort_runner import OrtRunner

pytest.importorskip("onnx")
from tests.support.onnx_files import make_spec, write_onnx


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
