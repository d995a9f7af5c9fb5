"""A tiny RetinaNet-shaped ONNX, written with ``onnx.helper`` (no torch, nothing downloaded): test helper for
the engine tests.

uint8 images (B, 3, 64, 64) -> Cast -> (x - mean) / std -> two stride-16/2 conv levels (P3 4x4, P4 2x2, 8 ch) ->
class and box 1x1 heads -> ``cls_logits`` (B, 20, 3) and ``box_deltas`` (B, 20, 4) (dw/dh clamped at
log(1000/16)), then, for ``nms="efficient"``, EfficientNMS_TRT with the spec's anchors (cx, cy, w, h),
``box_coding=1``, ``score_activation=1`` -> ``num_detections`` (B, 1) int32, ``detection_boxes`` (B, 10, 4),
``detection_scores`` (B, 10), ``detection_classes`` (B, 10) int32: the layout ``retinaedge export`` produces.

Kinds: ``fp32``; ``fp16`` (convolutions in FP16, IO, heads' outputs and the plugin's inputs FP32, as
docs/TENSORRT.md asks); ``qdq`` (symmetric INT8 Q/DQ on every convolution's input and per-channel weights, scales
from a max calibration with ONNX Runtime on random images; the head outputs unquantised).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from retinaedge.runtime.spec import AnchorSpec, DetectorSpec, PostProcess

MAX_DET = 10


def tiny_spec() -> DetectorSpec:
    return DetectorSpec(
        class_names=("circle", "square", "triangle"), input_height=64, input_width=64,
        anchors=AnchorSpec(strides=(16, 32), sizes=(24.0, 48.0), scales=(1.0,), aspect_ratios=(1.0,)),
        postprocess=PostProcess(score_threshold=0.05, iou_threshold=0.5, max_detections=MAX_DET),
    )


def _weights(seed: int, spec: DetectorSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k, a = spec.num_classes, spec.num_anchors_per_cell
    return {
        "w1": rng.normal(0, 0.05, (8, 3, 16, 16)).astype(np.float32), "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "w2": rng.normal(0, 0.3, (8, 8, 2, 2)).astype(np.float32), "b2": rng.normal(0, 0.1, 8).astype(np.float32),
        "wc": rng.normal(0, 0.5, (k * a, 8, 1, 1)).astype(np.float32),
        "bc": np.full(k * a, -1.0, np.float32),
        "wb": rng.normal(0, 0.2, (4 * a, 8, 1, 1)).astype(np.float32), "bb": np.zeros(4 * a, np.float32),
    }


ACT_INPUTS = ("x_n", "p3", "p4")
"""The tensors convolutions read: what the Q/DQ variant quantizes."""


def _graph(spec: DetectorSpec, weights: dict[str, np.ndarray], *, kind: str, nms: str, batch: int | str,
           act_scales: dict[str, float] | None):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, a = spec.num_classes, spec.num_anchors_per_cell
    nodes: list = []
    inits: list = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    half = kind == "fp16"
    x = node("Cast", ["images"], "x_f", to=TensorProto.FLOAT)
    x = node("Sub", [x, const("mean", np.array(spec.pixel_mean, np.float32).reshape(1, 3, 1, 1))], "x_c")
    x = node("Div", [x, const("std", np.array(spec.pixel_std, np.float32).reshape(1, 3, 1, 1))], "x_n")
    if half:
        x = node("Cast", [x], "x_h", to=TensorProto.FLOAT16)

    def conv(inp: str, w: str, b: str, out: str, stride: int) -> str:
        wv, bv = weights[w], weights[b]
        if half:
            w_in, b_in = const(f"{out}_w", wv.astype(np.float16)), const(f"{out}_b", bv.astype(np.float16))
        elif kind == "qdq":
            s = np.float32((act_scales or {}).get(inp, 1.0))
            z = const(f"{out}_x_zp", np.int8(0))
            q = node("QuantizeLinear", [inp, const(f"{out}_x_s", s), z], f"{out}_x_q")
            inp = node("DequantizeLinear", [q, f"{out}_x_s", z], f"{out}_x_dq")
            ws = np.maximum(np.abs(wv).reshape(len(wv), -1).max(axis=1), 1e-8).astype(np.float32) / 127
            wq = np.clip(np.round(wv / ws[:, None, None, None]), -127, 127).astype(np.int8)
            w_in = node("DequantizeLinear", [const(f"{out}_w_q", wq), const(f"{out}_w_s", ws),
                                             const(f"{out}_w_zp", np.zeros(len(wv), np.int8))], f"{out}_w_dq",
                        axis=0)
            b_in = const(f"{out}_b", bv)
        else:
            w_in, b_in = const(f"{out}_w", wv), const(f"{out}_b", bv)
        return node("Conv", [inp, w_in, b_in], out, strides=[stride, stride])

    p3 = node("Relu", [conv(x, "w1", "b1", "c1", 16)], "p3")
    p4 = node("Relu", [conv(p3, "w2", "b2", "c2", 2)], "p4")
    cls_levels, box_levels = [], []
    for lvl, p in enumerate((p3, p4)):
        for head, w, b, width, acc in (("cls", "wc", "bc", k, cls_levels), ("box", "wb", "bb", 4, box_levels)):
            t = conv(p, w, b, f"{head}{lvl}", 1)
            if half:
                t = node("Cast", [t], f"{head}{lvl}_f", to=TensorProto.FLOAT)
            t = node("Transpose", [t], f"{head}{lvl}_t", perm=[0, 2, 3, 1])
            acc.append(node("Reshape", [t, const(f"{head}{lvl}_shape", np.array([0, -1, width], np.int64))],
                            f"{head}{lvl}_r"))
    del a  # anchors per cell are folded into the head widths (A = 1 here)
    cls = node("Concat", cls_levels, spec.io.cls_logits, axis=1)
    clamp = np.array([1e4, 1e4, spec.box_coding.clamp, spec.box_coding.clamp], np.float32).reshape(1, 1, 4)
    box = node("Min", [node("Concat", box_levels, "box_raw", axis=1), const("clamp", clamp)], spec.io.box_deltas)
    n = spec.num_anchors
    f32 = TensorProto.FLOAT
    if nms == "efficient":
        post = spec.postprocess
        nodes.append(helper.make_node(
            "EfficientNMS_TRT", [box, cls, const("anchors", spec.anchors_cxcywh()[None])],
            [spec.io.num_detections, spec.io.detection_boxes, spec.io.detection_scores, spec.io.detection_classes],
            name="nms", plugin_version="1", background_class=-1, box_coding=1, score_activation=1,
            class_agnostic=int(post.class_agnostic), iou_threshold=post.iou_threshold,
            score_threshold=post.score_threshold, max_output_boxes=post.max_detections,
        ))
        outputs = [
            helper.make_tensor_value_info(spec.io.num_detections, TensorProto.INT32, [batch, 1]),
            helper.make_tensor_value_info(spec.io.detection_boxes, f32, [batch, MAX_DET, 4]),
            helper.make_tensor_value_info(spec.io.detection_scores, f32, [batch, MAX_DET]),
            helper.make_tensor_value_info(spec.io.detection_classes, TensorProto.INT32, [batch, MAX_DET]),
        ]
    else:
        outputs = [helper.make_tensor_value_info(cls, f32, [batch, n, k]),
                   helper.make_tensor_value_info(box, f32, [batch, n, 4])]
    graph = helper.make_graph(
        nodes, f"tiny-retinanet-{kind}",
        [helper.make_tensor_value_info(spec.io.input, TensorProto.UINT8, [batch, 3, 64, 64])], outputs, inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="retinaedge-tests")
    model.ir_version = 8
    precision = {"fp32": "fp32", "fp16": "fp16", "qdq": "int8"}[kind]
    for key, value in (("retinaedge.spec", spec.to_json()), ("retinaedge.precision", precision),
                       ("retinaedge.nms", nms)):
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return model


def _calibrate(spec: DetectorSpec, weights: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """Max-abs scales of the convolutions' inputs on random images (the FP32 graph in ONNX Runtime)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = _graph(spec, weights, kind="fp32", nms="none", batch="batch", act_scales=None)
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ACT_INPUTS)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(seed).integers(0, 256, (8, 3, 64, 64), dtype=np.uint8)
    values = sess.run(list(ACT_INPUTS), {spec.io.input: images})
    return {n: max(float(np.abs(v).max()), 1e-6) / 127 for n, v in zip(ACT_INPUTS, values, strict=True)}


def make_tiny_onnx(
    folder: Path, *, kind: str = "fp32", nms: str = "efficient", batch: int | str = "batch", seed: int = 0
) -> Path:
    """Write ``folder/model.<fp32|fp16|int8>.onnx`` (``-none`` suffix for ``nms="none"``) and ``spec.json``.

    Args:
        kind: ``fp32``, ``fp16`` or ``qdq``.
        nms: ``efficient`` (EfficientNMS_TRT) or ``none`` (raw heads; ONNX Runtime runs it).
        batch: a dim name for a dynamic batch, or an int for a static one.
    """
    import onnx

    spec = tiny_spec()
    folder.mkdir(parents=True, exist_ok=True)
    weights = _weights(seed, spec)
    scales = _calibrate(spec, weights, seed) if kind == "qdq" else None
    model = _graph(spec, weights, kind=kind, nms=nms, batch=batch, act_scales=scales)
    name = {"fp32": "fp32", "fp16": "fp16", "qdq": "int8"}[kind]
    path = folder / (f"model.{name}.onnx" if nms == "efficient" else f"model-none.{name}.onnx")
    onnx.save(model, str(path))
    spec.save(folder / "spec.json")
    (folder / "tiny.json").write_text(json.dumps({"kind": kind, "nms": nms, "seed": seed}))
    return path
