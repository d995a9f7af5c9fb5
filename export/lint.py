"""TensorRT-compatibility lint for exported ONNX files (`lint_onnx`), printed after every export.

Checks, each finding naming the node:

* ``checker``: ``onnx.checker.check_model`` passes, with EfficientNMS_TRT allowed (checked in a copy where the
  plugin node sits in a custom domain, since the checker knows no schema for it).
* ``opset``: the default-domain opset is one each targeted TensorRT major's ONNX parser reads.
* ``unsupported-op``: every op is in onnx-tensorrt's supported-operator list for each targeted major.
* ``plugin``: EfficientNMS_TRT attributes have the types and values the plugin checks (``efficientNMSPlugin.cpp``
  at v11.1: iou_threshold > 0, score_threshold >= 0, max_output_boxes > 0, flags 0/1, box_coding 0/1,
  plugin_version "1"), 2 or 3 inputs, 4 outputs; a score threshold below 0.007 is a warning (dense kernel).
* ``qdq``: Q/DQ zero points are int8 and 0 (symmetric): TensorRT refuses others ("`y_zero_point` must be 0";
  UINT8 only as network input/output). For a file whose metadata says ``retinaedge.target = cpu`` (the ORT
  U8S8 variant) these are ``info`` and the report is marked CPU-only.
* ``quantized-scores``: no DequantizeLinear feeds the class scores (the plugin's score input / the Sigmoid)
  through data-movement ops only: INT8 confidences collapse.

Supported-operator lists are data (below), transcribed from onnx-tensorrt ``docs/operators.md`` (rows marked
"Y"): TRT 8 = branch release/8.6-GA (commit 6ba67d3, opset <= 17); TRT 10 = tag 10.1-GA (commit 96e7811,
opset 9..20; JetPack 6 ships 10.3, so the conservative early-10.x list); TRT 11 = the 10.15 list (opset
9..24), the newest operators.md read (TRT 11's own list was not available; 10.15 adds Attention,
BlackmanWindow, HammingWindow, HannWindow, RMSNormalization, RotaryEmbedding, STFT, TensorScatter to 10.1).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.nms import DENSE_KERNEL_THRESHOLD
from retinaedge.runtime.onnxinfo import META_TARGET, PLUGIN_OP

Severity = Literal["error", "warning", "info"]

PLUGIN_OPS = frozenset({PLUGIN_OP})
"""TensorRT plugins the lint knows (registered by ``initLibNvInferPlugins`` from 8.x through 11.1)."""


def _ops(text: str) -> frozenset[str]:
    return frozenset(text.split())


_OPS_TRT_8_6 = _ops("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid
HardSwish Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min
Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""")
_OPS_TRT_10_1 = _ops("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN
LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""")
_OPS_TRT_10_15 = _OPS_TRT_10_1 | _ops(
    "Attention BlackmanWindow HammingWindow HannWindow RMSNormalization RotaryEmbedding STFT TensorScatter"
)

SUPPORTED_OPS: dict[int, frozenset[str]] = {8: _OPS_TRT_8_6, 10: _OPS_TRT_10_1, 11: _OPS_TRT_10_15}
"""TensorRT major -> ONNX ops its parser supports (see the module docstring for the sources)."""
MAX_OPSET: dict[int, int] = {8: 17, 10: 20, 11: 24}
"""TensorRT major -> highest default-domain opset its parser reads."""

_PASS_THROUGH = frozenset({"Reshape", "Transpose", "Concat", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast",
                           "Split", "Slice", "Gather"})
_PLUGIN_ATTRS: dict[str, type] = {
    "plugin_version": str, "background_class": int, "max_output_boxes": int, "score_threshold": float,
    "iou_threshold": float, "score_activation": int, "class_agnostic": int, "box_coding": int,
}
_PLUGIN_REQUIRED = ("max_output_boxes", "score_threshold", "iou_threshold")


@dataclass(frozen=True)
class Finding:
    """One lint result.

    Attributes:
        severity: ``error`` (TensorRT will refuse or mis-run it), ``warning`` or ``info``.
        code: short check name (``checker``, ``opset``, ``unsupported-op``, ``plugin``, ``qdq``, …).
        node: the node's name (or its ``op_type#index`` when unnamed); ``""`` for model-level findings.
        message: one line naming the value found, what is allowed, and a hint.
    """

    severity: Severity
    code: str
    node: str
    message: str

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.severity}: {self.code}{where}: {self.message}"


@dataclass(frozen=True)
class LintReport:
    """All findings for one file.

    Attributes:
        path: the file linted (``"<model>"`` for an in-memory model).
        target: ``tensorrt`` or ``cpu`` (from ``retinaedge.target``; ``tensorrt`` when absent).
        target_trt_majors: TensorRT majors checked.
        findings: in check order.
    """

    path: str
    target: str
    target_trt_majors: tuple[int, ...]
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No errors."""
        return not self.errors

    @property
    def cpu_only(self) -> bool:
        return self.target == "cpu"

    def codes(self, severity: Severity | None = None) -> set[str]:
        return {f.code for f in self.findings if severity is None or f.severity == severity}

    def summary(self) -> str:
        """One line: file, verdict, counts and the TensorRT majors checked."""
        majors = "/".join(str(m) for m in self.target_trt_majors)
        if self.cpu_only:
            verdict = "CPU-only (ORT; not for TensorRT)"
        else:
            verdict = f"TensorRT {majors}: " + ("OK" if self.ok else "NOT COMPATIBLE")
        return (f"{Path(self.path).name}: {verdict} — {len(self.errors)} error(s), {len(self.warnings)} warning(s), "
                f"{len(self.findings) - len(self.errors) - len(self.warnings)} info")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "target": self.target, "target_trt_majors": list(self.target_trt_majors),
            "ok": self.ok, "cpu_only": self.cpu_only, "summary": self.summary(),
            "findings": [f.__dict__ for f in self.findings],
        }


def lint_onnx(path: str | Path | onnx.ModelProto, *, target_trt_majors: Sequence[int] = (8, 10, 11)) -> LintReport:
    """Lint an ONNX file (or model) for TensorRT compatibility.

    Args:
        path: ``.onnx`` file or a loaded ``onnx.ModelProto``.
        target_trt_majors: TensorRT major versions to check against (keys of `SUPPORTED_OPS`).

    Raises:
        InputError: an unknown TensorRT major, or a file that is not ONNX.
    """
    majors = tuple(dict.fromkeys(int(m) for m in target_trt_majors))
    bad = [m for m in majors if m not in SUPPORTED_OPS]
    if bad or not majors:
        raise InputError(f"target_trt_majors {list(target_trt_majors)} must be a non-empty subset of "
                         f"{sorted(SUPPORTED_OPS)}")
    if isinstance(path, onnx.ModelProto):
        model, name = path, "<model>"
    else:
        name = str(path)
        try:
            model = onnx.load(name)
        except (OSError, DecodeError, ValueError) as e:
            raise InputError(f"{name!r} cannot be read as ONNX ({type(e).__name__}: {e})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    target = meta.get(META_TARGET, "tensorrt")
    findings: list[Finding] = []
    nodes = list(model.graph.node)
    names = [n.name or f"{n.op_type}#{i}" for i, n in enumerate(nodes)]
    findings += _check_checker(model)
    findings += _check_opset(model, majors, target)
    findings += _check_ops(nodes, names, majors, target)
    findings += _check_plugins(nodes, names)
    findings += _check_qdq(model, nodes, names, target)
    findings += _check_scores(model, nodes, names)
    if target == "cpu":
        findings.append(Finding("info", "target", "", "retinaedge.target=cpu: ORT U8S8 file for CPU deployment; "
                                                      "build TensorRT engines from model.int8.onnx instead"))
    return LintReport(name, target, majors, tuple(findings))


def _check_checker(model: onnx.ModelProto) -> list[Finding]:
    m = copy.deepcopy(model)
    moved = False
    for n in m.graph.node:
        if n.op_type in PLUGIN_OPS and n.domain in ("", "ai.onnx"):
            n.domain = "trt.plugins"
            moved = True
    if moved and not any(o.domain == "trt.plugins" for o in m.opset_import):
        m.opset_import.add(domain="trt.plugins", version=1)
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        node = _node_from_checker(str(e))
        return [Finding("error", "checker", node, f"onnx.checker failed: {first}; re-export the model")]
    return []


def _node_from_checker(text: str) -> str:
    marker = "Name: "
    if marker in text:
        return text.split(marker, 1)[1].split()[0]
    return ""


def _default_opset(model: onnx.ModelProto) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


def _check_opset(model: onnx.ModelProto, majors: tuple[int, ...], target: str) -> list[Finding]:
    opset = _default_opset(model)
    if opset is None:
        return [Finding("error", "opset", "", "model imports no default-domain opset; re-export it")]
    too_new = [m for m in majors if opset > MAX_OPSET[m]]
    if not too_new:
        return []
    sev: Severity = "info" if target == "cpu" else "error"
    limits = ", ".join(f"TRT {m}: <= {MAX_OPSET[m]}" for m in too_new)
    return [Finding(sev, "opset", "", f"opset {opset} is newer than the ONNX parser reads ({limits}); "
                                      "export with a lower --opset or drop those majors")]


def _check_ops(nodes: list[onnx.NodeProto], names: list[str], majors: tuple[int, ...], target: str) -> list[Finding]:
    out: list[Finding] = []
    sev: Severity = "info" if target == "cpu" else "error"
    for n, name in zip(nodes, names, strict=True):
        if n.op_type in PLUGIN_OPS:
            out.append(Finding("info", "plugin", name, f"{n.op_type} is a TensorRT plugin (registered by "
                                                       "initLibNvInferPlugins; deprecated since TRT 10.12); ORT "
                                                       "runs the graph up to its inputs"))
            continue
        if n.domain not in ("", "ai.onnx"):
            out.append(Finding(sev, "unsupported-op", name, f"op {n.domain}::{n.op_type} is not a standard ONNX "
                                                             "op; TensorRT needs a plugin for it"))
            continue
        lacking = [m for m in majors if n.op_type not in SUPPORTED_OPS[m]]
        if lacking:
            out.append(Finding(sev, "unsupported-op", name,
                               f"op {n.op_type} is not in onnx-tensorrt's supported list for TRT "
                               f"{'/'.join(map(str, lacking))}; rewrite it with supported ops"))
    return out


def _attr_value(a: onnx.AttributeProto) -> Any:
    return onnx.helper.get_attribute_value(a)


def _check_plugins(nodes: list[onnx.NodeProto], names: list[str]) -> list[Finding]:
    out: list[Finding] = []
    for n, name in zip(nodes, names, strict=True):
        if n.op_type != PLUGIN_OP:
            continue
        attrs = {a.name: a for a in n.attribute}
        for key in sorted(set(attrs) - set(_PLUGIN_ATTRS)):
            out.append(Finding("warning", "plugin", name, f"unknown EfficientNMS_TRT attribute {key!r}; the plugin "
                                                           f"reads {sorted(_PLUGIN_ATTRS)}"))
        for key in _PLUGIN_REQUIRED:
            if key not in attrs:
                out.append(Finding("error", "plugin", name, f"EfficientNMS_TRT attribute {key!r} is missing; "
                                                             "set it from the spec"))
        values: dict[str, Any] = {}
        for key, a in attrs.items():
            want = _PLUGIN_ATTRS.get(key)
            if want is None:
                continue
            value = _attr_value(a)
            if isinstance(value, bytes):
                value = value.decode()
            ok_type = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if not ok_type:
                out.append(Finding("error", "plugin", name, f"EfficientNMS_TRT attribute {key}={value!r} has type "
                                                             f"{type(value).__name__}; the plugin reads a "
                                                             f"{want.__name__}"))
                continue
            values[key] = value
        out += _plugin_values(values, name)
        if len(n.input) not in (2, 3):
            out.append(Finding("error", "plugin", name, f"EfficientNMS_TRT has {len(n.input)} inputs; it takes "
                                                         "[boxes, scores] or [boxes, scores, anchors]"))
        if len(n.output) != 4:
            out.append(Finding("error", "plugin", name, f"EfficientNMS_TRT has {len(n.output)} outputs; it has 4 "
                                                         "(num_detections, boxes, scores, classes)"))
    return out


def _plugin_values(v: dict[str, Any], name: str) -> list[Finding]:
    out: list[Finding] = []

    def err(msg: str) -> None:
        out.append(Finding("error", "plugin", name, msg))

    if "plugin_version" in v and v["plugin_version"] != "1":
        err(f"plugin_version={v['plugin_version']!r}; EfficientNMS_TRT is registered as version '1'")
    if "iou_threshold" in v and not 0.0 < v["iou_threshold"] <= 1.0:
        err(f"iou_threshold={v['iou_threshold']!r}; the plugin needs iou_threshold > 0 (and IoU is <= 1)")
    if "score_threshold" in v:
        s = v["score_threshold"]
        if s < 0.0:
            err(f"score_threshold={s!r}; the plugin needs score_threshold >= 0")
        elif s < DENSE_KERNEL_THRESHOLD:
            out.append(Finding("warning", "plugin", name,
                               f"score_threshold={s!r} < {DENSE_KERNEL_THRESHOLD} selects the dense kernel "
                               "(slow; writes sub-threshold boxes with score 0); use >= 0.01"))
    if "max_output_boxes" in v and v["max_output_boxes"] <= 0:
        err(f"max_output_boxes={v['max_output_boxes']!r}; the plugin needs max_output_boxes > 0")
    for key in ("score_activation", "class_agnostic", "box_coding"):
        if key in v and v[key] not in (0, 1):
            err(f"{key}={v[key]!r}; the plugin accepts 0 or 1")
    return out


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    return values


def _check_qdq(model: onnx.ModelProto, nodes: list[onnx.NodeProto], names: list[str], target: str) -> list[Finding]:
    out: list[Finding] = []
    consts = _constants(model)
    cpu = target == "cpu"
    sev: Severity = "info" if cpu else "error"
    hint = (" (CPU-only file)" if cpu
            else "; TensorRT needs symmetric int8 Q/DQ (zero point 0): build from model.int8.onnx")
    for n, name in zip(nodes, names, strict=True):
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) >= 2 and n.input[1] in consts:
            scale = consts[n.input[1]]
            if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
                out.append(Finding("error", "qdq", name, f"{n.op_type} scale has values <= 0 or non-finite "
                                                         f"(min {float(np.min(scale))!r}); recalibrate"))
        elif len(n.input) >= 2:
            out.append(Finding("warning", "qdq", name, f"{n.op_type} scale {n.input[1]!r} is not a constant; "
                                                       "TensorRT needs build-time scales"))
        zp_name = n.input[2] if len(n.input) >= 3 else ""
        if not zp_name:
            if n.op_type == "QuantizeLinear":
                out.append(Finding(sev, "qdq", name, f"{n.op_type} has no zero point, so it produces uint8{hint}"))
            continue
        zp = consts.get(zp_name)
        if zp is None:
            out.append(Finding(sev, "qdq", name, f"{n.op_type} zero point {zp_name!r} is not a constant{hint}"))
            continue
        if zp.dtype != np.int8:
            kind = " (asymmetric uint8 quantization)" if zp.dtype == np.uint8 else ""
            out.append(Finding(sev, "qdq", name, f"{n.op_type} zero point {zp_name!r} is {zp.dtype}{kind}, not "
                                                 f"int8{hint}"))
        elif np.any(zp != 0):
            out.append(Finding(sev, "qdq", name, f"{n.op_type} zero point {zp_name!r} is "
                                                 f"{_preview(zp.ravel())}, not 0{hint}"))
    return out


def _preview(values: Iterable[Any]) -> str:
    vals = [v.item() if hasattr(v, "item") else v for v in values]
    return str(vals[:4])[:-1] + (", ...]" if len(vals) > 4 else "]")


def _check_scores(model: onnx.ModelProto, nodes: list[onnx.NodeProto], names: list[str]) -> list[Finding]:
    """Class scores must not come straight (through data movement only) from a DequantizeLinear."""
    producer = {o: (n, name) for n, name in zip(nodes, names, strict=True) for o in n.output}
    starts: list[tuple[str, str]] = []
    for n, name in zip(nodes, names, strict=True):
        if n.op_type == PLUGIN_OP and len(n.input) >= 2:
            starts.append((n.input[1], name))
        elif n.op_type == "Sigmoid":
            starts.append((n.input[0], name))
    if not starts:  # pre-NMS or nms=none without sigmoid: the logits output itself
        starts = [(o.name, o.name) for o in model.graph.output if o.name == "cls_logits"]
    out: list[Finding] = []
    for tensor, consumer in starts:
        todo, seen = [tensor], set()
        while todo:
            t = todo.pop()
            if t in seen or t not in producer:
                continue
            seen.add(t)
            node, name = producer[t]
            if node.op_type == "DequantizeLinear":
                out.append(Finding("error", "quantized-scores", name,
                                   f"class scores reaching {consumer!r} come from DequantizeLinear {name!r}: INT8 "
                                   "confidences collapse; exclude the head's output nodes from quantization"))
                break
            if node.op_type in _PASS_THROUGH:
                todo.extend(i for i in node.input[:1] if i)
    return out
