"""What an exported ONNX says about itself: precision, spec, NMS mode, target, kept-high set.

Exported ONNX files carry ``metadata_props`` (written by ``retinaedge export``):

* ``retinaedge.spec``: the `DetectorSpec` JSON;
* ``retinaedge.precision``: ``fp32`` | ``fp16`` | ``int8``;
* ``retinaedge.nms``: ``efficient`` | ``onnx`` | ``none``;
* ``retinaedge.target``: ``tensorrt``, or ``cpu`` for the ORT-only ``int8-cpu`` variant;
* ``retinaedge.keep_high`` (``model.int8-mixed.onnx`` only): JSON ``{"nodes": [FP32 node names], "dtype":
  "fp16"|"fp32"}``, the units ``export --mixed auto`` kept out of INT8 (a weakly-typed TensorRT build pins them).

A ``spec.json`` sits beside the ONNX files too; it is the fallback when the metadata has no spec.

Part of the shared kernel (`retinaedge.runtime.SHARED_KERNEL`): export writes these keys, every stage reads them
through `describe_onnx`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from retinaedge.runtime._lazy import require
from retinaedge.runtime.errors import ModelError, RetinaEdgeError
from retinaedge.runtime.spec import DetectorSpec

if TYPE_CHECKING:
    import onnx

META_SPEC = "retinaedge.spec"
META_PRECISION = "retinaedge.precision"
META_NMS = "retinaedge.nms"
META_TARGET = "retinaedge.target"
META_KEEP_HIGH = "retinaedge.keep_high"

OnnxPrecision = Literal["fp32", "fp16", "int8", "int8-mixed"]
ONNX_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
"""What ``retinaedge.precision`` may say (``int8-mixed`` is an ``int8`` file with ``retinaedge.keep_high``)."""
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16
PLUGIN_OP = "EfficientNMS_TRT"
"""The NMS plugin's op type, as export writes it and every reader looks for it."""


@dataclass(frozen=True)
class OnnxInfo:
    """What an exported ONNX says about itself: the one reading every stage should use.

    Attributes:
        path: the file.
        precision: ``fp32`` | ``fp16`` | ``int8`` | ``int8-mixed`` (metadata, else read from the graph: Q/DQ ->
            int8, FP16 initializers -> fp16); ``int8-mixed`` when ``keep_high`` is present on an INT8 file.
        spec: the `DetectorSpec` (metadata, else ``spec.json`` beside the file, else the one passed in).
        nms: ``efficient`` when the graph holds the EfficientNMS_TRT node, else ``retinaedge.nms``, else the spec's.
        target: ``tensorrt`` (default) or ``cpu`` (the ORT-only ``int8-cpu`` file).
        keep_high: ``{"nodes": [...], "dtype": "fp16"|"fp32"}`` of a mixed file, else None.
        metadata: all ``metadata_props``.
    """

    path: Path
    precision: OnnxPrecision
    spec: DetectorSpec
    nms: str
    target: str
    keep_high: dict[str, Any] | None
    metadata: dict[str, str]


def describe_onnx(path: str | Path, *, model: onnx.ModelProto | None = None,
                  spec: DetectorSpec | None = None) -> OnnxInfo:
    """Read an exported ONNX's precision, spec, NMS mode, target and kept-high set in one place.

    Args:
        path: the ``.onnx`` file.
        model: the file already parsed (saves reading it again); external data is never loaded.
        spec: use this spec instead of the file's.

    Raises:
        ModelError: a missing/unreadable file, no spec, an unknown ``retinaedge.precision``, a malformed
            ``retinaedge.keep_high``.
    """
    p = Path(path)
    m = model if model is not None else load_onnx_model(p, load_external_data=False)
    meta = metadata_of(m)
    the_spec = spec if spec is not None else spec_for_onnx(p, meta)
    keep = _keep_high(meta.get(META_KEEP_HIGH), p)
    text = meta.get(META_PRECISION)
    precision: OnnxPrecision
    if text is not None:
        if text not in ONNX_PRECISIONS:
            raise ModelError(f"{str(p)!r} says {META_PRECISION}={text!r}; allowed: {list(ONNX_PRECISIONS)}; "
                             "re-export it")
        precision = text  # type: ignore[assignment]
    elif any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node):
        precision = "int8"
    elif any(i.data_type == _FLOAT16 for i in m.graph.initializer):
        precision = "fp16"
    else:
        precision = "fp32"
    if precision == "int8" and keep is not None:
        precision = "int8-mixed"
    has_plugin = any(n.op_type == PLUGIN_OP for n in m.graph.node)
    nms = "efficient" if has_plugin else meta.get(META_NMS, the_spec.nms)
    return OnnxInfo(path=p, precision=precision, spec=the_spec, nms=nms, target=meta.get(META_TARGET, "tensorrt"),
                    keep_high=keep, metadata=meta)


def _keep_high(text: str | None, path: Path) -> dict[str, Any] | None:
    if text is None:
        return None
    hint = '; expected {"nodes": [ONNX node names], "dtype": "fp16"|"fp32"}: re-export with --mixed auto'
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ModelError(f"{str(path)!r}: {META_KEEP_HIGH} is not JSON ({text[:60]!r}){hint}") from None
    nodes = data.get("nodes") if isinstance(data, dict) else None
    dtype = data.get("dtype") if isinstance(data, dict) else None
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes) or dtype not in ("fp16", "fp32"):
        raise ModelError(f"{str(path)!r}: {META_KEEP_HIGH}={text[:80]!r} is malformed{hint}")
    return {"nodes": list(nodes), "dtype": dtype}


def load_onnx_model(path: str | Path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Parse an ONNX file (onnx imported lazily).

    Raises:
        ModelError: naming the path when it is missing or not a valid ONNX protobuf.
        MissingDependencyError: when onnx is not installed.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"ONNX model {str(p)!r} does not exist; export one with 'retinaedge export'")
    onnx_mod = require("onnx", purpose="reading ONNX models")
    try:
        model: onnx.ModelProto = onnx_mod.load(str(p), load_external_data=load_external_data)
    except Exception as e:  # protobuf DecodeError, OSError, ValidationError: all mean "cannot load"
        raise ModelError(
            f"ONNX model {str(p)!r} cannot be read ({type(e).__name__}: {_first_line(e)}); re-export it"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"ONNX model {str(p)!r} has an empty graph; is it a truncated or non-ONNX file?")
    return model


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (empty if it has none).

    Raises:
        ModelError: naming the path when it is missing or unreadable.
    """
    model = load_onnx_model(path, load_external_data=False)
    return metadata_of(model)


def metadata_of(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` of a loaded model as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def spec_for_onnx(path: str | Path, metadata: dict[str, str] | None = None) -> DetectorSpec:
    """The spec of an exported ONNX: its ``retinaedge.spec`` metadata, else ``spec.json`` beside the file.

    Args:
        path: the ONNX file.
        metadata: its metadata if already read (saves parsing the file again).

    Raises:
        ModelError: when neither source exists, or a source does not parse as a spec.
    """
    p = Path(path)
    meta = read_onnx_metadata(p) if metadata is None else metadata
    text = meta.get(META_SPEC)
    if text is not None:
        try:
            return DetectorSpec.from_json(text)
        except RetinaEdgeError as e:
            raise ModelError(f"the {META_SPEC!r} metadata of {str(p)!r} is not a valid spec: {e}") from None
    beside = p.with_name("spec.json")
    if beside.is_file():
        try:
            return DetectorSpec.load(beside)
        except RetinaEdgeError as e:
            raise ModelError(f"{str(beside)!r} beside {p.name} is not a valid spec: {e}") from None
    raise ModelError(
        f"ONNX model {str(p)!r} has no {META_SPEC!r} metadata and no spec.json beside it; pass spec= or "
        "re-export it with 'retinaedge export'"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
