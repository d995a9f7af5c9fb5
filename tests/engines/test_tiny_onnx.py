"""The tiny ONNX the engine tests build from, checked on CPU: every kind runs in ONNX Runtime with the right
shapes and stays close to FP32, and the EfficientNMS graphs give the four detection tensors through `OrtRunner`
(which emulates the plugin). So a failing GPU test points at TensorRT or our engine code, not at the fixture."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.tiny_onnx import MAX_DET, make_tiny_onnx, tiny_spec

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

KINDS = ("fp32", "fp16", "qdq")


@pytest.fixture(scope="module")
def raw_outputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    out = {}
    for kind in KINDS:
        path = make_tiny_onnx(folder, kind=kind, nms="none")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out[kind] = sess.run(None, {"images": images})
    return out


def test_raw_heads_shapes(raw_outputs):
    spec = tiny_spec()
    for kind in KINDS:
        cls, box = raw_outputs[kind]
        assert cls.shape == (2, spec.num_anchors, spec.num_classes) and box.shape == (2, spec.num_anchors, 4)
        assert cls.dtype == box.dtype == np.float32  # FP32 IO on every kind
        assert (box[..., 2:] <= spec.box_coding.clamp + 1e-6).all()


def test_kinds_stay_close_to_fp32(raw_outputs):
    ref = raw_outputs["fp32"]
    for kind, atol in (("fp16", 0.02), ("qdq", 1.5)):
        for got, want in zip(raw_outputs[kind], ref, strict=True):
            np.testing.assert_allclose(got, want, atol=atol)
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95


def test_qdq_graph_is_symmetric_int8(tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(make_tiny_onnx(tmp_path, kind="qdq")))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # TensorRT needs zero points of 0


def test_efficient_graphs_run_through_ort_runner(tmp_path):
    from retinaedge.runtime.ort_runner import OrtRunner

    images = np.random.default_rng(2).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    for kind, precision in (("fp32", "fp32"), ("fp16", "fp16"), ("qdq", "int8")):
        with OrtRunner(path=make_tiny_onnx(tmp_path, kind=kind), threads=1) as runner:
            assert runner.precision == precision
            out = runner.infer(images)
        assert out["num_detections"].shape == (3, 1) and out["num_detections"].dtype == np.int32
        assert out["detection_boxes"].shape == (3, MAX_DET, 4)
        assert out["detection_classes"].dtype == np.int32
        assert (out["num_detections"] > 0).all()
