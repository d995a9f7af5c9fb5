"""`build_engine` driven on CPU through a recording fake of TensorRT's builder (real binding names per version).

What these show: which flags, profiles and settings the builder applies on each path, that parse errors and
precision mismatches fail the build, that nothing is written on failure, and that on the 11.x namespace none of
the names TRT 11 removed is touched (the fake raises AttributeError for them). What they cannot show: that
TensorRT accepts the build -- that is the `tensorrt`-marked tests' job (test_engines_gpu.py, GPU hosts only).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_trt import FP16, FP32, INT8, INT32, HostCuda, fake_tensorrt

from retinaedge.engines.build import (
    BuildConfig,
    build_engine,
    check_layer_precisions,
    layer_precision_shares,
    onnx_kind_of,
)
from retinaedge.runtime.engine_meta import EngineSidecar
from retinaedge.runtime.errors import EngineBuildError, InputError, MissingDependencyError
from retinaedge.runtime.io import sha256_file
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec

SPEC = DetectorSpec(
    class_names=("a", "b"), input_height=64, input_width=64,
    anchors=AnchorSpec(strides=(16, 32), sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0,)),
)


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    for name in ("model.fp32.onnx", "model.fp16.onnx", "model.int8.onnx"):
        (d / name).write_bytes(b"onnx bytes of " + name.encode())
    SPEC.save(d / "spec.json")
    return d


def _build(export_dir: Path, onnx: str, flavour: str, *, fake: dict | None = None, calibrator=None, **cfg):
    trt, rec = fake_tensorrt(flavour, **(fake or {}))
    config = BuildConfig(onnx=export_dir / onnx, out_dir=export_dir.parent / "engines", **cfg)
    cuda = HostCuda()
    result = build_engine(config, trt_module=trt, cuda=cuda, calibrator=calibrator)
    return result, rec, cuda


def _no_outputs(export_dir: Path) -> bool:
    out = export_dir.parent / "engines"
    return not out.exists() or not any(out.glob("model.*"))


@pytest.mark.parametrize("flavour", ["8.6", "10.3", "11.1"])
def test_fp32_build_writes_raw_plan_and_sidecar(export_dir, flavour):
    result, rec, cuda = _build(export_dir, "model.fp32.onnx", flavour)
    assert result.engine_path == export_dir.parent / "engines" / "model.fp32.engine"
    assert result.engine_path.read_bytes() == b"PLAN-BYTES"  # raw plan, no header (trtexec/DeepStream load it)
    side = EngineSidecar.load(result.sidecar_path)
    assert side == result.sidecar
    assert side.precision == "fp32" and side.trt_version.startswith(flavour)
    assert (side.device_name, side.compute_capability) == ("Fake GPU", (8, 7))
    assert side.onnx_sha256 == sha256_file(export_dir / "model.fp32.onnx")
    assert DetectorSpec.from_dict(side.spec) == SPEC
    assert side.layer_precisions == {"fp32": 1.0, "fp16": 0.0, "int8": 0.0, "other": 0.0} and side.num_layers == 2
    assert rec.flags == [] and rec.plugins_initialised == 1 and rec.parsed == str(export_dir / "model.fp32.onnx")
    assert rec.pool_limits == {"WORKSPACE": 2048 << 20}
    assert rec.attributes["profiling_verbosity"].name == "DETAILED"
    assert rec.profiles == [{"images": ((1, 3, 64, 64), (1, 3, 64, 64), (8, 3, 64, 64))}]
    assert side.build_options["batch"] == [1, 1, 8]
    # 8.6 needs EXPLICIT_BATCH (bit 0); 10.3/11.1 build strongly typed (STRONGLY_TYPED is bit 1 in 10.3, 0 in 11.1)
    expected = {"8.6": 1 << 0, "10.3": 1 << 1, "11.1": 1 << 0}[flavour]
    assert rec.network_flags == expected
    assert side.build_options["path"] == ("weakly-typed" if flavour == "8.6" else "strongly-typed")
    assert cuda.opened == cuda.closed == 1


def test_weak_fp16_sets_the_flag_and_checks_layers(export_dir):
    result, rec, _ = _build(export_dir, "model.fp32.onnx", "10.3", precision="fp16",
                            fake={"layers": [FP32, FP16, FP16, FP16]})
    assert rec.flags == ["FP16"] and rec.network_flags == 0
    assert result.sidecar.precision == "fp16" and result.sidecar.layer_precisions["fp16"] == 0.75
    assert result.engine_path.name == "model.fp16.engine"


def test_fp16_requested_but_fp32_layers_is_refused_and_nothing_written(export_dir):
    with pytest.raises(EngineBuildError, match="fp16 engine was requested but TensorRT built layers fp32 100%"):
        _build(export_dir, "model.fp32.onnx", "10.3", precision="fp16", fake={"layers": [FP32, FP32]})
    assert _no_outputs(export_dir)


def test_trt11_refuses_fp16_from_fp32_onnx_before_building(export_dir):
    with pytest.raises(EngineBuildError, match=r"model\.fp16\.onnx"):
        _build(export_dir, "model.fp32.onnx", "11.1", precision="fp16")
    assert _no_outputs(export_dir)


@pytest.mark.parametrize(("onnx", "layers"), [("model.fp16.onnx", [FP32, FP16]), ("model.int8.onnx", [FP32, INT8])])
def test_trt11_strongly_typed_builds_touch_no_removed_name(export_dir, onnx, layers):
    # the 11.1 fake has no BuilderFlag.FP16/INT8, no int8_calibrator, no set_calibration_profile, no
    # EXPLICIT_BATCH: any access raises AttributeError, so passing builds prove they are never reached
    result, rec, _ = _build(export_dir, onnx, "11.1", fake={"layers": layers, "qdq": onnx.endswith("int8.onnx")})
    assert rec.flags == [] and "int8_calibrator" not in rec.attributes
    assert result.path.name == "strongly-typed"


def test_parse_errors_are_collected(export_dir):
    errors = ("In node 3 (importPlugin): EfficientNMS_TRT not found", "In node 7: unsupported Mod")
    with pytest.raises(EngineBuildError) as e:
        _build(export_dir, "model.fp32.onnx", "10.3", fake={"parse_errors": errors})
    assert e.value.errors == errors
    msg = str(e.value)
    assert "EfficientNMS_TRT not found" in msg and "(+1 more)" in msg and "\n" not in msg
    assert _no_outputs(export_dir)


def test_weak_int8_needs_calibration_data(export_dir):
    with pytest.raises(EngineBuildError, match="--calib-data"):
        _build(export_dir, "model.fp32.onnx", "10.3", precision="int8")


class _Calibrator:
    """Stands in for an IInt8EntropyCalibrator2: three batches, no cache."""

    def __init__(self) -> None:
        self.left = 3
        self.written: bytes | None = None

    def get_batch_size(self) -> int:
        return 4

    def get_batch(self, names: list[str]) -> list[int]:
        self.left -= 1
        return [1234] if self.left >= 0 else []

    def read_calibration_cache(self) -> bytes | None:
        return None

    def write_calibration_cache(self, cache: bytes) -> None:
        self.written = cache


@pytest.mark.parametrize("flavour", ["8.6", "10.3"])
def test_weak_int8_with_calibrator(export_dir, flavour):
    cal = _Calibrator()
    result, rec, _ = _build(export_dir, "model.fp32.onnx", flavour, precision="int8", calibrator=cal,
                            batch=(1, 2, 8), fake={"layers": [FP32, INT8, INT8, FP16]})
    assert rec.flags == ["FP16", "INT8"] and rec.attributes["int8_calibrator"] is cal
    assert rec.calibration_batches == 3 and cal.written
    # calibration runs at the calibration profile's shape: the calibrator's batch
    assert rec.calibration_profile == {"images": ((4, 3, 64, 64),) * 3}
    assert result.sidecar.precision == "int8" and result.sidecar.layer_precisions["int8"] == 0.5


def test_qdq_on_weak_trt_sets_int8_without_calibrator(export_dir):
    result, rec, _ = _build(export_dir, "model.int8.onnx", "8.6", fake={"layers": [FP32, INT8], "qdq": True})
    assert rec.flags == ["FP16", "INT8"] and "int8_calibrator" not in rec.attributes
    assert result.sidecar.build_options["calibrator"] is False


def test_network_without_qdq_named_int8_is_refused(export_dir):
    with pytest.raises(EngineBuildError, match="has no Q/DQ layers"):
        _build(export_dir, "model.int8.onnx", "10.3", fake={"layers": [INT8], "qdq": False})


def test_calibrator_on_a_path_without_calibration_is_refused(export_dir):
    with pytest.raises(EngineBuildError, match="takes none"):
        _build(export_dir, "model.fp32.onnx", "10.3", calibrator=_Calibrator())


def test_dla(export_dir):
    with pytest.raises(EngineBuildError, match="has 0 DLA cores"):
        _build(export_dir, "model.fp16.onnx", "10.3", dla_core=0, fake={"layers": [FP16]})
    with pytest.raises(EngineBuildError, match="needs an fp16 or int8 engine"):
        _build(export_dir, "model.fp32.onnx", "10.3", dla_core=0, fake={"num_dla_cores": 2})
    result, rec, _ = _build(export_dir, "model.fp16.onnx", "10.3", dla_core=1,
                            fake={"layers": [FP16], "num_dla_cores": 2})
    assert rec.attributes["default_device_type"].name == "DLA" and rec.attributes["DLA_core"] == 1
    assert "GPU_FALLBACK" in rec.flags and result.sidecar.build_options["dla_core"] == 1


def test_compatibility_flags(export_dir):
    result, rec, _ = _build(export_dir, "model.fp32.onnx", "10.3", version_compatible=True, hardware_compatible=True)
    assert "VERSION_COMPATIBLE" in rec.flags
    assert rec.attributes["hardware_compatibility_level"].name == "AMPERE_PLUS"
    assert rec.host_code_allowed  # a version-compatible plan embeds its lean runtime
    assert result.sidecar.version_compatible and result.sidecar.hardware_compatible


def test_timing_cache_is_saved_then_loaded(export_dir, tmp_path):
    cache = tmp_path / "timing.cache"
    first, rec1, _ = _build(export_dir, "model.fp32.onnx", "10.3", timing_cache=cache)
    assert rec1.timing_cache_in == b"" and cache.read_bytes() == b"|timed"
    assert first.sidecar.build_options["timing_cache_state"] == "new"
    second, rec2, _ = _build(export_dir, "model.fp32.onnx", "10.3", timing_cache=cache,
                             require_timing_cache_hit=True)
    assert rec2.timing_cache_in == b"|timed" and "ERROR_ON_TIMING_CACHE_MISS" in rec2.flags
    assert second.sidecar.build_options["timing_cache_state"] == "loaded"
    with pytest.raises(EngineBuildError, match="ERROR_ON_TIMING_CACHE_MISS"):
        _build(export_dir, "model.fp32.onnx", "8.6", timing_cache=cache, require_timing_cache_hit=True)


def test_static_batch_onnx(export_dir):
    fake = {"input_shape": (2, 3, 64, 64)}
    result, rec, _ = _build(export_dir, "model.fp32.onnx", "10.3", fake=fake)
    assert rec.profiles == [] and result.sidecar.build_options["batch"] == [2, 2, 2]
    with pytest.raises(EngineBuildError, match="static batch of 2"):
        _build(export_dir, "model.fp32.onnx", "10.3", fake=fake, batch=(1, 4, 8))


def test_failed_build_and_missing_spec(export_dir):
    with pytest.raises(EngineBuildError, match="failed to build"):
        _build(export_dir, "model.fp32.onnx", "10.3", fake={"build_ok": False})
    (export_dir / "spec.json").unlink()
    with pytest.raises(InputError, match=r"spec\.json"):
        _build(export_dir, "model.fp32.onnx", "10.3")


def test_without_tensorrt_the_error_is_the_install_hint(export_dir, tmp_path):
    pytest.importorskip("pytest")  # always present; the real check is that tensorrt is absent here
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed on this host")
    with pytest.raises(MissingDependencyError, match="install TensorRT"):
        build_engine(BuildConfig(onnx=export_dir / "model.fp32.onnx", out_dir=tmp_path / "e"))


def test_build_config_validation(tmp_path):
    with pytest.raises(InputError, match="min:opt:max"):
        BuildConfig(onnx=tmp_path / "m.onnx", out_dir=tmp_path, batch=(4, 2, 8))
    with pytest.raises(InputError, match="precision='bf16'"):
        BuildConfig(onnx=tmp_path / "m.onnx", out_dir=tmp_path, precision="bf16")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="workspace_mb"):
        BuildConfig(onnx=tmp_path / "m.onnx", out_dir=tmp_path, workspace_mb=0)


def test_onnx_kind_from_names(tmp_path):
    assert onnx_kind_of(Path("x/model.fp16.onnx")) == "fp16"
    assert onnx_kind_of(Path("x/model.int8.onnx")) == "qdq"
    assert onnx_kind_of(Path("x/anything.onnx"), "fp32") == "fp32"
    with pytest.raises(InputError, match="asymmetric"):
        onnx_kind_of(Path("x/model.int8-cpu.onnx"))


def test_onnx_kind_from_content(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def save(name: str, nodes, inits) -> Path:
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
        p = tmp_path / name
        onnx.save(helper.make_model(graph), str(p))
        return p

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = helper.make_tensor("z", TensorProto.INT8, [], [0])
    qdq = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
           helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    assert onnx_kind_of(save("a.onnx", qdq, [scale, zp])) == "qdq"
    half = helper.make_tensor("h", TensorProto.FLOAT16, [1], [1.0])
    assert onnx_kind_of(save("b.onnx", [helper.make_node("Identity", ["x"], ["y"])], [half])) == "fp16"
    assert onnx_kind_of(save("c.onnx", [helper.make_node("Identity", ["x"], ["y"])], [])) == "fp32"


# ---- engine inspector parsing -------------------------------------------------------------------------
# Layers as TensorRT's inspector reports them with DETAILED verbosity: trimmed from trt-engine-explorer's
# examples/pytorch/resnet/A100/qat/resnet-qat.onnx.engine.graph.json (NVIDIA/TensorRT v10.13.0).
TREX_QAT = {"Layers": [
    {"Name": "QuantizeLinear_2", "LayerType": "Reformat",
     "Inputs": [{"Name": "input.1", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                 "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "onnx::DequantizeLinear_125", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                  "Format/Datatype": "Row major Int8 format"}]},
    {"Name": "conv1.weight + QuantizeLinear_7 + Conv_9 + MaxPool_12", "LayerType": "ConvActPool",
     "Inputs": [{"Name": "onnx::DequantizeLinear_125", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                 "Format/Datatype": "Row major Int8 format"}],
     "Outputs": [{"Name": "onnx::DequantizeLinear_140", "Location": "Device", "Dimensions": [32, 64, 56, 56],
                  "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
    {"Name": "fc", "LayerType": "CaskGemmConvolution",
     "Inputs": [{"Name": "x", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
     "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}]},
    {"Name": "head", "LayerType": "Convolution",
     "Inputs": [{"Name": "z", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
     "Outputs": []},
], "Bindings": ["input.1", "output"]}


def test_layer_precision_shares_from_inspector_json():
    shares, n = layer_precision_shares(json.dumps(TREX_QAT))
    assert n == 4 and shares == {"fp32": 0.25, "fp16": 0.25, "int8": 0.5, "other": 0.0}
    shares, n = layer_precision_shares(json.dumps({"Layers": [
        {"Inputs": [{"Format/Datatype": INT32}]}, {"Inputs": [], "Outputs": [{"Format/Datatype": FP16}]}]}))
    assert shares == {"fp32": 0.0, "fp16": 0.5, "int8": 0.0, "other": 0.5}


def test_layer_names_only_cannot_verify():
    # ProfilingVerbosity.LAYER_NAMES_ONLY gives names, not dicts
    with pytest.raises(EngineBuildError, match="DETAILED"):
        layer_precision_shares(json.dumps({"Layers": ["conv1", "relu1"]}))
    with pytest.raises(EngineBuildError, match="not the expected JSON"):
        layer_precision_shares("Layers: conv1")


@pytest.mark.parametrize(
    ("precision", "shares", "ok"),
    [
        ("fp32", {"fp32": 1.0, "fp16": 0.0, "int8": 0.0}, True),
        ("fp32", {"fp32": 0.9, "fp16": 0.1, "int8": 0.0}, False),
        ("fp16", {"fp32": 0.2, "fp16": 0.8, "int8": 0.0}, True),
        ("fp16", {"fp32": 1.0, "fp16": 0.0, "int8": 0.0}, False),
        ("fp16", {"fp32": 0.2, "fp16": 0.7, "int8": 0.1}, False),
        ("int8", {"fp32": 0.2, "fp16": 0.3, "int8": 0.5}, True),
        ("int8", {"fp32": 0.2, "fp16": 0.8, "int8": 0.0}, False),
    ],
)
def test_check_layer_precisions(precision, shares, ok):
    if ok:
        check_layer_precisions(precision, shares)
    else:
        with pytest.raises(EngineBuildError, match=f"a {precision} engine was requested"):
            check_layer_precisions(precision, shares)
