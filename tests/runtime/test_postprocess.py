"""`to_detections` for every output kind, and `raw_to_detection_outputs` (the emulated plugin)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.nms import efficient_nms
from retinaedge.runtime.postprocess import output_kind, raw_to_detection_outputs, to_detections
from retinaedge.runtime.preprocess import Letterbox
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec, PostProcess


def make_spec(**pp) -> DetectorSpec:
    """64x64, strides 8/16, one anchor per cell -> N = 64 + 16 = 80 anchors, 3 classes."""
    return DetectorSpec(
        class_names=("a", "b", "c"), input_height=64, input_width=64,
        anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0,), aspect_ratios=(1.0,)),
        postprocess=PostProcess(**{"score_threshold": 0.05, "max_detections": 10, **pp}),
    )


IDENTITY = Letterbox(scale=1.0, pad_x=0.0, pad_y=0.0, orig_height=64, orig_width=64)


def raw_outputs(rng, b=2, spec=None):
    spec = spec or make_spec()
    logits = rng.normal(-4, 2, (b, spec.num_anchors, spec.num_classes)).astype(np.float32)
    deltas = rng.normal(0, 0.2, (b, spec.num_anchors, 4)).astype(np.float32)
    return {"cls_logits": logits, "box_deltas": deltas}


def test_detection_outputs_read_num_filter_score_map_and_sort():
    spec = make_spec(score_threshold=0.3)
    meta = Letterbox(scale=0.5, pad_x=0.0, pad_y=8.0, orig_height=96, orig_width=128)  # 128x96 -> 64x48 + pad
    outputs = {
        "num_detections": np.array([[3], [0]], np.int32),
        "detection_boxes": np.array([[[0, 8, 10, 18], [20, 20, 40, 40], [-4, 0, 70, 70], [1, 1, 2, 2]],
                                     np.zeros((4, 4))], np.float32),
        # slot 1 is below threshold (dense-kernel filler), slot 3 is past num_detections
        "detection_scores": np.array([[0.6, 0.0, 0.9, 0.99], [0.8, 0, 0, 0]], np.float32),
        "detection_classes": np.array([[2, 0, 1, 1], [1, 0, 0, 0]], np.int32),
    }
    assert output_kind(outputs, spec) == "detections"
    dets = to_detections(outputs, spec, [meta, meta])
    d = dets[0]
    assert len(d) == 2 and len(dets[1]) == 0
    np.testing.assert_allclose(d.scores, [0.9, 0.6])  # sorted
    assert d.classes.dtype == np.int64 and d.classes.tolist() == [1, 2]
    # (-4, 0, 70, 70) -> x (-8, 140) clipped to (0, 128); y ((0-8)/.5, (70-8)/.5) = (-16, 124) -> (0, 96)
    np.testing.assert_allclose(d.boxes[0], [0, 0, 128, 96])
    np.testing.assert_allclose(d.boxes[1], [0, 0, 20, 20])
    assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32


def test_score_exactly_at_threshold_survives_the_sigmoid_round_trip():
    spec = make_spec(score_threshold=0.05)
    t = np.float32(math.log(0.05 / 0.95))
    s = np.float32(1 / (1 + np.exp(-t)))  # may land an ulp under 0.05
    outputs = {"num_detections": np.array([[1]], np.int32), "detection_boxes": np.ones((1, 1, 4), np.float32),
               "detection_scores": np.array([[s]], np.float32), "detection_classes": np.zeros((1, 1), np.int32)}
    assert len(to_detections(outputs, spec, [IDENTITY])[0]) == 1


def test_raw_outputs_equal_efficient_nms_with_the_spec_anchors(rng):
    spec = make_spec()
    raw = raw_outputs(rng)
    det = raw_to_detection_outputs(raw["cls_logits"], raw["box_deltas"], spec)
    num, boxes, scores, classes = efficient_nms(
        raw["box_deltas"], raw["cls_logits"], spec.anchors_cxcywh()[None], score_threshold=0.05,
        iou_threshold=0.5, max_output_boxes=10)
    np.testing.assert_array_equal(det["num_detections"], num)
    np.testing.assert_array_equal(det["detection_boxes"], boxes)
    np.testing.assert_array_equal(det["detection_scores"], scores)
    np.testing.assert_array_equal(det["detection_classes"], classes)
    assert num.min() > 0
    dets = to_detections(raw, spec, [IDENTITY, IDENTITY])
    for i, d in enumerate(dets):
        k = int(num[i, 0])
        np.testing.assert_array_equal(d.scores, scores[i, :k])
        np.testing.assert_array_equal(d.classes, classes[i, :k])
        np.testing.assert_allclose(d.boxes, np.clip(boxes[i, :k], 0, 64))


def test_raw_deltas_are_clamped_before_exp():
    spec = make_spec()
    logits = np.full((1, spec.num_anchors, 3), -20.0, np.float32)
    logits[0, 0, 0] = 5.0
    deltas = np.zeros((1, spec.num_anchors, 4), np.float32)
    deltas[0, 0, 2] = 100.0  # exp(100) would overflow float32
    det = raw_to_detection_outputs(logits, deltas, spec)
    b = det["detection_boxes"][0, 0]
    w = 16 * 1000 / 16  # anchor width 16, clamp log(1000/16)
    np.testing.assert_allclose(b[2] - b[0], w, rtol=1e-5)
    assert deltas[0, 0, 2] == 100.0  # the caller's array is untouched


def test_class_agnostic_spec_suppresses_across_classes():
    spec = make_spec(class_agnostic=True, iou_threshold=0.5)
    logits = np.full((1, spec.num_anchors, 3), -20.0, np.float32)
    logits[0, 0, 0], logits[0, 0, 1] = 3.0, 2.0  # same anchor, two classes
    deltas = np.zeros((1, spec.num_anchors, 4), np.float32)
    assert len(to_detections({"cls_logits": logits, "box_deltas": deltas}, spec, [IDENTITY])[0]) == 1
    spec2 = make_spec(class_agnostic=False)
    assert len(to_detections({"cls_logits": logits, "box_deltas": deltas}, spec2, [IDENTITY])[0]) == 2


def test_nms_none_outputs_use_the_raw_heads(rng):
    spec = make_spec()
    raw = raw_outputs(rng, b=1)
    junk = {"boxes": np.zeros((1, spec.num_anchors, 4), np.float32),
            "scores": np.zeros((1, spec.num_anchors, 3), np.float32)}
    assert output_kind({**raw, **junk}, spec) == "raw"
    a = to_detections({**raw, **junk}, spec, [IDENTITY])[0]
    b = to_detections(raw, spec, [IDENTITY])[0]
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)


def _decoded(rng, b, n, c):
    xy = rng.uniform(0, 50, (b, n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 20, (b, n, 2))], -1).astype(np.float32)
    scores = (1 / (1 + np.exp(-rng.normal(-2, 2, (b, n, c))))).astype(np.float32)
    return boxes, scores


def _ort_nms(boxes, scores, spec):
    """selected_indices from ONNX Runtime's NonMaxSuppression, as the ``onnx`` export mode runs it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    pp = spec.postprocess
    consts = [
        helper.make_tensor("k", TensorProto.INT64, [1], [pp.max_detections]),
        helper.make_tensor("iou", TensorProto.FLOAT, [1], [pp.iou_threshold]),
        helper.make_tensor("thr", TensorProto.FLOAT, [1], [pp.score_threshold]),
    ]
    nodes = [helper.make_node("Transpose", ["scores"], ["scores_t"], perm=[0, 2, 1]),
             helper.make_node("NonMaxSuppression", ["boxes", "scores_t", "k", "iou", "thr"], ["selected_indices"])]
    graph = helper.make_graph(
        nodes, "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", "N", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "N", "C"])],
        [helper.make_tensor_value_info("selected_indices", TensorProto.INT64, ["M", 3])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"boxes": boxes, "scores": scores})[0]


def test_onnx_nms_outputs_match_the_numpy_plugin_on_the_same_boxes(rng):
    """Two independent NMS implementations (ORT's NonMaxSuppression, our EfficientNMS twin) agree."""
    spec = make_spec(max_detections=15)
    boxes, scores = _decoded(rng, 3, 120, 3)
    sel = _ort_nms(boxes, scores, spec)
    metas = [IDENTITY] * 3
    onnx_dets = to_detections({"boxes": boxes, "scores": scores, "selected_indices": sel}, spec, metas)
    np_dets = to_detections({"boxes": boxes, "scores": scores}, spec, metas)
    assert output_kind({"boxes": boxes, "scores": scores}, spec) == "decoded"
    for a, b in zip(onnx_dets, np_dets, strict=True):
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_array_equal(a.boxes, b.boxes)


def test_onnx_nms_keeps_top_max_detections_and_ignores_padding(rng):
    spec = make_spec(max_detections=3)
    boxes, scores = _decoded(rng, 2, 30, 3)
    sel = np.array([[0, 0, 1], [0, 1, 2], [0, 2, 3], [0, 0, 4], [1, 1, 5], [0, 0, 1], [-1, -1, -1]], np.int64)
    scores[0, [1, 2, 3, 4], [0, 1, 2, 0]] = [0.6, 0.9, 0.7, 0.8]
    scores[1, 5, 1] = 0.01  # below the spec's threshold
    dets = to_detections({"boxes": boxes, "scores": scores, "selected_indices": sel}, spec, [IDENTITY] * 2)
    np.testing.assert_allclose(dets[0].scores, [0.9, 0.8, 0.7])
    assert dets[0].classes.tolist() == [1, 0, 2]
    np.testing.assert_allclose(dets[0].boxes, np.clip(boxes[0, [2, 4, 3]], 0, 64))
    assert len(dets[1]) == 0


def test_unknown_outputs_name_what_was_found_and_expected():
    spec = make_spec()
    with pytest.raises(InputError, match=r"\['logits', 'other'\]") as e:
        to_detections({"logits": np.zeros(1), "other": np.zeros(1)}, spec, [IDENTITY])
    msg = str(e.value)
    assert "num_detections" in msg and "selected_indices" in msg and "cls_logits" in msg and "\n" not in msg


def test_batch_size_must_match_metas(rng):
    spec = make_spec()
    with pytest.raises(InputError, match="2 images but 1 letterbox"):
        to_detections(raw_outputs(rng, b=2), spec, [IDENTITY])


def test_raw_shapes_must_fit_the_spec():
    spec = make_spec()
    with pytest.raises(InputError, match=r"\(B, 80, 3\)"):
        raw_to_detection_outputs(np.zeros((1, 79, 3), np.float32), np.zeros((1, 79, 4), np.float32), spec)
