"""INT8 variants of the pre-NMS graph.

* ``int8`` (TensorRT): NVIDIA ModelOpt ONNX PTQ (``modelopt.onnx.quantization.quantize``) with symmetric INT8
  Q/DQ (zero point 0), ``calibration_eps=["cpu"]``, ``high_precision_dtype="fp32"`` (the rest stays FP32;
  ModelOpt's FP16 remainder is a TensorRT-build concern and ran 7.6x slower in ORT, docs/TENSORRT.md). ModelOpt
  raises the opset to 19; the result is converted back to the export opset with ``onnx.version_converter``
  when that succeeds (INT8 Q/DQ with float32 scales means the same at opset 13..19), so TensorRT 8.6 can read
  it. The plugin is appended afterwards (ModelOpt cannot run EfficientNMS_TRT).
* ``int8-cpu``: ONNX Runtime ``quantize_static`` in QDQ format, U8 asymmetric activations and S8 per-channel
  weights: the fast CPU form (3.4x FP32 on a ResNet-18 here), not TensorRT-compatible (zero point != 0).

In both, the nodes between the last compute op and the ``cls_logits``/``box_deltas`` outputs (the heads'
Reshape/Transpose/Concat) are excluded, so the class logits reach the sigmoid / the plugin's score input
unquantised (Ultralytics 24668: INT8 squashed confidences). Each quantizer runs in its own ``spawn`` process
(`retinaedge.export.calib.run_isolated`) because ModelOpt patches ORT's quantizer classes in place.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from retinaedge.export.calib import run_isolated
from retinaedge.runtime.errors import InputError

ModelOptMethod = Literal["entropy", "max"]

PASS_THROUGH_OPS = frozenset(
    {"Reshape", "Transpose", "Concat", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Split", "Slice"}
)
"""Data-movement ops that may sit between the last conv of a head and the graph output."""


def output_tail_nodes(
    model: onnx.ModelProto, outputs: Sequence[str] | None = None, *, include_producers: bool = False
) -> list[str]:
    """Names of the pass-through nodes (`PASS_THROUGH_OPS`) on the paths from compute ops to ``outputs``.

    Args:
        outputs: output tensor names (default: all graph outputs).
        include_producers: also name the compute nodes (the heads' last convs) where the walk stops. ORT's QDQ
            quantizer puts a Q/DQ pair on a quantized Conv's *output* (ModelOpt quantizes inputs only), so for
            ORT the last convs must be excluded to keep the logits and deltas unquantised.

    Returns:
        Node names in graph order (nodes without a name cannot be excluded and are skipped).
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    todo = list(outputs if outputs is not None else [o.name for o in model.graph.output])
    seen: set[str] = set()
    tail: set[int] = set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        node = producer.get(t)
        if node is None:
            continue
        if node.op_type not in PASS_THROUGH_OPS:
            if include_producers:
                tail.add(id(node))
            continue
        tail.add(id(node))
        # data inputs only: a Reshape's shape input (the exporter's Shape/Gather/Unsqueeze chain) is not data
        todo.extend(i for i in (node.input if node.op_type == "Concat" else node.input[:1]) if i)
    return [n.name for n in model.graph.node if id(n) in tail and n.name]


def _set_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not current or current[0] <= opset:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception:  # the converter raises bare RuntimeErrors/ValidationErrors: keep ModelOpt's opset
        return model
    return converted


def _modelopt_worker(*, src: str, dst: str, calib: str, input_name: str, method: str, opset: int,
                     exclude: list[str], high_precision_dtype: str = "fp32") -> None:
    """Subprocess body: ModelOpt INT8 PTQ of ``src`` into ``dst`` (``exclude``: exact node names)."""
    import contextlib
    import io
    import logging
    import re

    logging.getLogger("modelopt").setLevel(logging.ERROR)
    data = np.load(calib)
    # imported inside the redirect: ModelOpt's log handler binds the stderr current at import time
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from modelopt.onnx.quantization import quantize

        quantize(
            onnx_path=src, quantize_mode="int8", calibration_data={input_name: data}, calibration_method=method,
            calibration_eps=["cpu"], output_path=dst, high_precision_dtype=high_precision_dtype, log_level="ERROR",
            nodes_to_exclude=[f"^{re.escape(n)}$" for n in exclude] or None,
        )
    onnx.save(_set_opset(onnx.load(dst), opset), dst)


def _ort_worker(*, src: str, dst: str, calib: str, input_name: str, batch: int, exclude: list[str]) -> None:
    """Subprocess body: ORT static QDQ quantization (U8 activations, S8 per-channel weights)."""
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" notes (this process only)
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    data = np.load(calib)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(range(0, len(data), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self._it, None)
            return None if i is None else {input_name: data[i : i + batch]}

    quantize_static(
        src, dst, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=exclude,
    )


def _run(worker: str, pre_nms: onnx.ModelProto, calib: np.ndarray, *, extra_exclude: Sequence[str] = (),
         **kwargs: object) -> onnx.ModelProto:
    if calib.ndim != 4 or len(calib) == 0:
        raise InputError(f"calibration batch has shape {calib.shape}; need (N>0, 3, H, W) preprocessed images")
    target: Callable[..., None] = _modelopt_worker if worker == "modelopt" else _ort_worker
    with tempfile.TemporaryDirectory(prefix="retinaedge-int8-") as tmp:
        src, dst, npy = (str(Path(tmp) / n) for n in ("pre.onnx", "q.onnx", "calib.npy"))
        onnx.save(pre_nms, src)
        np.save(npy, calib)
        exclude = output_tail_nodes(pre_nms, include_producers=worker == "ort")
        exclude += [n for n in dict.fromkeys(extra_exclude) if n not in exclude]
        run_isolated(target, src=src, dst=dst, calib=npy, exclude=exclude, **kwargs)
        return onnx.load(dst)


def quantize_int8_tensorrt(
    pre_nms: onnx.ModelProto, calib: np.ndarray, *, input_name: str, method: ModelOptMethod, opset: int,
    exclude_nodes: Sequence[str] = (), high_precision_dtype: Literal["fp32", "fp16"] = "fp32",
) -> onnx.ModelProto:
    """Symmetric INT8 Q/DQ (ModelOpt) of a pre-NMS graph, for TensorRT.

    Args:
        pre_nms: FP32 pre-NMS model.
        calib: (N, 3, H, W) preprocessed calibration images (spec input dtype).
        input_name: the graph input.
        method: ``entropy`` or ``max``.
        opset: the export opset to convert back to (kept at 19 if the conversion fails; the lint reports it).
        exclude_nodes: node names kept out of INT8 (ModelOpt ``nodes_to_exclude``, matched exactly), on top of the
            output tail; ``export --mixed auto`` passes the kept-high units here.
        high_precision_dtype: what ModelOpt leaves the unquantised nodes in: ``fp32`` (the default: ORT runs
            ModelOpt's FP16 remainder 7.6x slower, docs/TENSORRT.md) or ``fp16``.
    """
    if method not in ("entropy", "max"):
        raise InputError(f"calibration method {method!r} is not supported by ModelOpt INT8; use 'entropy' or 'max'")
    if high_precision_dtype not in ("fp32", "fp16"):
        raise InputError(f"high_precision_dtype {high_precision_dtype!r} is not supported; use 'fp32' or 'fp16'")
    return _run("modelopt", pre_nms, calib, extra_exclude=exclude_nodes, input_name=input_name, method=method,
                opset=opset, high_precision_dtype=high_precision_dtype)


def quantize_int8_cpu(
    pre_nms: onnx.ModelProto, calib: np.ndarray, *, input_name: str, batch: int = 8
) -> onnx.ModelProto:
    """ORT U8S8 QDQ (asymmetric activations, per-channel weights) of a pre-NMS graph, for CPU only.

    Args:
        pre_nms: FP32 pre-NMS model.
        calib: (N, 3, H, W) preprocessed calibration images.
        input_name: the graph input.
        batch: calibration batch size.
    """
    return _run("ort", pre_nms, calib, input_name=input_name, batch=batch)
