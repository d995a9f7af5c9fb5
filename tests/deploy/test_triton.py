"""deploy/triton.py: Triton model repositories, checked by parsing config.pbtxt into Triton's own
`ModelConfig` protobuf (tritonclient; unknown fields are rejected) and comparing every tensor against the
ONNX graph read with the onnx library, or against the engine sidecar's spec.

The ONNX models are tiny graphs built here with onnx.helper in the three export layouts (EfficientNMS_TRT
node, ONNX NonMaxSuppression, raw heads) with the export's metadata; the engine is a FIXTURE: a few bytes
plus a sidecar JSON with the documented keys, not a claim of a real TensorRT build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from retinaedge.cli import main
from retinaedge.deploy.triton import TritonConfig, load_deploy_model, spec_io, write_triton_repo
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec, PostProcess
from tests.support.engine_fixture import write_engine_fixture

TRITON_OF_ONNX = {
    TensorProto.FLOAT: model_config_pb2.TYPE_FP32,
    TensorProto.UINT8: model_config_pb2.TYPE_UINT8,
    TensorProto.INT32: model_config_pb2.TYPE_INT32,
    TensorProto.INT64: model_config_pb2.TYPE_INT64,
}


def tiny_spec(**changes: object) -> DetectorSpec:
    """64x64 input, 2 levels (strides 32, 64), 1 anchor per cell: N = 2*2 + 1*1 = 5 anchors, 2 classes."""
    spec = DetectorSpec(
        class_names=("cat", "dog"),
        input_height=64,
        input_width=64,
        anchors=AnchorSpec(strides=(32, 64), sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0,)),
        postprocess=PostProcess(max_detections=7),
    )
    return spec.replace(**changes) if changes else spec


def build_onnx(path: Path, spec: DetectorSpec, nms: str, *, target: str = "tensorrt", precision: str = "fp32") -> Path:
    """A tiny graph with the export's IO layout for ``nms`` and its metadata_props."""
    n, c, k = spec.num_anchors, spec.num_classes, spec.postprocess.max_detections
    io = spec.io
    in_type = TensorProto.UINT8 if spec.input_dtype == "uint8" else TensorProto.FLOAT
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, n * 4)).astype(np.float32), "w_box"),
        numpy_helper.from_array(rng.standard_normal((3, n * c)).astype(np.float32), "w_cls"),
        numpy_helper.from_array(np.array([-1, n, 4], dtype=np.int64), "shape_box"),
        numpy_helper.from_array(np.array([-1, n, c], dtype=np.int64), "shape_cls"),
    ]
    nodes = [
        helper.make_node("Cast", [io.input], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_box"], ["box_flat"]),
        helper.make_node("MatMul", ["pooled", "w_cls"], ["cls_flat"]),
    ]
    if nms == "efficient":
        nodes += [
            helper.make_node("Reshape", ["box_flat", "shape_box"], [io.box_deltas]),
            helper.make_node("Reshape", ["cls_flat", "shape_cls"], [io.cls_logits]),
            helper.make_node(
                "EfficientNMS_TRT",
                [io.box_deltas, io.cls_logits, "anchors"],
                [io.num_detections, io.detection_boxes, io.detection_scores, io.detection_classes],
                domain="trt.plugins",
                plugin_version="1",
                background_class=-1,
                max_output_boxes=k,
                score_threshold=spec.postprocess.score_threshold,
                iou_threshold=spec.postprocess.iou_threshold,
                score_activation=1,
                class_agnostic=0,
                box_coding=1,
            ),
        ]
        inits.append(numpy_helper.from_array(spec.anchors_cxcywh()[None], "anchors"))
        outputs = [
            helper.make_tensor_value_info(io.num_detections, TensorProto.INT32, ["batch", 1]),
            helper.make_tensor_value_info(io.detection_boxes, TensorProto.FLOAT, ["batch", k, 4]),
            helper.make_tensor_value_info(io.detection_scores, TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info(io.detection_classes, TensorProto.INT32, ["batch", k]),
        ]
    elif nms == "onnx":
        inits += [
            numpy_helper.from_array(np.array([k], dtype=np.int64), "max_out"),
            numpy_helper.from_array(np.array([spec.postprocess.iou_threshold], dtype=np.float32), "iou"),
            numpy_helper.from_array(np.array([spec.postprocess.score_threshold], dtype=np.float32), "thr"),
        ]
        nodes += [
            helper.make_node("Reshape", ["box_flat", "shape_box"], [io.boxes]),
            helper.make_node("Reshape", ["cls_flat", "shape_cls"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], [io.scores]),
            helper.make_node("Transpose", [io.scores], ["scores_t"], perm=[0, 2, 1]),
            helper.make_node(
                "NonMaxSuppression", [io.boxes, "scores_t", "max_out", "iou", "thr"], [io.selected_indices]
            ),
        ]
        outputs = [
            helper.make_tensor_value_info(io.boxes, TensorProto.FLOAT, ["batch", n, 4]),
            helper.make_tensor_value_info(io.scores, TensorProto.FLOAT, ["batch", n, c]),
            helper.make_tensor_value_info(io.selected_indices, TensorProto.INT64, ["num_selected", 3]),
        ]
    else:
        nodes += [
            helper.make_node("Reshape", ["box_flat", "shape_box"], [io.box_deltas]),
            helper.make_node("Reshape", ["cls_flat", "shape_cls"], [io.cls_logits]),
            helper.make_node("Identity", [io.box_deltas], [io.boxes]),
            helper.make_node("Sigmoid", [io.cls_logits], [io.scores]),
        ]
        outputs = [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", n, last])
            for name, last in ((io.cls_logits, c), (io.box_deltas, 4), (io.boxes, 4), (io.scores, c))
        ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(io.input, in_type, ["batch", 3, spec.input_height, spec.input_width])],
        outputs,
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("trt.plugins", 1)] if nms == "efficient" else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if nms != "efficient":
        onnx.checker.check_model(model)  # a valid graph, not just a shape declaration
    full_spec = spec.replace(nms=nms)
    helper.set_model_props(
        model,
        {
            "retinaedge.spec": full_spec.to_json(),
            "retinaedge.precision": precision,
            "retinaedge.nms": nms,
            "retinaedge.target": target,
        },
    )
    onnx.save(model, str(path))
    return path


def build_engine_fixture(folder: Path, spec: DetectorSpec, **kw: object) -> Path:
    """FIXTURE engine (tests/support/engine_fixture.py), batch profile (1, 4, 8) unless given."""
    return write_engine_fixture(folder, spec, **{"batch": (1, 4, 8), **kw})  # type: ignore[arg-type]


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt -> Triton's ModelConfig; text_format.Parse raises on any unknown field or bad enum."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def onnx_graph_io(path: Path) -> dict[str, tuple[int, list[int | str]]]:
    """Reference: name -> (ONNX elem type, dims) straight from the graph, initializers excluded."""
    m = onnx.load(str(path))
    init = {t.name for t in m.graph.initializer}
    out = {}
    for v in [*m.graph.input, *m.graph.output]:
        if v.name in init:
            continue
        t = v.type.tensor_type
        out[v.name] = (t.elem_type, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim])
    return out


def assert_matches_onnx(cfg: model_config_pb2.ModelConfig, onnx_path: Path) -> None:
    ref = onnx_graph_io(onnx_path)
    tensors = [*cfg.input, *cfg.output]
    assert sorted(t.name for t in tensors) == sorted(ref)
    for t in tensors:
        elem, dims = ref[t.name]
        assert t.data_type == TRITON_OF_ONNX[elem], t.name
        expected = dims[1:] if cfg.max_batch_size > 0 else dims
        assert list(t.dims) == [d if isinstance(d, int) else -1 for d in expected], t.name


@pytest.fixture
def spec() -> DetectorSpec:
    return tiny_spec()


# ---- TensorRT engines ------------------------------------------------------------------------------------
def test_engine_repo_from_sidecar(tmp_path: Path, spec: DetectorSpec) -> None:
    engine = build_engine_fixture(tmp_path, spec.replace(nms="efficient"))
    repo = write_triton_repo(TritonConfig(repo=tmp_path / "repo", engine=engine, instances=2))

    assert repo.config_path == tmp_path / "repo" / "retinaedge" / "config.pbtxt"
    cfg = parse_config(repo.config_path)
    assert cfg.name == "retinaedge"
    assert cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == 8  # the sidecar profile's max
    (inp,) = cfg.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", model_config_pb2.TYPE_UINT8, [3, 64, 64])
    outs = {o.name: (o.data_type, list(o.dims)) for o in cfg.output}
    assert outs == {
        "num_detections": (model_config_pb2.TYPE_INT32, [1]),
        "detection_boxes": (model_config_pb2.TYPE_FP32, [7, 4]),
        "detection_scores": (model_config_pb2.TYPE_FP32, [7]),
        "detection_classes": (model_config_pb2.TYPE_INT32, [7]),
    }
    assert all(not o.label_filename for o in cfg.output)  # not a classification output
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]  # profile opt and max
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = cfg.instance_group
    assert (group.count, group.kind) == (2, model_config_pb2.ModelInstanceGroup.KIND_GPU)

    assert repo.model_path == tmp_path / "repo" / "retinaedge" / "1" / "model.plan"
    assert repo.model_path.read_bytes() == engine.read_bytes()
    assert repo.labels_path.read_text().splitlines() == ["cat", "dog"]
    assert DetectorSpec.load(repo.spec_path) == spec.replace(nms="efficient")


def test_engine_with_its_onnx_takes_io_from_the_graph(tmp_path: Path, spec: DetectorSpec) -> None:
    onnx_path = build_onnx(tmp_path / "model.fp32.onnx", spec, "efficient")
    engine = build_engine_fixture(tmp_path, spec.replace(nms="efficient"), onnx_path=onnx_path)
    repo = write_triton_repo(
        TritonConfig(repo=tmp_path / "repo", engine=engine, onnx=onnx_path, name="det", version=3, max_batch=4)
    )
    cfg = parse_config(repo.config_path)
    assert repo.model_path == tmp_path / "repo" / "det" / "3" / "model.plan"
    assert cfg.name == "det"
    assert cfg.max_batch_size == 4
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4]  # opt 4 == max_batch 4
    assert_matches_onnx(cfg, onnx_path)


def test_engine_io_from_spec_equals_exported_graph(tmp_path: Path) -> None:
    """The sidecar-only path (spec_io) describes the same tensors the export writes, for every NMS mode."""
    for nms in ("efficient", "onnx", "none"):
        s = tiny_spec(input_dtype="float32")
        ref = onnx_graph_io(build_onnx(tmp_path / f"{nms}.onnx", s, nms))
        inputs, outputs = spec_io(s, nms)
        got = {t.name: t for t in (*inputs, *outputs)}
        assert sorted(got) == sorted(ref)
        onnx_names = {TensorProto.FLOAT: "float32", TensorProto.INT32: "int32", TensorProto.INT64: "int64"}
        for name, (elem, dims) in ref.items():
            assert got[name].dtype == onnx_names[elem], name
            assert [d if isinstance(d, int) else -1 for d in got[name].dims] == [
                d if isinstance(d, int) else -1 for d in dims
            ], name


def test_engine_nms_onnx_is_not_batchable(tmp_path: Path, spec: DetectorSpec) -> None:
    engine = build_engine_fixture(tmp_path, spec.replace(nms="onnx"))
    repo = write_triton_repo(TritonConfig(repo=tmp_path / "repo", engine=engine))
    cfg = parse_config(repo.config_path)
    assert cfg.max_batch_size == 0
    assert not cfg.HasField("dynamic_batching")
    dims = {t.name: list(t.dims) for t in [*cfg.input, *cfg.output]}
    assert dims["images"] == [-1, 3, 64, 64]
    assert dims["selected_indices"] == [-1, 3]


def test_engine_max_batch_beyond_profile_is_refused(tmp_path: Path, spec: DetectorSpec) -> None:
    engine = build_engine_fixture(tmp_path, spec.replace(nms="efficient"))
    with pytest.raises(InputError, match=r"max_batch=16 exceeds the engine's batch profile 1:4:8"):
        write_triton_repo(TritonConfig(repo=tmp_path / "repo", engine=engine, max_batch=16))


def test_engine_profile_without_batch_one_is_refused(tmp_path: Path, spec: DetectorSpec) -> None:
    engine = build_engine_fixture(tmp_path, spec.replace(nms="efficient"), batch=[2, 4, 8])
    with pytest.raises(ModelError, match=r"2:4:8 cannot run batch 1.*--batch 1:4:8"):
        write_triton_repo(TritonConfig(repo=tmp_path / "repo", engine=engine))


def test_engine_bad_profile_in_sidecar(tmp_path: Path, spec: DetectorSpec) -> None:
    engine = build_engine_fixture(tmp_path, spec.replace(nms="efficient"), batch="8:4")
    with pytest.raises(ModelError, match=r"build_options.batch='8:4' is not a batch profile"):
        write_triton_repo(TritonConfig(repo=tmp_path / "repo", engine=engine))


def test_engine_without_sidecar(tmp_path: Path, spec: DetectorSpec) -> None:
    engine = build_engine_fixture(tmp_path, spec.replace(nms="efficient"))
    engine.with_name(engine.name + ".json").unlink()
    with pytest.raises(ModelError, match=r"sidecar .*model.fp16.engine.json' does not exist"):
        write_triton_repo(TritonConfig(repo=tmp_path / "repo", engine=engine))
    assert not (tmp_path / "repo").exists()  # nothing written before the model is understood


def test_engine_with_another_onnx_is_refused(tmp_path: Path, spec: DetectorSpec) -> None:
    built_from = build_onnx(tmp_path / "a.onnx", spec, "efficient")
    other = build_onnx(tmp_path / "b.onnx", spec, "efficient", precision="fp16")
    engine = build_engine_fixture(tmp_path, spec.replace(nms="efficient"), onnx_path=built_from)
    with pytest.raises(ModelError, match=r"is not the one engine .* was built from"):
        write_triton_repo(TritonConfig(repo=tmp_path / "repo", engine=engine, onnx=other))


def test_engine_cpu_kind_is_refused(tmp_path: Path, spec: DetectorSpec) -> None:
    engine = build_engine_fixture(tmp_path, spec.replace(nms="efficient"))
    with pytest.raises(InputError, match="kind='cpu' cannot serve a TensorRT engine"):
        write_triton_repo(TritonConfig(repo=tmp_path / "repo", engine=engine, kind="cpu"))


# ---- ONNX Runtime backend --------------------------------------------------------------------------------
def test_onnx_nms_onnx_repo(tmp_path: Path, spec: DetectorSpec) -> None:
    onnx_path = build_onnx(tmp_path / "model.fp32.onnx", spec, "onnx")
    repo = write_triton_repo(TritonConfig(repo=tmp_path / "repo", onnx=onnx_path))
    cfg = parse_config(repo.config_path)
    assert cfg.backend == "onnxruntime"
    assert not cfg.platform
    # selected_indices (M, 3) has no batch axis: Triton must not batch this model
    assert cfg.max_batch_size == 0
    assert not cfg.HasField("dynamic_batching")
    assert_matches_onnx(cfg, onnx_path)
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    assert repo.model_path.name == "model.onnx"
    assert repo.model_path.read_bytes() == onnx_path.read_bytes()
    assert repo.backend == "onnxruntime"


def test_onnx_nms_onnx_refuses_batching(tmp_path: Path, spec: DetectorSpec) -> None:
    onnx_path = build_onnx(tmp_path / "model.fp32.onnx", spec, "onnx")
    with pytest.raises(InputError, match=r"max_batch=4 needs every input and output .*--max-batch 0"):
        write_triton_repo(TritonConfig(repo=tmp_path / "repo", onnx=onnx_path, max_batch=4))


def test_onnx_nms_none_cpu_target(tmp_path: Path, spec: DetectorSpec) -> None:
    onnx_path = build_onnx(tmp_path / "model.int8-cpu.onnx", spec, "none", target="cpu", precision="int8")
    repo = write_triton_repo(
        TritonConfig(repo=tmp_path / "repo", onnx=onnx_path, preferred_batch=(2, 4), max_queue_delay_us=500)
    )
    cfg = parse_config(repo.config_path)
    assert cfg.max_batch_size == 8
    assert_matches_onnx(cfg, onnx_path)
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_onnx_efficient_is_refused_for_onnxruntime(tmp_path: Path, spec: DetectorSpec) -> None:
    onnx_path = build_onnx(tmp_path / "model.fp32.onnx", spec, "efficient")
    with pytest.raises(ModelError, match=r"EfficientNMS_TRT, which ONNX Runtime cannot run; export with --nms onnx"):
        write_triton_repo(TritonConfig(repo=tmp_path / "repo", onnx=onnx_path))


def test_onnx_spec_from_spec_json_when_metadata_is_missing(tmp_path: Path, spec: DetectorSpec) -> None:
    onnx_path = build_onnx(tmp_path / "model.fp32.onnx", spec, "none")
    m = onnx.load(str(onnx_path))
    del m.metadata_props[:]
    onnx.save(m, str(onnx_path))
    with pytest.raises(ModelError, match=r"no 'retinaedge\.spec' metadata and no spec\.json"):
        load_deploy_model(onnx=onnx_path)
    spec.replace(nms="none").save(tmp_path / "spec.json")
    assert load_deploy_model(onnx=onnx_path).spec == spec.replace(nms="none")


def test_missing_and_corrupt_onnx(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_deploy_model(onnx=tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(ModelError, match="cannot be read"):
        load_deploy_model(onnx=bad)
    with pytest.raises(InputError, match="no model given"):
        load_deploy_model()


# ---- options and output dir ------------------------------------------------------------------------------
def test_non_writable_repo(tmp_path: Path, spec: DetectorSpec) -> None:
    onnx_path = build_onnx(tmp_path / "model.fp32.onnx", spec, "none")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match="is not writable"):
        write_triton_repo(TritonConfig(repo=blocker / "repo", onnx=onnx_path))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "../evil"}, "not a plain directory name"),
        ({"version": 0}, "version=0 must be an integer >= 1"),
        ({"instances": 0}, "instances=0 must be an integer >= 1"),
        ({"max_batch": -1}, "max_batch=-1 must be an integer >= 0"),
        ({"kind": "tpu"}, "kind='tpu' is not allowed"),
    ],
)
def test_bad_options(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        TritonConfig(repo=tmp_path, **changes)  # type: ignore[arg-type]


def test_preferred_batch_outside_max(tmp_path: Path, spec: DetectorSpec) -> None:
    onnx_path = build_onnx(tmp_path / "model.fp32.onnx", spec, "none")
    with pytest.raises(InputError, match=r"preferred batch sizes \[16\] are outside 1..max_batch=8"):
        write_triton_repo(TritonConfig(repo=tmp_path / "repo", onnx=onnx_path, preferred_batch=(4, 16)))


# ---- CLI -------------------------------------------------------------------------------------------------
def test_cli_writes_repo(tmp_path: Path, spec: DetectorSpec, capsys: pytest.CaptureFixture[str]) -> None:
    engine = build_engine_fixture(tmp_path, spec.replace(nms="efficient"))
    rc = main(["export-triton", "--engine", str(engine), "--repo", str(tmp_path / "repo"), "--max-batch", "4"])
    assert rc == 0
    assert parse_config(tmp_path / "repo" / "retinaedge" / "config.pbtxt").max_batch_size == 4
    assert "tritonserver --model-repository" in capsys.readouterr().out


def test_cli_error_is_one_line(tmp_path: Path, spec: DetectorSpec, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = build_onnx(tmp_path / "model.fp32.onnx", spec, "efficient")
    rc = main(["export-triton", "--onnx", str(onnx_path), "--repo", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1
    assert "--nms onnx" in err
