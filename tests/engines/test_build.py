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

from retinaedge.engines.build import BuildConfig, build_engine, onnx_kind_of
from retinaedge.runtime.engine_meta import EngineSidecar
from retinaedge.runtime.errors import EngineBuildError, InputError, MissingDependencyError
from retinaedge.runtime.io import sha256_file
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from tests.support.fake_trt import DLA_LAYERS, FP16, FP32, INT8, UINT8, HostCuda, fake_tensorrt

SPEC = DetectorSpec(
    class_names=("a", "b"), input_height=64, input_width=64,
    anchors=AnchorSpec(strides=(16, 32), sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0,)),
)


def write_onnx(path: Path, precision: str, *, nms: str = "efficient", keep_high: dict | None = None,
               target: str | None = None) -> Path:
    """A one-node ONNX carrying the metadata ``retinaedge export`` writes (what `describe_onnx` reads); the fake
    TensorRT never parses it, so its graph does not matter."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    meta = {"retinaedge.precision": precision, "retinaedge.nms": nms}
    if keep_high is not None:
        meta["retinaedge.keep_high"] = json.dumps(keep_high)
    if target is not None:
        meta["retinaedge.target"] = target
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    return path


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    for precision in ("fp32", "fp16", "int8"):
        write_onnx(d / f"model.{precision}.onnx", precision)
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
    # 8.6 needs EXPLICIT_BATCH (bit 0); 10.3 builds strongly typed with STRONGLY_TYPED (bit 1); 11.1 is strongly
    # typed without it: the flag is "deprecated and ignored" there (include/NvInfer.h at v11.1), so it is not set
    expected = {"8.6": 1 << 0, "10.3": 1 << 1, "11.1": 0}[flavour]
    assert rec.network_flags == expected
    assert side.build_options["path"] == ("weakly-typed" if flavour == "8.6" else "strongly-typed")
    assert cuda.opened == cuda.closed == 1


def test_weak_fp16_sets_the_flag_and_checks_layers(export_dir):
    result, rec, _ = _build(export_dir, "model.fp32.onnx", "10.3", precision="fp16",
                            fake={"layers": [FP32, FP16, FP16, FP16]})
    # FP16 plus the FP32 tail's constraints (the plugin layer pinned: item 5)
    assert rec.flags == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and rec.network_flags == 0
    assert result.sidecar.precision == "fp16" and result.sidecar.layer_precisions["fp16"] == 0.75
    assert result.engine_path.name == "model.fp16.engine"


def test_strong_fp16_with_fp32_layers_only_is_refused_and_nothing_written(export_dir):
    with pytest.raises(EngineBuildError, match=r"fp16 engine was requested .* built layers fp32 100%"):
        _build(export_dir, "model.fp16.onnx", "10.3", fake={"layers": [FP32, FP32]})
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
    assert rec.flags == ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"] and rec.attributes["int8_calibrator"] is cal
    assert rec.calibration_batches == 3 and cal.written
    # calibration runs at the calibration profile's shape: the calibrator's batch
    assert rec.calibration_profile == {"images": ((4, 3, 64, 64),) * 3}
    assert result.sidecar.precision == "int8" and result.sidecar.layer_precisions["int8"] == 0.5


def test_qdq_on_weak_trt_sets_int8_without_calibrator(export_dir):
    result, rec, _ = _build(export_dir, "model.int8.onnx", "8.6", fake={"layers": [FP32, INT8], "qdq": True})
    assert rec.flags == ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"] and "int8_calibrator" not in rec.attributes
    assert result.sidecar.build_options["calibrator"] is False


def test_network_without_qdq_named_int8_is_refused(export_dir):
    with pytest.raises(EngineBuildError, match="has no Q/DQ layers"):
        _build(export_dir, "model.int8.onnx", "10.3", fake={"layers": [INT8], "qdq": False})


def test_calibrator_on_a_path_without_calibration_is_refused(export_dir):
    with pytest.raises(EngineBuildError, match="takes none"):
        _build(export_dir, "model.fp32.onnx", "10.3", calibrator=_Calibrator())


def test_dla(export_dir):
    with pytest.raises(EngineBuildError, match="has 0 DLA cores"):
        _build(export_dir, "model.fp16.onnx", "10.3", dla_core=0, batch=(1, 1, 1), fake={"layers": [FP16]})
    with pytest.raises(EngineBuildError, match="needs an fp16 or int8 engine"):
        _build(export_dir, "model.fp32.onnx", "10.3", dla_core=0, fake={"num_dla_cores": 2})
    result, rec, _ = _build(export_dir, "model.fp16.onnx", "10.3", dla_core=1, batch=(2, 2, 2),
                            fake={"layers": [FP16], "num_dla_cores": 2})
    assert rec.attributes["default_device_type"].name == "DLA" and rec.attributes["DLA_core"] == 1
    assert "GPU_FALLBACK" in rec.flags and result.sidecar.build_options["dla_core"] == 1


def test_compatibility_flags(export_dir):
    write_onnx(export_dir / "model.fp32.onnx", "fp32", nms="onnx")  # EfficientNMS cannot be version-compatible
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
    # the content is read by runtime.onnxinfo.describe_onnx (issue 12 item 1); metadata-less graphs by their ops
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
    assert onnx_kind_of(save("a.onnx", qdq, [scale, zp]), spec=SPEC) == "qdq"
    half = helper.make_tensor("h", TensorProto.FLOAT16, [1], [1.0])
    assert onnx_kind_of(save("b.onnx", [helper.make_node("Identity", ["x"], ["y"])], [half]), spec=SPEC) == "fp16"
    assert onnx_kind_of(save("c.onnx", [helper.make_node("Identity", ["x"], ["y"])], []), spec=SPEC) == "fp32"
    # export's metadata wins where present: a mixed INT8 file is Q/DQ, the CPU INT8 file is refused
    mixed = write_onnx(tmp_path / "model.int8-mixed.onnx", "int8", keep_high={"nodes": ["a"], "dtype": "fp16"})
    assert onnx_kind_of(mixed, spec=SPEC) == "qdq"
    with pytest.raises(InputError, match="target='cpu'"):
        onnx_kind_of(write_onnx(tmp_path / "cpu.onnx", "int8", target="cpu"), spec=SPEC)


# ---- issue 13, build side: each test below fails on the code before it ---------------------------------------
def test_item1_trt11_inspector_shape_is_read(export_dir):
    # the 11.1 fake writes DataType + Format per tensor and I/O Tensors (fake_trt.split_format, from the 11.x
    # migration guide); reading only "Format/Datatype" made every layer "other" and refused every FP16 build
    result, _, _ = _build(export_dir, "model.fp16.onnx", "11.1", fake={"layers": [FP32, FP16, FP16, FP16]})
    side = result.sidecar
    assert side.layer_precisions == {"fp32": 0.25, "fp16": 0.75, "int8": 0.0, "other": 0.0}
    assert side.build_options["inspector_schema"] == "11.x"


def _uint8_input_reformat() -> dict:
    # the network input (uint8, the spec's default) reformatted to FP32 for the first convolution: the first layer
    # of the TREx fp16 example (tests/engines/data/trex-resnet-fp16.graph.json) with the input format that TREx's
    # trex/activations.py (v10.3.0) lists for UInt8
    return {"Name": "Reformatting CopyNode for Input Tensor 0 to conv", "LayerType": "Reformat",
            "Inputs": [{"Name": "images", "Location": "Device", "Dimensions": [1, 3, 64, 64],
                        "Format/Datatype": UINT8}],
            "Outputs": [{"Name": "Reformatted Input Tensor 0 to conv", "Location": "Device",
                         "Dimensions": [1, 3, 64, 64], "Format/Datatype": FP32}]}


@pytest.mark.parametrize("flavour", ["8.6", "10.3", "11.1"])
def test_item2_uint8_input_is_not_int8(export_dir, flavour):
    # before: "INT8" in "ROW MAJOR LINEAR UINT8 FORMAT" counted the input as INT8 and refused this FP32 build
    result, _, _ = _build(export_dir, "model.fp32.onnx", flavour, fake={"layers": [_uint8_input_reformat(), FP32]})
    assert result.sidecar.layer_precisions["fp32"] == 1.0
    assert result.sidecar.build_options["layers_excluded"] == 1


def test_item2_an_int8_engine_with_only_a_uint8_input_is_refused(export_dir):
    with pytest.raises(EngineBuildError, match="Q/DQ ONNX must give INT8 layers"):
        _build(export_dir, "model.int8.onnx", "10.3", fake={"layers": [_uint8_input_reformat(), FP32], "qdq": True})


def test_item3_weak_fp16_all_fp32_warns_not_fails(export_dir):
    result, _, _ = _build(export_dir, "model.fp32.onnx", "10.3", precision="fp16", fake={"layers": [FP32, FP32]})
    assert result.sidecar.precision == "fp16" and result.engine_path.is_file()
    assert any("allows FP16 but does not force it" in w for w in result.warnings)
    assert result.sidecar.build_options["warnings"] == list(result.warnings)


def test_item4_dla_refuses_a_dynamic_profile(export_dir):
    with pytest.raises(EngineBuildError, match=r"dla_core=0 needs a fixed batch profile .* 1:1:8; pass --batch 1"):
        _build(export_dir, "model.fp16.onnx", "10.3", dla_core=0, fake={"layers": [FP16], "num_dla_cores": 2})
    assert _no_outputs(export_dir)


def test_item4_dla_share_from_the_inspector(export_dir):
    result, _, _ = _build(export_dir, "model.fp16.onnx", "10.3", dla_core=0, batch=(1, 1, 1),
                          fake={"layers": DLA_LAYERS, "num_dla_cores": 2})
    assert result.sidecar.build_options["dla_layer_share"] == 0.5 and result.sidecar.build_options["dla_core"] == 0
    assert any("1 of 2 layers (50%) on the DLA" in n for n in result.notes)


# a RetinaNet tail as onnx-tensorrt names it (a layer per ONNX node, named after it): the names and wiring of
# tests/support/tiny_onnx.py / export/surgery.py -- heads' Concat, the clamp Min writing box_deltas, the plugin
RETINA_NET = [
    ("conv1", "CONVOLUTION", ["images"], [("feat", "FLOAT")]),
    ("cls_head", "CONVOLUTION", ["feat"], [("cls_raw", "FLOAT")]),
    ("box_head", "CONVOLUTION", ["feat"], [("box_raw", "FLOAT")]),
    ("cls_logits/Concat", "CONCATENATION", ["cls_raw"], [("cls_logits", "FLOAT")]),
    ("box_deltas/Min", "ELEMENTWISE", ["box_raw"], [("box_deltas", "FLOAT")]),
    ("efficient_nms", "PLUGIN_V2", ["box_deltas", "cls_logits"],
     [("num_detections", "INT32"), ("detection_boxes", "FLOAT"), ("detection_scores", "FLOAT"),
      ("detection_classes", "INT32")]),
]


@pytest.mark.parametrize("flavour", ["8.6", "10.3"])
def test_item5_weak_fp16_pins_the_tail_to_fp32(export_dir, flavour):
    _, rec, _ = _build(export_dir, "model.fp32.onnx", flavour, precision="fp16",
                       fake={"layers": [FP16, FP32], "network_layers": RETINA_NET})
    assert rec.layer_precisions == {"box_deltas/Min": "FLOAT", "efficient_nms": "FLOAT"}
    assert rec.output_types == {("box_deltas/Min", 0): "FLOAT", ("efficient_nms", 1): "FLOAT",
                                ("efficient_nms", 2): "FLOAT"}  # the int32 outputs keep their type
    assert rec.flags == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]


def test_item5_strongly_typed_sets_no_layer_precision(export_dir):
    _, rec, _ = _build(export_dir, "model.fp16.onnx", "10.3", fake={"layers": [FP16], "network_layers": RETINA_NET})
    assert rec.layer_precisions == {} and "OBEY_PRECISION_CONSTRAINTS" not in rec.flags


def test_item5_weak_int8_applies_the_kept_high_set(export_dir):
    # issue 11: model.int8-mixed.onnx says which ONNX nodes stay FP16; onnx-tensorrt names a node's layers
    # <node>, <node>_1, ... (ImporterContext::registerLayer / generateUniqueName)
    keep = {"nodes": ["cls_head", "box_head", "gone", "box_deltas/Min"], "dtype": "fp16"}
    write_onnx(export_dir / "model.int8-mixed.onnx", "int8", keep_high=keep)
    qdq = [("q", "QUANTIZE", ["images"], [("iq", "INT8")]), ("dq", "DEQUANTIZE", ["iq"], [("idq", "FLOAT")])]
    net = [*qdq, *RETINA_NET[:2], ("box_head", "CONVOLUTION", ["feat"], [("b0", "FLOAT")]),
           ("box_head_1", "ELEMENTWISE", ["b0"], [("box_raw", "FLOAT")]), *RETINA_NET[3:]]
    result, rec, _ = _build(export_dir, "model.int8-mixed.onnx", "8.6",
                            fake={"layers": [INT8, FP16], "network_layers": net})
    assert {k: v for k, v in rec.layer_precisions.items() if "head" in k} == {
        "cls_head": "HALF", "box_head": "HALF", "box_head_1": "HALF"}
    assert rec.layer_precisions["box_deltas/Min"] == "FLOAT"  # in the FP32 tail: stays FP32
    assert result.sidecar.build_options["precision_constraints"]["keep_high"] == 3
    assert any("1 of 4 kept-high ONNX nodes match no" in w for w in result.warnings)


def test_item6_efficient_nms_on_trt11_warns_with_the_fix(export_dir):
    result, _, _ = _build(export_dir, "model.fp16.onnx", "11.1", fake={"layers": [FP16]})
    assert any("deprecated since TensorRT 10.12" in w and "--nms onnx" in w for w in result.warnings)
    write_onnx(export_dir / "model.fp16.onnx", "fp16", nms="onnx")
    result, _, _ = _build(export_dir, "model.fp16.onnx", "11.1", fake={"layers": [FP16]})
    assert not result.warnings and result.sidecar.build_options["nms"] == "onnx"


def test_item7_corrupt_timing_cache_is_reported_and_rebuilt(export_dir, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00garbage, not a TensorRT timing cache")
    result, rec, _ = _build(export_dir, "model.fp32.onnx", "10.3", timing_cache=cache)
    assert rec.timing_cache_in == b"" and cache.read_bytes() == b"|timed"  # rebuilt, then written over it
    assert result.sidecar.build_options["timing_cache_state"] == "corrupt, rebuilt"
    assert any("is not a TensorRT timing cache" in w and str(cache) in w for w in result.warnings)
    cache.write_bytes(b"garbage")
    with pytest.raises(EngineBuildError, match="corrupt, so require_timing_cache_hit=True cannot be met"):
        _build(export_dir, "model.fp32.onnx", "10.3", timing_cache=cache, require_timing_cache_hit=True)


def test_item8_version_compatible_refuses_efficient_nms(export_dir):
    with pytest.raises(EngineBuildError, match=r"version_compatible=True with nms='efficient'.*--nms onnx"):
        _build(export_dir, "model.fp32.onnx", "10.3", version_compatible=True)
    assert _no_outputs(export_dir)


def test_item9_trt11_without_the_strongly_typed_flag_builds(export_dir):
    import enum

    trt, rec = fake_tensorrt("11.1", layers=[FP16])
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", ["PREFER_AOT_PYTHON_PLUGINS"])
    config = BuildConfig(onnx=export_dir / "model.fp16.onnx", out_dir=export_dir.parent / "engines")
    result = build_engine(config, trt_module=trt, cuda=HostCuda())
    assert result.path.name == "strongly-typed" and rec.network_flags == 0
