"""Graph surgery on the exported heads, as small named passes on an onnx-graphsurgeon graph.

Order (`finalize`): `sanitize` -> `concat_levels` -> `clamp_box_deltas` -> `anchors_constant` -> the NMS tail
(`append_efficient_nms` | `append_onnx_nms` | `append_decoded_outputs`) -> `sanitize`. Precision variants
(FP16, INT8) are made on the pre-NMS graph first, so the tail (clamp, decode, sigmoid, NMS inputs) is always
appended in FP32.

Tensor contracts (names from ``spec.io``):

* pre-NMS: ``cls_logits`` (B, N, K) raw logits, ``box_deltas`` (B, N, 4) center-size deltas ``(dx, dy, dw, dh)``.
* ``efficient``: EfficientNMS_TRT with inputs ``[box_deltas (B,N,4), cls_logits (B,N,K), anchors (1,N,4)]``
  (anchors ``(cx, cy, w, h)`` network-input pixels; box_coding=1), outputs ``num_detections`` (B, 1) int32,
  ``detection_boxes`` (B, D, 4) float32 xyxy, ``detection_scores`` (B, D) float32, ``detection_classes``
  (B, D) int32, D = ``max_detections``. The plugin's inputs keep the names ``box_deltas`` and ``cls_logits``
  so an ONNX Runtime runner can cut the graph there.
* ``onnx``: ``boxes`` (B, N, 4) xyxy, ``scores`` (B, N, K) sigmoid, ``selected_indices`` (M, 3) int64
  ``[batch, class, anchor]`` from ONNX NonMaxSuppression.
* ``none``: ``cls_logits``, ``box_deltas`` (clamped), ``boxes`` (decoded xyxy), ``scores`` (sigmoid).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from retinaedge.export.onnx_export import set_metadata
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.onnxinfo import PLUGIN_OP
from retinaedge.runtime.spec import DetectorSpec, NmsMode

log = logging.getLogger(__name__)

DENSE_KERNEL_THRESHOLD = 0.007
"""Below this score threshold EfficientNMS_TRT uses its dense kernel (slow, writes sub-threshold boxes)."""
ANCHORS_NAME = "anchors"
RAW_DELTAS_NAME = "box_deltas_raw"


# ---- helpers ----------------------------------------------------------------------------------------------
def to_graph(model: onnx.ModelProto) -> Any:
    """Import a model into onnx-graphsurgeon (returns a ``gs.Graph``)."""
    return gs.import_onnx(model)


def to_model(graph: Any, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a ``gs.Graph``, keeping ``like``'s IR version, producer and metadata.

    onnx-graphsurgeon stamps the newest IR version; older TensorRT parsers warn on an IR newer than theirs, so
    the exporter's IR version is kept.
    """
    model: onnx.ModelProto = gs.export_onnx(graph)
    model.ir_version = like.ir_version
    model.producer_name = like.producer_name or "retinaedge"
    model.producer_version = like.producer_version
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    return model


def _output(graph: Any, name: str) -> Any:
    for t in graph.outputs:
        if t.name == name:
            return t
    raise ModelError(
        f"graph output {name!r} not found; outputs are {[t.name for t in graph.outputs]} "
        "(export the raw heads with retinaedge.export.onnx_export.export_onnx)"
    )


def _op(graph: Any, op: str, inputs: list[Any], name: str, *, attrs: dict[str, Any] | None = None,
        dtype: Any = np.float32, shape: list[Any] | None = None) -> Any:
    """Append one single-output node; returns its output variable."""
    out = gs.Variable(name, dtype=dtype, shape=shape)
    graph.layer(op=op, name=f"{name}/{op}", inputs=inputs, outputs=[out], attrs=attrs or {})
    return out


def _const(name: str, values: np.ndarray) -> Any:
    return gs.Constant(name, values=np.ascontiguousarray(values))


def _as_float32(graph: Any, tensor: Any, name: str) -> Any:
    """``tensor`` itself if it is float32, else a Cast to float32 (the tail always runs in FP32)."""
    if tensor.dtype is None or np.dtype(tensor.dtype) == np.float32:
        return tensor
    return _op(graph, "Cast", [tensor], name, attrs={"to": onnx.TensorProto.FLOAT}, shape=tensor.shape)


def _batch_dim(graph: Any) -> Any:
    shape = graph.inputs[0].shape
    return shape[0] if shape else "batch"


# ---- passes -----------------------------------------------------------------------------------------------
def sanitize(graph: Any, *, max_rounds: int = 10) -> Any:
    """Cleanup, toposort, shape inference and constant folding, repeated until the node count stops shrinking.

    Returns:
        A (possibly new) ``gs.Graph``; use the return value.
    """
    for _ in range(max_rounds):
        before = len(graph.nodes)
        graph.cleanup().toposort()
        graph.fold_constants(error_ok=True).cleanup()
        model = gs.export_onnx(graph)
        model = onnx.shape_inference.infer_shapes(model)
        graph = gs.import_onnx(model)
        if len(graph.nodes) >= before:
            break
    graph.cleanup().toposort()
    return graph


def concat_levels(graph: Any, spec: DetectorSpec) -> Any:
    """Make the heads one ``(B, N, K)`` / ``(B, N, 4)`` tensor each, P3 first.

    Our model already concatenates the levels in its forward; then this pass only checks the shapes. A model
    exporting one output per level (``cls_logits_0``, ``cls_logits_1``, … and ``box_deltas_0``, …) gets a
    Concat on axis 1 in numeric order.

    Raises:
        ModelError: per-level or total anchor counts that differ from the spec.
    """
    io_ = spec.io
    for head, width in ((io_.cls_logits, spec.num_classes), (io_.box_deltas, 4)):
        exact = [t for t in graph.outputs if t.name == head]
        levels = sorted(
            (t for t in graph.outputs if re.fullmatch(rf"{re.escape(head)}_\d+", t.name)),
            key=lambda t: int(t.name.rsplit("_", 1)[1]),
        )
        if exact and not levels:
            _check_shape(exact[0], [spec.num_anchors, width])
            continue
        if not levels:
            raise ModelError(f"graph has no output {head!r} or {head}_<level>; outputs: "
                             f"{[t.name for t in graph.outputs]}")
        sizes = spec.level_sizes()
        if len(levels) != len(sizes):
            raise ModelError(f"graph has {len(levels)} {head} levels but the spec has {len(sizes)} FPN levels "
                             f"(strides {list(spec.anchors.strides)})")
        for t, n in zip(levels, sizes, strict=True):
            _check_shape(t, [n, width])
        out = gs.Variable(head, dtype=levels[0].dtype, shape=[_batch_dim(graph), spec.num_anchors, width])
        for t in levels:
            t.name = f"{t.name}_level"
        graph.layer(op="Concat", name=f"{head}/Concat", inputs=levels, outputs=[out], attrs={"axis": 1})
        graph.outputs = [o for o in graph.outputs if o not in levels] + [out]
    graph.outputs = [_output(graph, io_.cls_logits), _output(graph, io_.box_deltas)]
    return graph


def _check_shape(tensor: Any, tail: list[int]) -> None:
    shape = list(tensor.shape or [])
    if len(shape) != 3 or any(isinstance(a, int) and a != b for a, b in zip(shape[1:], tail, strict=True)):
        raise ModelError(f"output {tensor.name!r} has shape {shape} but the spec needs (B, {tail[0]}, {tail[1]})")


def clamp_box_deltas(graph: Any, spec: DetectorSpec) -> Any:
    """Undo the box-coding weights and clamp ``dw, dh`` at ``spec.box_coding.clamp``.

    EfficientNMS_TRT decodes ``exp(dw)`` without a clamp (docs/TENSORRT.md), so the clamp
    ``Min(d, [inf, inf, clamp, clamp])`` is in the graph for every NMS mode. The raw output is renamed
    ``box_deltas_raw``; the clamped (B, N, 4) float32 tensor takes the name ``spec.io.box_deltas``.
    """
    name = spec.io.box_deltas
    raw = _output(graph, name)
    raw.name = RAW_DELTAS_NAME
    t = _as_float32(graph, raw, f"{name}_fp32")
    weights = np.asarray(spec.box_coding.weights, dtype=np.float32)
    if not np.all(weights == 1.0):
        t = _op(graph, "Div", [t, _const("box_coding_weights", weights)], f"{name}_unweighted", shape=raw.shape)
    limit = np.array([np.inf, np.inf, spec.box_coding.clamp, spec.box_coding.clamp], dtype=np.float32)
    clamped = _op(graph, "Min", [t, _const("box_deltas_clamp", limit)], name, shape=raw.shape)
    graph.outputs = [clamped if o is raw else o for o in graph.outputs]
    return graph


def anchors_constant(spec: DetectorSpec) -> Any:
    """``anchors`` (1, N, 4) float32 ``(cx, cy, w, h)`` in network-input pixels, spec order (a ``gs.Constant``)."""
    return _const(ANCHORS_NAME, spec.anchors_cxcywh()[None])


def efficient_nms_attributes(spec: DetectorSpec) -> dict[str, Any]:
    """EfficientNMS_TRT attributes from the spec (plugin version "1", fused center-size decode).

    The plugin decodes ``box_coding=1`` with anchors (cx, cy, w, h), applies the sigmoid itself
    (``score_activation=1``) and treats ``background_class=-1`` as "no background".
    """
    pp = spec.postprocess
    return {
        "plugin_version": "1",
        "background_class": -1,
        "max_output_boxes": int(pp.max_detections),
        "score_threshold": float(pp.score_threshold),
        "iou_threshold": float(pp.iou_threshold),
        "score_activation": 1,
        "class_agnostic": int(pp.class_agnostic),
        "box_coding": 1,
    }


def append_efficient_nms(graph: Any, spec: DetectorSpec, anchors: Any) -> Any:
    """Append EfficientNMS_TRT and make its four outputs the graph outputs.

    Logs a warning when ``score_threshold < 0.007`` (the plugin's dense kernel: slow, and it can emit
    sub-threshold boxes with score 0 — the runtime filters them, but mAP exports should use >= 0.007).
    """
    io_ = spec.io
    attrs = efficient_nms_attributes(spec)
    if attrs["score_threshold"] < DENSE_KERNEL_THRESHOLD:
        log.warning(
            "score_threshold=%s < %s selects EfficientNMS_TRT's dense kernel (slow; writes sub-threshold boxes "
            "with score 0); use >= 0.01 for mAP and deployment", attrs["score_threshold"], DENSE_KERNEL_THRESHOLD,
        )
    boxes_in = _as_float32(graph, _output(graph, io_.box_deltas), "nms_box_input")
    scores_in = _as_float32(graph, _output(graph, io_.cls_logits), "nms_score_input")
    b, k = _batch_dim(graph), attrs["max_output_boxes"]
    outputs = [
        gs.Variable(io_.num_detections, dtype=np.int32, shape=[b, 1]),
        gs.Variable(io_.detection_boxes, dtype=np.float32, shape=[b, k, 4]),
        gs.Variable(io_.detection_scores, dtype=np.float32, shape=[b, k]),
        gs.Variable(io_.detection_classes, dtype=np.int32, shape=[b, k]),
    ]
    graph.layer(op=PLUGIN_OP, name="efficient_nms", inputs=[boxes_in, scores_in, anchors],
                outputs=outputs, attrs=attrs)
    graph.outputs = outputs
    return graph


def decode_boxes(graph: Any, spec: DetectorSpec, deltas: Any) -> Any:
    """Center-size decode in the graph (same maths as the plugin with box_coding=1 and torchvision's coder).

    ``cx = dx*aw + ax``, ``cy = dy*ah + ay``, ``w = aw*exp(dw)``, ``h = ah*exp(dh)``, corners ``c -/+ wh/2``.

    Args:
        deltas: (B, N, 4) float32 clamped, unweighted deltas.

    Returns:
        ``spec.io.boxes`` (B, N, 4) float32 xyxy in network-input pixels (not clipped; the runtime clips after
        mapping back to the original image).
    """
    a = spec.anchors_cxcywh()[None]
    a_xy, a_wh = _const("anchors_xy", a[..., :2]), _const("anchors_wh", a[..., 2:])
    b, n = _batch_dim(graph), spec.num_anchors
    d_xy = gs.Variable("deltas_xy", dtype=np.float32, shape=[b, n, 2])
    d_wh = gs.Variable("deltas_wh", dtype=np.float32, shape=[b, n, 2])
    graph.layer(op="Split", name="decode/Split", inputs=[deltas, _const("decode_split", np.array([2, 2], np.int64))],
                outputs=[d_xy, d_wh], attrs={"axis": 2})
    ctr = _op(graph, "Add", [_op(graph, "Mul", [d_xy, a_wh], "decode_dxy_wh"), a_xy], "decode_ctr")
    wh = _op(graph, "Mul", [_op(graph, "Exp", [d_wh], "decode_exp"), a_wh], "decode_wh")
    half = _op(graph, "Mul", [wh, _const("half", np.array(0.5, np.float32))], "decode_half")
    x1y1 = _op(graph, "Sub", [ctr, half], "decode_x1y1")
    x2y2 = _op(graph, "Add", [ctr, half], "decode_x2y2")
    return _op(graph, "Concat", [x1y1, x2y2], spec.io.boxes, attrs={"axis": 2}, shape=[b, n, 4])


def _sigmoid_scores(graph: Any, spec: DetectorSpec) -> Any:
    logits = _as_float32(graph, _output(graph, spec.io.cls_logits), "cls_logits_fp32")
    return _op(graph, "Sigmoid", [logits], spec.io.scores, shape=[_batch_dim(graph), spec.num_anchors,
                                                                   spec.num_classes])


def append_onnx_nms(graph: Any, spec: DetectorSpec) -> Any:
    """Decode, sigmoid and ONNX NonMaxSuppression (per class); outputs ``boxes``, ``scores``,
    ``selected_indices`` (M, 3) int64 ``[batch, class, anchor]``.

    Raises:
        InputError: ``postprocess.class_agnostic=True`` (ONNX NMS here is per class; use efficient or none).
    """
    pp = spec.postprocess
    if pp.class_agnostic:
        raise InputError(
            "nms='onnx' exports per-class NonMaxSuppression but postprocess.class_agnostic=True; "
            "use --nms efficient (class_agnostic=1) or --nms none"
        )
    boxes = decode_boxes(graph, spec, _output(graph, spec.io.box_deltas))
    scores = _sigmoid_scores(graph, spec)
    b = _batch_dim(graph)
    scores_t = _op(graph, "Transpose", [scores], "scores_bcn", attrs={"perm": [0, 2, 1]},
                   shape=[b, spec.num_classes, spec.num_anchors])
    selected = _op(
        graph, "NonMaxSuppression",
        [boxes, scores_t, _const("nms_max_output_boxes_per_class", np.array([pp.max_detections], np.int64)),
         _const("nms_iou_threshold", np.array([pp.iou_threshold], np.float32)),
         _const("nms_score_threshold", np.array([pp.score_threshold], np.float32))],
        spec.io.selected_indices, attrs={"center_point_box": 0}, dtype=np.int64, shape=["num_selected", 3],
    )
    graph.outputs = [boxes, scores, selected]
    return graph


def append_decoded_outputs(graph: Any, spec: DetectorSpec) -> Any:
    """``nms='none'``: outputs ``cls_logits``, ``box_deltas`` (clamped), ``boxes`` (xyxy), ``scores`` (sigmoid)."""
    deltas = _output(graph, spec.io.box_deltas)
    logits = _output(graph, spec.io.cls_logits)
    boxes = decode_boxes(graph, spec, deltas)
    scores = _sigmoid_scores(graph, spec)
    graph.outputs = [logits, deltas, boxes, scores]
    return graph


def prepare_pre_nms(model: onnx.ModelProto, spec: DetectorSpec) -> onnx.ModelProto:
    """`sanitize` + `concat_levels` on the exported heads: the graph that FP16/INT8 conversion starts from."""
    graph = sanitize(to_graph(model))
    graph = concat_levels(graph, spec)
    return to_model(sanitize(graph), model)


def finalize(
    pre_nms: onnx.ModelProto,
    spec: DetectorSpec,
    *,
    nms: NmsMode,
    precision: str,
    target: str = "tensorrt",
) -> onnx.ModelProto:
    """Append the FP32 tail for ``nms`` to a pre-NMS graph (any precision) and write the metadata.

    Args:
        pre_nms: outputs ``cls_logits`` (B, N, K) and ``box_deltas`` (B, N, 4), float32 (Cast added otherwise).
        spec: the detector spec; its ``nms`` field is replaced by ``nms`` in the metadata.
        nms: ``efficient`` | ``onnx`` | ``none``.
        precision: ``fp32`` | ``fp16`` | ``int8`` for ``metadata_props``.
        target: ``tensorrt`` or ``cpu``.

    Returns:
        The final model (the plugin node, if any, in the default domain as TensorRT's ONNX parser expects).
    """
    if nms not in ("efficient", "onnx", "none"):
        raise InputError(f"nms={nms!r} is not supported; choose from ['efficient', 'onnx', 'none']")
    graph = sanitize(to_graph(pre_nms))
    graph = concat_levels(graph, spec)
    graph = clamp_box_deltas(graph, spec)
    if nms == "efficient":
        graph = append_efficient_nms(graph, spec, anchors_constant(spec))
    elif nms == "onnx":
        graph = append_onnx_nms(graph, spec)
    else:
        graph = append_decoded_outputs(graph, spec)
    graph = sanitize(graph)
    model = to_model(graph, pre_nms)
    return set_metadata(model, spec, precision=precision, nms=nms, target=target)

