"""Graph-surgery passes: anchors, clamp, decode (vs torchvision's BoxCoder), ONNX NMS (vs torchvision nms),
EfficientNMS_TRT wiring, per-level concat, sanitize, and efficient vs onnx mode AP."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from retinaedge.export import surgery
from retinaedge.export.onnx_export import export_onnx, random_images
from retinaedge.runtime.cocoeval import coco_evaluate
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.preprocess import load_image, preprocess_batch
from retinaedge.runtime.spec import DetectorSpec
from tests.support.export_helpers import TinyData, make_spec, torch_heads


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x}), strict=True))


def test_efficient_nms_node(pre_nms: onnx.ModelProto, tiny_spec: DetectorSpec) -> None:
    model = surgery.finalize(pre_nms, tiny_spec, nms="efficient", precision="fp32")
    (node,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert list(node.input) == ["box_deltas", "cls_logits", "anchors"]
    assert [o.name for o in model.graph.output] == ["num_detections", "detection_boxes", "detection_scores",
                                                    "detection_classes"]
    types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert types == {"num_detections": 6, "detection_boxes": 1, "detection_scores": 1, "detection_classes": 6}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_version": b"1", "background_class": -1, "max_output_boxes": 100,
                     "score_threshold": pytest.approx(0.05), "iou_threshold": pytest.approx(0.5),
                     "score_activation": 1, "class_agnostic": 0, "box_coding": 1}
    anchors = next(i for i in model.graph.initializer if i.name == "anchors")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(anchors), tiny_spec.anchors_cxcywh()[None])
    # hand check of the first anchor: P3 cell (0, 0), centre (4, 4), size 16, ratio 0.5 -> w = 16/sqrt(.5)
    np.testing.assert_allclose(tiny_spec.anchors_cxcywh()[0], [4, 4, 16 / np.sqrt(0.5), 16 * np.sqrt(0.5)], rtol=1e-6)


def test_dense_kernel_threshold_warns(pre_nms: onnx.ModelProto, caplog: pytest.LogCaptureFixture) -> None:
    spec = make_spec(postprocess={"score_threshold": 0.001})
    with caplog.at_level("WARNING"):
        surgery.finalize(pre_nms, spec, nms="efficient", precision="fp32")
    assert "dense kernel" in caplog.text


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_clamp_and_decode_match_torchvision(tiny_model: Any, weights: tuple[float, ...]) -> None:
    from torchvision.models.detection._utils import BoxCoder

    # a clamp small enough to be active on these outputs, so the test sees it
    spec = make_spec(box_coding={"weights": weights, "clamp": 0.005})
    pre = surgery.prepare_pre_nms(export_onnx(tiny_model, spec), spec)
    model = surgery.finalize(pre, spec, nms="none", precision="fp32")
    assert [o.name for o in model.graph.output] == ["cls_logits", "box_deltas", "boxes", "scores"]
    x = random_images(spec, 2)
    got = _run(model, x)
    raw = torch_heads(tiny_model, x)
    want_deltas = raw["box_deltas"] / np.asarray(weights, np.float32)
    assert (want_deltas[..., 2:] > 0.005).any()
    want_deltas[..., 2:] = np.minimum(want_deltas[..., 2:], 0.005)
    np.testing.assert_allclose(got["box_deltas"], want_deltas, atol=1e-5)
    coder = BoxCoder(weights=weights, bbox_xform_clip=0.005)
    anchors = torch.from_numpy(spec.anchors_xyxy())
    for b in range(2):
        ref = coder.decode_single(torch.from_numpy(raw["box_deltas"][b]), anchors).numpy()
        np.testing.assert_allclose(got["boxes"][b], ref, atol=1e-3)
    np.testing.assert_allclose(got["scores"], 1 / (1 + np.exp(-raw["cls_logits"])), atol=1e-6)
    np.testing.assert_allclose(got["cls_logits"], raw["cls_logits"], atol=1e-5)


def test_onnx_nms_matches_torchvision(pre_nms: onnx.ModelProto, tiny_spec: DetectorSpec) -> None:
    model = surgery.finalize(pre_nms, tiny_spec, nms="onnx", precision="fp32")
    got = _run(model, random_images(tiny_spec, 2, seed=3))
    sel = got["selected_indices"]
    assert sel.dtype == np.int64 and sel.shape[1] == 3
    pp = tiny_spec.postprocess
    for b in range(2):
        for c in range(tiny_spec.num_classes):
            scores = got["scores"][b, :, c]
            cand = np.nonzero(scores > pp.score_threshold)[0]
            keep = torchvision.ops.nms(torch.from_numpy(got["boxes"][b, cand]), torch.from_numpy(scores[cand]),
                                       pp.iou_threshold)[: pp.max_detections]
            mine = sel[(sel[:, 0] == b) & (sel[:, 1] == c), 2]
            assert sorted(mine.tolist()) == sorted(cand[keep.numpy()].tolist())


def test_onnx_nms_refuses_class_agnostic(pre_nms: onnx.ModelProto) -> None:
    spec = make_spec(postprocess={"class_agnostic": True})
    with pytest.raises(InputError, match="class_agnostic=True"):
        surgery.finalize(pre_nms, spec, nms="onnx", precision="fp32")


def test_concat_levels_from_per_level_outputs(tiny_model: Any, tiny_spec: DetectorSpec) -> None:
    class PerLevel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_model

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            cls, box = self.inner.levels(images)
            return (*cls, *box)

    x = random_images(tiny_spec, 2)
    import io

    buf = io.BytesIO()
    names = ["cls_logits_0", "cls_logits_1", "box_deltas_0", "box_deltas_1"]
    torch.onnx.export(PerLevel().eval(), (torch.from_numpy(x),), buf, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=names,
                      dynamic_axes={n: {0: "batch"} for n in ["images", *names]})
    per_level = onnx.shape_inference.infer_shapes(onnx.load_from_string(buf.getvalue()))
    assert len(per_level.graph.output) == 4
    pre = surgery.prepare_pre_nms(per_level, tiny_spec)
    assert [o.name for o in pre.graph.output] == ["cls_logits", "box_deltas"]
    got = _run(pre, x)
    ref = torch_heads(tiny_model, x)
    np.testing.assert_allclose(got["cls_logits"], ref["cls_logits"], atol=1e-5)
    np.testing.assert_allclose(got["box_deltas"], ref["box_deltas"], atol=1e-5)
    wrong = make_spec(anchors={"strides": (8, 16), "sizes": (16.0, 32.0), "scales": (1.0,)})
    with pytest.raises(ModelError, match=r"cls_logits_0.*576, 3.*spec needs \(B, 192, 3\)"):
        surgery.prepare_pre_nms(per_level, wrong)


def test_sanitize_folds_the_torchscript_shape_chain(tiny_model: Any, tiny_spec: DetectorSpec) -> None:
    raw = export_onnx(tiny_model, tiny_spec, exporter="torchscript")
    folded = surgery.to_model(surgery.sanitize(surgery.to_graph(raw)), raw)
    assert len(folded.graph.node) < len(raw.graph.node)
    x = random_images(tiny_spec, 3)
    a, b = _run(raw, x), _run(folded, x)
    np.testing.assert_array_equal(a["cls_logits"], b["cls_logits"])


def _from_onnx_nms(out: dict[str, np.ndarray], metas: list[Any], k: int) -> list[Detections]:
    dets = []
    sel = out["selected_indices"]
    for i, meta in enumerate(metas):
        s = sel[sel[:, 0] == i]
        scores = out["scores"][i, s[:, 2], s[:, 1]]
        order = np.argsort(-scores, kind="stable")[:k]
        dets.append(Detections(meta.to_original(out["boxes"][i, s[order, 2]]), scores[order].astype(np.float32),
                               s[order, 1].astype(np.int64)))
    return dets


def test_efficient_and_onnx_modes_give_the_same_ap(pre_nms: onnx.ModelProto, tiny_spec: DetectorSpec,
                                                    tiny_data: TinyData) -> None:
    from retinaedge.export.pipeline import detect_pre_nms

    images = [load_image(p) for p in tiny_data.val_files]
    batch, metas = preprocess_batch(images, tiny_spec)
    eff = surgery.finalize(pre_nms, tiny_spec, nms="none", precision="fp32")  # the plugin's inputs, run in ORT
    eff_out = _run(eff, batch)
    eff_dets = detect_pre_nms({"cls_logits": eff_out["cls_logits"], "box_deltas": eff_out["box_deltas"]},
                              tiny_spec, metas)
    onnx_dets = _from_onnx_nms(_run(surgery.finalize(pre_nms, tiny_spec, nms="onnx", precision="fp32"), batch),
                               metas, tiny_spec.postprocess.max_detections)

    def ap(dets: list[Detections]) -> float:
        return float(coco_evaluate(tiny_data.ann_file, dict(zip(tiny_data.val_ids, dets, strict=True)),
                                   tiny_spec.category_ids, tiny_spec.class_names)["AP"])

    a, b = ap(eff_dets), ap(onnx_dets)
    assert a > 0.3
    assert abs(a - b) <= 0.005
