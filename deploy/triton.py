"""Triton Inference Server model repository for a retinaedge TensorRT engine or ONNX model.

Writes the layout Triton loads (model_repository.md)::

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.plan     (platform "tensorrt_plan")   or   model.onnx (backend "onnxruntime")
    REPO/<name>/labels.txt               class names, one per line; line i is detection class i
    REPO/<name>/spec.json                the DetectorSpec, for clients that letterbox and map boxes back

Input/output names, data types and dims come from the ONNX graph (``onnx`` library) or, for an engine, from
the sidecar's spec and NMS mode — the same output contract the export stage writes (spec.IONames):

* ``efficient``: ``num_detections`` (B, 1) int32, ``detection_boxes`` (B, K, 4) float32 xyxy in
  network-input pixels, ``detection_scores`` (B, K) float32, ``detection_classes`` (B, K) int32;
* ``onnx``: ``boxes`` (B, N, 4) float32, ``scores`` (B, N, C) float32, ``selected_indices`` (M, 3) int64 —
  the last has no batch axis, so Triton cannot batch the model (``max_batch_size: 0``, full dims);
* ``none``: ``cls_logits`` / ``scores`` (B, N, C) and ``box_deltas`` / ``boxes`` (B, N, 4), float32.

With ``max_batch_size > 0`` Triton's dims leave out the batch axis (model_configuration.md "Maximum Batch
Size"). ``labels.txt`` is deliberately *not* referenced by ``label_filename``: Triton uses that field for its
classification extension, which treats the output as per-class scores and returns the top-n indices — our
``detection_classes`` holds class indices per detection, so the label file is for clients to read.

The ONNX Runtime backend cannot run the EfficientNMS_TRT plugin node; an ``efficient`` ONNX is refused there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retinaedge.runtime._lazy import require
from retinaedge.runtime.engine_meta import EngineSidecar
from retinaedge.runtime.errors import InputError, ModelError, SpecError
from retinaedge.runtime.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir, sha256_file
from retinaedge.runtime.onnxinfo import describe_onnx
from retinaedge.runtime.spec import DetectorSpec

Dim = int | str
"""A tensor dimension: a fixed size, or a symbolic name (dynamic; ``"batch"`` for the batch axis)."""

InstanceKind = Literal["auto", "gpu", "cpu"]
INSTANCE_KINDS: tuple[str, ...] = ("auto", "gpu", "cpu")

TRITON_DTYPES: dict[str, str] = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}

# onnx.TensorProto.DataType values -> our dtype names (onnx.proto: FLOAT=1, UINT8=2, INT8=3, INT32=6,
# INT64=7, BOOL=9, FLOAT16=10); written out so this table needs no onnx import.
_ONNX_DTYPES: dict[int, str] = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---- what is being deployed ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IOTensor:
    """One graph input or output.

    Attributes:
        name: tensor name in the graph / engine.
        dtype: numpy-style name, one of `TRITON_DTYPES`.
        dims: full shape including the batch axis; ``str`` entries are dynamic (symbolic) sizes.
    """

    name: str
    dtype: str
    dims: tuple[Dim, ...]


@dataclass(frozen=True)
class DeployModel:
    """A model file plus everything a deployment config needs to know about it.

    Attributes:
        kind: ``"engine"`` (raw TensorRT plan with a ``.json`` sidecar) or ``"onnx"``.
        path: the engine or ONNX file that gets deployed.
        spec: the detector spec (from the sidecar or the ONNX metadata / ``spec.json``).
        nms: ``"efficient"``, ``"onnx"`` or ``"none"``.
        precision: ``"fp32"``, ``"fp16"``, ``"int8"`` (or the ONNX's ``retinaedge.precision``).
        target: ``"tensorrt"`` or ``"cpu"`` (the ORT-only ``int8-cpu`` variant).
        inputs: graph inputs, the image input first.
        outputs: graph outputs.
        batch_profile: the engine's ``(min, opt, max)`` batch profile, when known.
        sidecar: the engine sidecar JSON (engines only).
        onnx_path: the ONNX an engine was built from, when given.
    """

    kind: Literal["engine", "onnx"]
    path: Path
    spec: DetectorSpec
    nms: str
    precision: str
    target: str
    inputs: tuple[IOTensor, ...]
    outputs: tuple[IOTensor, ...]
    batch_profile: tuple[int, int, int] | None = None
    sidecar: Mapping[str, Any] | None = None
    onnx_path: Path | None = None

    @property
    def batchable(self) -> bool:
        """True when every input and output has a dynamic leading batch axis (Triton can batch it)."""
        tensors = (*self.inputs, *self.outputs)
        if any(not t.dims or not isinstance(t.dims[0], str) for t in tensors):
            return False
        # ONNX NonMaxSuppression's (M, 3) indices: a dynamic leading axis that is not the batch
        return all(t.name != self.spec.io.selected_indices for t in self.outputs)


def spec_io(spec: DetectorSpec, nms: str) -> tuple[tuple[IOTensor, ...], tuple[IOTensor, ...]]:
    """Inputs and outputs of an exported graph, from the spec and NMS mode (the export contract).

    Returns:
        ``(inputs, outputs)``; ``"batch"`` marks the dynamic batch axis, ``"M"`` NMS's selection count.
    """
    io, b = spec.io, "batch"
    k, n, c = spec.postprocess.max_detections, spec.num_anchors, spec.num_classes
    inputs = (IOTensor(io.input, spec.input_dtype, (b, 3, spec.input_height, spec.input_width)),)
    outputs: tuple[IOTensor, ...]
    if nms == "efficient":
        outputs = (
            IOTensor(io.num_detections, "int32", (b, 1)),
            IOTensor(io.detection_boxes, "float32", (b, k, 4)),
            IOTensor(io.detection_scores, "float32", (b, k)),
            IOTensor(io.detection_classes, "int32", (b, k)),
        )
    elif nms == "onnx":
        outputs = (
            IOTensor(io.boxes, "float32", (b, n, 4)),
            IOTensor(io.scores, "float32", (b, n, c)),
            IOTensor(io.selected_indices, "int64", ("M", 3)),
        )
    elif nms == "none":
        outputs = (
            IOTensor(io.cls_logits, "float32", (b, n, c)),
            IOTensor(io.box_deltas, "float32", (b, n, 4)),
            IOTensor(io.boxes, "float32", (b, n, 4)),
            IOTensor(io.scores, "float32", (b, n, c)),
        )
    else:
        raise SpecError(f"nms={nms!r} is not allowed; choose one of ['efficient', 'onnx', 'none']")
    return inputs, outputs


def _parse_batch_profile(value: object) -> tuple[int, int, int] | None:
    """``"1:4:8"``, ``[1, 4, 8]`` or ``{"min": 1, "opt": 4, "max": 8}`` -> ``(1, 4, 8)``; None if absent."""
    if value is None:
        return None
    parts: list[object]
    if isinstance(value, str):
        parts = list(value.split(":"))
    elif isinstance(value, list | tuple):
        parts = list(value)
    elif isinstance(value, Mapping):
        parts = [value.get("min"), value.get("opt"), value.get("max")]
    else:
        parts = []
    try:
        lo, opt, hi = (int(str(p)) for p in parts)
    except ValueError:
        lo = opt = hi = 0
    if len(parts) != 3 or not 1 <= lo <= opt <= hi:
        raise ModelError(
            f"sidecar build_options.batch={value!r} is not a batch profile; expected 'min:opt:max' with "
            "1 <= min <= opt <= max (rebuild with retinaedge build --batch 1:4:8)"
        )
    return lo, opt, hi


def load_sidecar(engine: str | Path) -> EngineSidecar:
    """The engine's ``<engine>.json`` sidecar, read by the runtime's own reader (`EngineSidecar`).

    Raises:
        ModelError: if the engine or its sidecar is missing, or the sidecar is not one ``retinaedge build`` wrote.
    """
    e = Path(engine)
    if not e.is_file():
        raise ModelError(f"engine {str(e)!r} does not exist; build one with retinaedge build")
    return EngineSidecar.for_engine(e)


def _onnx_io(model: Any, path: Path) -> tuple[tuple[IOTensor, ...], tuple[IOTensor, ...]]:
    init = {t.name for t in model.graph.initializer}

    def convert(v: Any) -> IOTensor:
        tt = v.type.tensor_type
        dtype = _ONNX_DTYPES.get(tt.elem_type)
        if dtype is None:
            raise ModelError(
                f"{str(path)!r}: tensor {v.name!r} has ONNX element type {tt.elem_type}, which has no Triton "
                f"mapping here; supported: {sorted(_ONNX_DTYPES.values())}"
            )
        dims: list[Dim] = []
        for d in tt.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
        return IOTensor(v.name, dtype, tuple(dims))

    inputs = tuple(convert(v) for v in model.graph.input if v.name not in init)
    outputs = tuple(convert(v) for v in model.graph.output)
    return inputs, outputs


def load_onnx_model(path: str | Path) -> DeployModel:
    """Read an exported ONNX's IO, spec (metadata or ``spec.json`` beside it), NMS mode and precision.

    Raises:
        ModelError: if the file is missing, unreadable, stores external data, or carries no spec.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"ONNX file {str(p)!r} does not exist; export one with retinaedge export")
    onnx = require("onnx", purpose="reading the ONNX graph's inputs and outputs")
    decode_error = require("google.protobuf.message").DecodeError
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (decode_error, OSError, ValueError) as exc:
        raise ModelError(f"ONNX file {str(p)!r} cannot be read ({exc}); re-export it") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ModelError(
            f"ONNX file {str(p)!r} keeps weights in external data files; a deployment needs one "
            "self-contained .onnx (re-export without external data)"
        )
    info = describe_onnx(p, model=model)  # spec, NMS mode, precision and target as every stage reads them
    spec, nms = info.spec, info.nms
    inputs, outputs = _onnx_io(model, p)
    if spec.io.input not in [t.name for t in inputs]:
        raise ModelError(
            f"ONNX file {str(p)!r} has inputs {[t.name for t in inputs]} but its spec names the image "
            f"input {spec.io.input!r}; re-export it"
        )
    inputs = tuple(sorted(inputs, key=lambda t: t.name != spec.io.input))
    return DeployModel(
        kind="onnx",
        path=p,
        spec=spec,
        nms=nms,
        precision=info.precision,
        target=info.target,
        inputs=inputs,
        outputs=outputs,
    )


def load_engine_model(engine: str | Path, onnx: str | Path | None = None) -> DeployModel:
    """Describe a TensorRT engine from its sidecar (and, if given, the ONNX it was built from).

    Without ``onnx`` the IO comes from the sidecar's spec and NMS mode (`spec_io`). With it, the IO is read
    from the ONNX, after checking its sha256 against the sidecar's ``onnx_sha256``.

    Raises:
        ModelError: missing engine or sidecar, or an ONNX that is not the one the engine was built from.
    """
    e = Path(engine)
    side = load_sidecar(e)
    try:
        spec = DetectorSpec.from_dict(side.spec)
    except (SpecError, TypeError, AttributeError) as exc:
        raise ModelError(f"engine sidecar of {str(e)!r} holds an invalid spec ({exc}); rebuild the engine") from None
    build_options = side.build_options
    profile = _parse_batch_profile(build_options.get("batch") if isinstance(build_options, Mapping) else None)
    onnx_path: Path | None = None
    if onnx is None:
        inputs, outputs = spec_io(spec, spec.nms)
    else:
        src = load_onnx_model(onnx)
        onnx_path = src.path
        recorded = side.onnx_sha256
        if recorded:
            actual = sha256_file(src.path)
            if actual != recorded:
                raise ModelError(
                    f"ONNX {str(src.path)!r} (sha256 {actual[:12]}…) is not the one engine {str(e)!r} was built "
                    f"from (sidecar onnx_sha256 {str(recorded)[:12]}…); pass the ONNX given to retinaedge build"
                )
        inputs, outputs = src.inputs, src.outputs
    return DeployModel(
        kind="engine",
        path=e,
        spec=spec,
        nms=spec.nms,
        precision=side.precision,
        target="tensorrt",
        inputs=inputs,
        outputs=outputs,
        batch_profile=profile,
        sidecar=side.to_dict(),
        onnx_path=onnx_path,
    )


def load_deploy_model(*, engine: str | Path | None = None, onnx: str | Path | None = None) -> DeployModel:
    """An engine (optionally with its source ONNX) or an ONNX alone.

    Raises:
        InputError: if neither is given.
    """
    if engine is not None:
        return load_engine_model(engine, onnx)
    if onnx is not None:
        return load_onnx_model(onnx)
    raise InputError("no model given; pass --engine FILE (TensorRT) or --onnx FILE (ONNX Runtime)")


def check_class_names(names: Sequence[str]) -> None:
    """Refuse class names that would break a one-name-per-line label file."""
    for n in names:
        if not n.strip() or any(ch in n for ch in "\r\n"):
            raise SpecError(f"class name {n!r} is empty or contains a line break; label files hold one per line")


def labels_text(spec: DetectorSpec) -> str:
    """Class names one per line; line ``i`` (0-based) names ``detection_classes == i``."""
    check_class_names(spec.class_names)
    return "".join(f"{n}\n" for n in spec.class_names)


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temp file and ``os.replace`` (never a half-written model)."""
    if src.resolve() == dst.resolve():
        return
    atomic_write_bytes(dst, src.read_bytes())


# ---- Triton ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TritonConfig:
    """What `write_triton_repo` writes.

    Attributes:
        repo: the model repository directory (``tritonserver --model-repository REPO``).
        engine: a TensorRT engine to serve with the TensorRT backend (its ``.json`` sidecar beside it).
        onnx: an ONNX to serve with the ONNX Runtime backend; with ``engine``, the ONNX the engine was
            built from (only read, for exact IO shapes).
        name: model name (the directory under ``repo``).
        version: model version directory (>= 1).
        max_batch: Triton ``max_batch_size``; None picks the engine profile's max (engines) or 8 (ONNX),
            and 0 for a model Triton cannot batch; 0 disables batching.
        instances: model instances (``instance_group.count``).
        preferred_batch: ``dynamic_batching.preferred_batch_size``; None picks the profile's opt and
            max_batch (engines) or max_batch (ONNX).
        max_queue_delay_us: ``dynamic_batching.max_queue_delay_microseconds``.
        kind: instance kind; ``auto`` is KIND_GPU for engines, KIND_CPU for a CPU-target ONNX, else KIND_AUTO.
    """

    repo: Path
    engine: Path | None = None
    onnx: Path | None = None
    name: str = "retinaedge"
    version: int = 1
    max_batch: int | None = None
    instances: int = 1
    preferred_batch: tuple[int, ...] | None = None
    max_queue_delay_us: int = 100
    kind: InstanceKind = "auto"

    def __post_init__(self) -> None:
        if not _MODEL_NAME.match(self.name):
            raise InputError(
                f"model name {self.name!r} is not a plain directory name; use letters, digits, '_', '.', '-'"
            )
        for field_name, low in (("version", 1), ("instances", 1), ("max_queue_delay_us", 0)):
            v = getattr(self, field_name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise InputError(f"{field_name}={v!r} must be an integer >= {low}")
        if self.max_batch is not None and (not isinstance(self.max_batch, int) or self.max_batch < 0):
            raise InputError(f"max_batch={self.max_batch!r} must be an integer >= 0 (0 disables batching)")
        if self.kind not in INSTANCE_KINDS:
            raise InputError(f"kind={self.kind!r} is not allowed; choose one of {list(INSTANCE_KINDS)}")


@dataclass(frozen=True)
class TritonRepo:
    """Files `write_triton_repo` wrote and the main choices it made."""

    model_dir: Path
    config_path: Path
    model_path: Path
    labels_path: Path
    spec_path: Path
    backend: Literal["tensorrt", "onnxruntime"]
    max_batch_size: int
    model: DeployModel


def _resolve_batching(model: DeployModel, cfg: TritonConfig) -> tuple[int, tuple[int, ...]]:
    """(max_batch_size, preferred batch sizes) for ``model`` under ``cfg``."""
    if not model.batchable:
        if cfg.max_batch:
            shapes = {t.name: t.dims for t in (*model.inputs, *model.outputs)}
            raise InputError(
                f"max_batch={cfg.max_batch} needs every input and output to lead with the batch axis, but "
                f"{str(model.path)!r} has {shapes}; use --max-batch 0 (no Triton batching)"
            )
        return 0, ()
    prof = model.batch_profile
    if cfg.max_batch is None:
        max_batch = prof[2] if prof else 8
    else:
        max_batch = cfg.max_batch
    if max_batch == 0:
        return 0, ()
    if prof is not None:
        if max_batch > prof[2]:
            raise InputError(
                f"max_batch={max_batch} exceeds the engine's batch profile {prof[0]}:{prof[1]}:{prof[2]}; "
                f"use --max-batch {prof[2]} or rebuild with a larger --batch max"
            )
        if prof[0] > 1:
            raise ModelError(
                f"engine batch profile {prof[0]}:{prof[1]}:{prof[2]} cannot run batch 1, which Triton sends; "
                f"rebuild with --batch 1:{prof[1]}:{prof[2]}"
            )
    if cfg.preferred_batch is not None:
        preferred = tuple(sorted(set(cfg.preferred_batch)))
        bad = [b for b in preferred if not 1 <= b <= max_batch]
        if bad:
            raise InputError(f"preferred batch sizes {bad} are outside 1..max_batch={max_batch}")
    elif prof is not None:
        preferred = tuple(sorted({b for b in (prof[1], max_batch) if 1 <= b <= max_batch}))
    else:
        preferred = (max_batch,)
    return max_batch, preferred


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    if any(ord(ch) < 32 for ch in text):
        raise InputError(f"name {text!r} contains control characters; rename the tensor or model")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims_text(dims: Sequence[Dim]) -> str:
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims) + " ]"


def _tensor_block(t: IOTensor, batched: bool) -> str:
    dims = t.dims[1:] if batched else t.dims
    return (
        "  {\n"
        f"    name: {_quote(t.name)}\n"
        f"    data_type: {TRITON_DTYPES[t.dtype]}\n"
        f"    dims: {_dims_text(dims)}\n"
        "  }"
    )


def triton_config_text(
    model: DeployModel,
    *,
    name: str,
    max_batch_size: int,
    preferred_batch: Sequence[int],
    max_queue_delay_us: int,
    instances: int,
    kind: str,
) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``).

    Args:
        model: the model being served; its ``kind`` picks ``platform: "tensorrt_plan"`` (engine) or
            ``backend: "onnxruntime"`` (ONNX).
        name: model name; must equal the model directory name.
        max_batch_size: 0 for no batching (dims are then full shapes, batch axis included).
        preferred_batch: preferred batch sizes for the dynamic batcher (ignored when not batching).
        max_queue_delay_us: how long the dynamic batcher may wait to fill a batch.
        instances: instance count.
        kind: ``KIND_GPU``, ``KIND_CPU`` or ``KIND_AUTO``.
    """
    for t in (*model.inputs, *model.outputs):
        if t.dtype not in TRITON_DTYPES:
            raise ModelError(f"tensor {t.name!r} has dtype {t.dtype!r}; supported: {sorted(TRITON_DTYPES)}")
    batched = max_batch_size > 0
    source = model.path.name
    lines = [f"# Generated by retinaedge export-triton from {source} (precision {model.precision}, nms {model.nms})."]
    if model.kind == "engine" and model.sidecar is not None:
        side = model.sidecar
        lines.append(
            f"# TensorRT plan built with TensorRT {side.get('trt_version', '?')} on {side.get('device_name', '?')} "
            f"(compute capability {side.get('compute_capability', '?')}): serve it with a Triton release whose "
            "TensorRT is that version, on that GPU model."
        )
    lines.append(
        "# labels.txt (beside this file): class names, line i = detection class i; not a label_filename "
        "(Triton's classification extension would rank values as scores)."
    )
    lines.append(f"name: {_quote(name)}")
    if model.kind == "engine":
        lines.append('platform: "tensorrt_plan"')
    else:
        lines.append('backend: "onnxruntime"')
    lines.append(f"max_batch_size: {max_batch_size}")
    lines.append("input [\n" + ",\n".join(_tensor_block(t, batched) for t in model.inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor_block(t, batched) for t in model.outputs) + "\n]")
    if batched:
        lines.append(
            "dynamic_batching {\n"
            f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred_batch)} ]\n"
            f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
            "}"
        )
    lines.append("instance_group [\n  {\n" f"    count: {instances}\n    kind: {kind}\n" "  }\n]")
    return "\n".join(lines) + "\n"


def _instance_kind(model: DeployModel, kind: str) -> str:
    if model.kind == "engine":
        if kind == "cpu":
            raise InputError("kind='cpu' cannot serve a TensorRT engine; use --kind gpu (or auto)")
        return "KIND_GPU"
    if kind == "auto":
        return "KIND_CPU" if "cpu" in model.target else "KIND_AUTO"
    return {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}[kind]


def write_triton_repo(config: TritonConfig) -> TritonRepo:
    """Write a Triton model repository entry for an engine (TensorRT backend) or ONNX (ONNX Runtime backend).

    Returns:
        The written paths and the batching chosen.

    Raises:
        InputError: no model, bad option, or a non-writable repo directory.
        ModelError: missing engine/sidecar/ONNX, an EfficientNMS ONNX for ONNX Runtime, an engine profile
            Triton cannot use.
    """
    model = load_deploy_model(engine=config.engine, onnx=config.onnx)
    if model.kind == "onnx" and model.nms == "efficient":
        raise ModelError(
            f"{str(model.path)!r} ends in EfficientNMS_TRT, which ONNX Runtime cannot run; export with "
            "--nms onnx (or none) for Triton's onnxruntime backend, or build an engine and pass --engine"
        )
    max_batch, preferred = _resolve_batching(model, config)
    kind = _instance_kind(model, config.kind)
    labels = labels_text(model.spec)
    text = triton_config_text(
        model,
        name=config.name,
        max_batch_size=max_batch,
        preferred_batch=preferred,
        max_queue_delay_us=config.max_queue_delay_us,
        instances=config.instances,
        kind=kind,
    )
    repo = ensure_writable_dir(config.repo)
    model_dir = repo / config.name
    version_dir = ensure_writable_dir(model_dir / str(config.version))
    model_path = version_dir / ("model.plan" if model.kind == "engine" else "model.onnx")
    copy_atomic(model.path, model_path)
    labels_path = model_dir / "labels.txt"
    atomic_write_text(labels_path, labels)
    spec_path = model_dir / "spec.json"
    model.spec.save(spec_path)
    config_path = model_dir / "config.pbtxt"
    atomic_write_text(config_path, text)  # last: a repo with a config always has its model
    return TritonRepo(
        model_dir=model_dir,
        config_path=config_path,
        model_path=model_path,
        labels_path=labels_path,
        spec_path=spec_path,
        backend="tensorrt" if model.kind == "engine" else "onnxruntime",
        max_batch_size=max_batch,
        model=model,
    )
