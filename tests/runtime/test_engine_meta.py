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
    with pytest.raises(EngineMismatchError, match="TensorRT versions differ; a version-compatible engine runs only"):
        check_compatible(side, trt_version="10.2.0", device_name="Orin", compute_capability=(8, 7))


def test_version_compatible_trt10_engine_runs_on_trt11():
    """11.1 "Engine Compatibility": "engines built with TensorRT 10 work with TensorRT 11" (version-compatible);
    today's rule (same major only) refused it."""
    side = _sidecar(build_options={"version_compatible": True})
    check_compatible(side, trt_version="11.1.0", device_name="Orin", compute_capability=(8, 7))
    check_compatible(side, trt_version="11.4.1.3", device_name="Orin", compute_capability=(8, 7))


@pytest.mark.parametrize(
    ("built", "running", "ok"),
    [
        ("8.6.1", "10.3.0", True),    # support matrix: TensorRT 8 version-compatible engines run on 10
        ("8.6.1", "9.2.0", True),     # 10.16 docs: "engines built with TensorRT 8 work with TensorRT 9 and 10"
        ("8.6.1", "11.1.0", False),   # "a TensorRT 8 engine cannot run with a TensorRT 11 runtime"
        ("8.5.2", "8.6.1", False),    # version compatibility starts at 8.6 on both sides
        ("11.1.0", "10.13.0", False),  # never onto an older runtime
        ("11.0.0", "11.1.0", True),
    ],
)
def test_version_compatible_cross_major_rules(built, running, ok):
    side = _sidecar(trt_version=built, build_options={"version_compatible": True})
    if ok:
        check_compatible(side, trt_version=running, device_name="Orin", compute_capability=(8, 7))
    else:
        with pytest.raises(EngineMismatchError, match="TensorRT versions differ; "):
            check_compatible(side, trt_version=running, device_name="Orin", compute_capability=(8, 7))


def test_version_refusal_is_one_line_naming_versions_and_fix():
    plain = _sidecar()  # 10.3.0, not version-compatible
    with pytest.raises(EngineMismatchError) as e:
        check_compatible(plain, trt_version="11.1.0", device_name="Orin", compute_capability=(8, 7))
    msg = str(e.value)
    assert "\n" not in msg and "TensorRT 10.3.0" in msg and "TensorRT 11.1.0" in msg
    assert "the engine was not built version-compatible" in msg
    assert "build with --version-compatible on TensorRT 10.3.0" in msg  # the fix that would have worked
    old8 = _sidecar(trt_version="8.6.1", build_options={"version_compatible": True})
    with pytest.raises(EngineMismatchError) as e:
        check_compatible(old8, trt_version="11.1.0", device_name="Orin", compute_capability=(8, 7))
    msg = str(e.value)
    assert "cross major versions only 8 -> 9, 8 -> 10, 10 -> 11" in msg
    assert "--version-compatible" not in msg and msg.endswith("rebuild with retinaedge build on this machine")


def test_dla_core_from_build_options():
    assert _sidecar().dla_core is None  # the build wrote "dla_core": None
    assert _sidecar(build_options={"dla_core": 1}).dla_core == 1
    assert _sidecar(build_options={}).dla_core is None  # a sidecar from before the key: GPU engine
    back = EngineSidecar.from_json(_sidecar(build_options={"dla_core": 0}).to_json())
    assert back.dla_core == 0
    for bad in (-1, True, "0"):
        with pytest.raises(ModelError, match="dla_core"):
            _ = _sidecar(build_options={"dla_core": bad}).dla_core


def test_hardware_compatible_engines_run_on_any_ampere_plus():
    side = _sidecar(device_name="NVIDIA A10", compute_capability=(8, 6), build_options={"hardware_compatible": True})
    check_compatible(side, trt_version="10.3.0", device_name="NVIDIA H100", compute_capability=(9, 0))
    with pytest.raises(EngineMismatchError, match="GPUs differ"):
        check_compatible(side, trt_version="10.3.0", device_name="Tesla T4", compute_capability=(7, 5))
