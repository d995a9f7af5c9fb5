"""torch -> ONNX: graph IO, dynamic batch, metadata, and raw outputs vs PyTorch via Polygraphy's Comparator."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from retinaedge.export.onnx_export import export_onnx, random_images, set_metadata, tensor_shape
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.onnxinfo import metadata_of as read_metadata
from retinaedge.runtime.spec import DetectorSpec
from tests.support.export_helpers import TinyRetina, make_spec, torch_heads

polygraphy = pytest.importorskip("polygraphy")


def _torch_runner(model: Any) -> Any:
    from polygraphy.backend.base import BaseRunner

    class TorchHeadsRunner(BaseRunner):  # type: ignore[misc]
        """Thin Polygraphy runner around the torch model (reference side of the comparison)."""

        def __init__(self) -> None:
            super().__init__(name="torch")

        def activate_impl(self) -> None:
            pass

        def get_input_metadata_impl(self) -> Any:
            from polygraphy.common import TensorMetadata

            return TensorMetadata().add("images", np.uint8, (-1, 3, 64, 64))

        def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
            t0 = time.perf_counter()
            out = torch_heads(model, feed_dict["images"])
            self.inference_time = time.perf_counter() - t0
            return OrderedDict((k, out[k]) for k in ("cls_logits", "box_deltas"))

        def deactivate_impl(self) -> None:
            pass

    return TorchHeadsRunner()


@pytest.mark.parametrize("batch", [1, 3])
def test_ort_fp32_matches_torch_with_polygraphy(pre_nms: onnx.ModelProto, tiny_model: Any,
                                                 tiny_spec: DetectorSpec, batch: int) -> None:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc

    feeds = [{"images": random_images(tiny_spec, batch, seed=s)} for s in range(2)]
    ort_runner = OnnxrtRunner(SessionFromOnnx(pre_nms.SerializeToString(), providers=["CPUExecutionProvider"]),
                              name="ort")
    # reference second: Polygraphy takes relative error against the second runner
    results = Comparator.run([ort_runner, _torch_runner(tiny_model)], data_loader=feeds)
    ok = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=1e-4, rtol=0.0))
    assert bool(ok)
    # and the comparison can fail: a perturbed model does not pass
    noisy = TinyRetina(tiny_spec).eval()
    noisy.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        noisy.box.bias.add_(1e-2)
    results = Comparator.run([ort_runner, _torch_runner(noisy)], data_loader=feeds)
    assert not bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=1e-4, rtol=0.0)))


def test_io_names_dtypes_and_dynamic_batch(raw_onnx: onnx.ModelProto, tiny_spec: DetectorSpec) -> None:
    g = raw_onnx.graph
    assert [i.name for i in g.input] == ["images"]
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in g.output] == ["cls_logits", "box_deltas"]
    assert tensor_shape(raw_onnx, "images") == ["batch", 3, 64, 64]
    assert tensor_shape(raw_onnx, "cls_logits") == ["batch", tiny_spec.num_anchors, 3]
    assert tensor_shape(raw_onnx, "box_deltas") == ["batch", tiny_spec.num_anchors, 4]
    assert [o.version for o in raw_onnx.opset_import if o.domain == ""] == [17]


def test_dynamo_exporter_agrees_and_float_input(tiny_model: Any) -> None:
    import onnxruntime as ort

    spec = make_spec(input_dtype="float32")
    model = export_onnx(tiny_model, spec, exporter="dynamo")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = random_images(spec, 2)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    ref = torch_heads(tiny_model, x)
    np.testing.assert_allclose(got[0], ref["cls_logits"], atol=1e-4)
    np.testing.assert_allclose(got[1], ref["box_deltas"], atol=1e-4)


@pytest.mark.parametrize("opset", [16, 21, "17", 17.0])
def test_unsupported_opset_is_refused(tiny_model: Any, tiny_spec: DetectorSpec, opset: Any) -> None:
    with pytest.raises(InputError, match=r"opset .* is not supported; choose 17\.\.20"):
        export_onnx(tiny_model, tiny_spec, opset=opset)


def test_model_that_does_not_fit_the_spec(tiny_model: Any) -> None:
    other = make_spec(class_names=("a", "b"), category_ids=(1, 2))
    with pytest.raises(ModelError, match=r"cls_logits \(2, 720, 3\).*\(2, 720, 2\)"):
        export_onnx(tiny_model, other)


def test_metadata_round_trip_and_replace(raw_onnx: onnx.ModelProto, tiny_spec: DetectorSpec) -> None:
    m = onnx.ModelProto()
    m.CopyFrom(raw_onnx)
    set_metadata(m, tiny_spec, precision="fp16", nms="onnx")
    set_metadata(m, tiny_spec, precision="int8", nms="none", target="cpu")
    meta = read_metadata(m)
    assert [p.key for p in m.metadata_props].count("retinaedge.precision") == 1
    assert meta["retinaedge.precision"] == "int8" and meta["retinaedge.target"] == "cpu"
    assert meta["retinaedge.nms"] == "none"
    assert DetectorSpec.from_json(meta["retinaedge.spec"]).nms == "none"
    with pytest.raises(InputError, match="precision 'int4'"):
        set_metadata(m, tiny_spec, precision="int4", nms="none")
