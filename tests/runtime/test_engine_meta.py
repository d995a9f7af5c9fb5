"""The engine sidecar: JSON round trip and the refusal of an engine built for another TensorRT or GPU."""

from __future__ import annotations

import json

import pytest

from retinaedge.runtime.engine_meta import EngineSidecar, check_compatible, sidecar_path
from retinaedge.runtime.errors import EngineMismatchError, ModelError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec

SPEC = DetectorSpec(
    class_names=("a", "b"), input_height=64, input_width=64,
    anchors=AnchorSpec(strides=(16, 32), sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0,)),
)


def _sidecar(**over) -> EngineSidecar:
    base = dict(
        trt_version="10.3.0", device_name="Orin", compute_capability=(8, 7), precision="int8",
        spec=SPEC.to_dict(), onnx_sha256="ab" * 32, calib_hash="cd" * 32,
        build_options={"path": "weakly-typed", "batch": (1, 1, 8), "dla_core": None},
        build_time_s=12.5, layer_precisions={"fp32": 0.1, "fp16": 0.2, "int8": 0.7, "other": 0.0}, num_layers=10,
    )
    base.update(over)
    return EngineSidecar(**base)


def test_round_trip(tmp_path):
    side = _sidecar()
    path = sidecar_path(tmp_path / "model.int8.engine")
    assert path.name == "model.int8.engine.json"
    side.save(path)
    back = EngineSidecar.for_engine(tmp_path / "model.int8.engine")
    assert back == side and back.compute_capability == (8, 7)
    assert DetectorSpec.from_dict(back.spec) == SPEC
    assert back.build_options["batch"] == [1, 1, 8]  # JSON-normalised on both sides
    data = json.loads(path.read_text())
    assert data["sidecar_version"] == 1 and data["compute_capability"] == [8, 7]


def test_refuses_bad_sidecars(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        EngineSidecar.load(tmp_path / "missing.json")
    good = _sidecar().to_dict()
    with pytest.raises(ModelError, match="unknown engine sidecar keys"):
        EngineSidecar.from_dict({**good, "extra": 1})
    with pytest.raises(ModelError, match="sidecar_version=7"):
        EngineSidecar.from_dict({**good, "sidecar_version": 7})
    with pytest.raises(ModelError, match="incomplete"):
        EngineSidecar.from_dict({k: v for k, v in good.items() if k != "device_name"})
    with pytest.raises(ModelError, match="precision='bf16'"):
        _sidecar(precision="bf16")
    with pytest.raises(ModelError, match="not valid JSON"):
        EngineSidecar.from_json("{not json")


def test_same_trt_and_gpu_passes():
    check_compatible(_sidecar(), trt_version="10.3.0", device_name="Orin", compute_capability=(8, 7))


def test_mismatch_names_both_sides():
    with pytest.raises(EngineMismatchError) as e:
        check_compatible(_sidecar(), trt_version="10.13.0", device_name="NVIDIA H100", compute_capability=(9, 0))
    msg = str(e.value)
    assert msg.startswith(
        "engine built with TensorRT 10.3.0 on Orin (8.7), running TensorRT 10.13.0 on NVIDIA H100 (9.0)"
    )
    assert "TensorRT versions and GPUs differ" in msg and "rebuild with retinaedge build" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("trt_version", "device", "cc", "what"),
    [
        ("10.3.1", "Orin", (8, 7), "TensorRT versions differ"),
        ("10.3.0", "Orin Nano", (8, 7), "GPUs differ"),
        ("10.3.0", "Orin", (8, 6), "GPUs differ"),
    ],
)
def test_any_single_mismatch_is_refused(trt_version, device, cc, what):
    with pytest.raises(EngineMismatchError, match=what):
        check_compatible(_sidecar(), trt_version=trt_version, device_name=device, compute_capability=cc)


def test_version_compatible_engines_run_on_later_same_major():
    side = _sidecar(build_options={"version_compatible": True})
    check_compatible(side, trt_version="10.13.0", device_name="Orin", compute_capability=(8, 7))
    for later_or_earlier in ("11.1.0", "10.2.0"):
        with pytest.raises(EngineMismatchError, match="TensorRT versions differ"):
            check_compatible(side, trt_version=later_or_earlier, device_name="Orin", compute_capability=(8, 7))


def test_hardware_compatible_engines_run_on_any_ampere_plus():
    side = _sidecar(device_name="NVIDIA A10", compute_capability=(8, 6), build_options={"hardware_compatible": True})
    check_compatible(side, trt_version="10.3.0", device_name="NVIDIA H100", compute_capability=(9, 0))
    with pytest.raises(EngineMismatchError, match="GPUs differ"):
        check_compatible(side, trt_version="10.3.0", device_name="Tesla T4", compute_capability=(7, 5))
