"""Open a model file with the right `Runner`, and read what an exported ONNX says about itself.

Exported ONNX files carry ``metadata_props`` (written by ``retinaedge export``):

* ``retinaedge.spec``: the `DetectorSpec` JSON;
* ``retinaedge.precision``: ``fp32`` | ``fp16`` | ``int8``;
* ``retinaedge.nms``: ``efficient`` | ``onnx`` | ``none``;
* ``retinaedge.target``: ``tensorrt``, or ``cpu`` for the ORT-only ``int8-cpu`` variant;
* ``retinaedge.keep_high`` (``model.int8-mixed.onnx`` only): JSON ``{"nodes": [FP32 node names], "dtype":
  "fp16"|"fp32"}``, the units ``export --mixed auto`` kept out of INT8 (a weakly-typed TensorRT build pins them).

A ``spec.json`` sits beside the ONNX files too; it is the fallback when the metadata has no spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from retinaedge.runtime._lazy import require
from retinaedge.runtime.errors import InputError, ModelError, RetinaEdgeError
from retinaedge.runtime.runner import Runner
from retinaedge.runtime.spec import DetectorSpec

if TYPE_CHECKING:
    import onnx

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")

META_SPEC = "retinaedge.spec"
META_PRECISION = "retinaedge.precision"
META_NMS = "retinaedge.nms"
META_TARGET = "retinaedge.target"
META_KEEP_HIGH = "retinaedge.keep_high"


def load_runner(path: str | Path, **kwargs: Any) -> Runner:
    """The runner for a model file, chosen by suffix; nothing is allocated until it is activated.

    Args:
        path: ``.onnx`` -> `retinaedge.runtime.ort_runner.OrtRunner`; ``.engine`` / ``.plan`` ->
            `retinaedge.runtime.trt_runner.TrtRunner`.
        **kwargs: passed to the runner's constructor (``spec=``, ``raw=``, ``threads=`` ...).

    Raises:
        InputError: for any other suffix.
        ModelError: if the file is missing or unreadable (from the runner).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from retinaedge.runtime.ort_runner import OrtRunner

        return OrtRunner(path=p, **kwargs)
    if suffix in ENGINE_SUFFIXES:
        from retinaedge.runtime.trt_runner import TrtRunner

        return TrtRunner(path=p, **kwargs)
    raise InputError(
        f"model {str(p)!r} has suffix {suffix!r}; allowed: {list(ONNX_SUFFIXES + ENGINE_SUFFIXES)} "
        "(ONNX for ONNX Runtime, a TensorRT engine from 'retinaedge build')"
    )


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
