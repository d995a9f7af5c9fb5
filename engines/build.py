"""Build a TensorRT engine from an exported ONNX: ``DIR/model.<precision>.engine`` + ``.engine.json`` sidecar.

One function, `build_engine`, in the order TensorRT wants it: plugins (EfficientNMS_TRT) -> network (strongly or
weakly typed, see `retinaedge.engines.capability`) -> ONNX parse (errors collected into `EngineBuildError`) ->
builder config (workspace cap, optimisation profile for the dynamic batch, precision flags and calibrator on the
weakly-typed path, DLA with GPU fallback, version/hardware compatibility, timing cache) ->
``build_serialized_network`` -> engine inspector: the share of layers per precision is recorded, and a build
whose layers do not match the request fails (other projects shipped "FP16" engines that were FP32).

The plan is written as raw bytes (trtexec, DeepStream and Triton load it); everything else goes in the sidecar.
Nothing here has run on a GPU in this project's CI: it is written and type-checked against TensorRT's real API
(tensorrt-stubs 10.13) and exercised on CPU with namespaces of the 8.6 / 10.3 / 11.1 bindings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from retinaedge.engines.calibrator import (
    CalibrationBatcher,
    calibration_cache_key,
    calibration_images,
    make_entropy_calibrator,
)
from retinaedge.engines.capability import (
    ONNX_KINDS,
    REQUESTED_PRECISIONS,
    BuildPath,
    OnnxKind,
    RequestedPrecision,
    TrtCapabilities,
    choose_path,
    detect,
)
from retinaedge.runtime._lazy import require
from retinaedge.runtime.cuda import CudaApi, PyCudaApi
from retinaedge.runtime.engine_meta import EngineSidecar, sidecar_path
from retinaedge.runtime.errors import EngineBuildError, InputError
from retinaedge.runtime.io import atomic_write_bytes, ensure_writable_dir, sha256_file
from retinaedge.runtime.spec import DetectorSpec

if TYPE_CHECKING:
    import tensorrt

DEFAULT_BATCH = (1, 1, 8)
"""min:opt:max of the dynamic batch profile when none is given (opt 1: edge latency)."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything `build_engine` needs.

    Attributes:
        onnx: the exported ONNX (``model.fp32.onnx``, ``model.fp16.onnx`` or ``model.int8.onnx``).
        out_dir: where ``model.<precision>.engine`` and its ``.json`` sidecar are written.
        precision: ``auto`` (the ONNX's own), ``fp32``, ``fp16`` or ``int8``.
        batch: ``(min, opt, max)`` of the dynamic batch profile; None: `DEFAULT_BATCH`, or the ONNX's
            static batch.
        workspace_mb: cap of TensorRT's workspace memory pool.
        dla_core: build for this DLA core (Jetson AGX/NX) with GPU fallback; needs fp16 or int8.
        timing_cache: timing cache file, read if present and written after the build.
        calib_data: calibration images (a folder or a dataset root) for weakly-typed INT8 from an FP32 ONNX.
        calib_batch_size: images per calibration batch (clipped to the batch profile).
        calib_max_images: at most this many calibration images (sorted by name).
        version_compatible: ``BuilderFlag.VERSION_COMPATIBLE`` (runs on later TensorRT of the same major).
        hardware_compatible: ``HardwareCompatibilityLevel.AMPERE_PLUS`` (runs on any Ampere+ GPU).
        strongly_typed: None (auto), True (strongly typed or refuse), False (weakly typed or refuse).
        onnx_kind: ``auto`` (from the file name ``model.<fp32|fp16|int8>.onnx``, else its content) or explicit.
        spec: the model's ``spec.json``; None: the one beside the ONNX.
        require_timing_cache_hit: fail the build if any tactic is not in the timing cache
            (``BuilderFlag.ERROR_ON_TIMING_CACHE_MISS``, TRT >= 10): reproducible rebuilds.
    """

    onnx: Path
    out_dir: Path
    precision: RequestedPrecision = "auto"
    batch: tuple[int, int, int] | None = None
    workspace_mb: int = 2048
    dla_core: int | None = None
    timing_cache: Path | None = None
    calib_data: Path | None = None
    calib_batch_size: int = 8
    calib_max_images: int = 512
    version_compatible: bool = False
    hardware_compatible: bool = False
    strongly_typed: bool | None = None
    onnx_kind: OnnxKind | Literal["auto"] = "auto"
    spec: Path | None = None
    require_timing_cache_hit: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "onnx", Path(self.onnx))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        for name in ("timing_cache", "calib_data", "spec"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, Path(v))
        if self.precision not in REQUESTED_PRECISIONS:
            raise InputError(f"precision={self.precision!r} is not one of {list(REQUESTED_PRECISIONS)}")
        if self.onnx_kind not in ("auto", *ONNX_KINDS):
            raise InputError(f"onnx_kind={self.onnx_kind!r} is not one of {['auto', *ONNX_KINDS]}")
        if self.batch is not None:
            b = tuple(self.batch)
            if len(b) != 3 or not all(isinstance(v, int) for v in b) or not 1 <= b[0] <= b[1] <= b[2]:
                raise InputError(f"batch={self.batch!r} must be min:opt:max integers with 1 <= min <= opt <= max")
        if not isinstance(self.workspace_mb, int) or self.workspace_mb < 1:
            raise InputError(f"workspace_mb={self.workspace_mb!r} must be an integer >= 1 (MiB)")
        if self.dla_core is not None and (not isinstance(self.dla_core, int) or self.dla_core < 0):
            raise InputError(f"dla_core={self.dla_core!r} must be an integer >= 0 (0 or 1 on Jetson AGX Orin)")
        for name in ("calib_batch_size", "calib_max_images"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name}={v!r} must be an integer >= 1")


@dataclass(frozen=True)
class BuildResult:
    """What `build_engine` wrote and how."""

    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    path: BuildPath
    notes: tuple[str, ...] = field(default=())


def onnx_kind_of(path: Path, declared: OnnxKind | Literal["auto"] = "auto") -> OnnxKind:
    """What an ONNX holds: from ``declared``, else the export's file names, else its content (needs ``onnx``).

    Raises:
        InputError: for ``model.int8-cpu.onnx`` (ONNX Runtime's asymmetric U8S8, which TensorRT rejects), or when
            the kind cannot be told.
    """
    if declared != "auto":
        return declared
    name = path.name.lower()
    if name.endswith(".int8-cpu.onnx"):
        raise InputError(
            f"{path.name} is the CPU INT8 model (asymmetric U8 activations; TensorRT needs symmetric INT8); "
            "build from model.int8.onnx"
        )
    by_suffix: dict[str, OnnxKind] = {".fp32.onnx": "fp32", ".fp16.onnx": "fp16", ".int8.onnx": "qdq"}
    for suffix, kind in by_suffix.items():
        if name.endswith(suffix):
            return kind
    onnx = require("onnx", purpose=f"telling the precision of {path.name} (or name it model.<fp32|fp16|int8>.onnx)")
    model = onnx.load(str(path), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


# ---- layer precision from the engine inspector -------------------------------------------------------
_DTYPE_TOKENS = (("BFLOAT16", "other"), ("FP16", "fp16"), ("HALF", "fp16"), ("INT8", "int8"), ("FP32", "fp32"),
                 ("FLOAT", "fp32"))


def _layer_precision(layer: dict[str, Any]) -> str:
    """Precision of one layer from DETAILED inspector JSON: its first input's ``Format/Datatype``, as
    trt-engine-explorer (TREx ``trex/layer.py``) does; its first output for layers without inputs."""
    tensors = layer.get("Inputs") or layer.get("Outputs") or []
    if not tensors or not isinstance(tensors[0], dict):
        return "other"
    fmt = str(tensors[0].get("Format/Datatype", "")).upper()
    for token, precision in _DTYPE_TOKENS:
        if token in fmt:
            return precision
    return "other"


def layer_precision_shares(engine_information: str) -> tuple[dict[str, float], int]:
    """Share of layers per precision from ``EngineInspector.get_engine_information(LayerInformationFormat.JSON)``.

    Args:
        engine_information: the inspector's JSON (``{"Layers": [...], "Bindings": [...]}``) with layers as
            dicts, which needs ``ProfilingVerbosity.DETAILED``.

    Returns:
        ``({"fp32": s, "fp16": s, "int8": s, "other": s}, num_layers)``, shares summing to 1.

    Raises:
        EngineBuildError: if the layers carry no type information (verbosity not DETAILED).
    """
    try:
        layers = json.loads(engine_information).get("Layers", [])
    except (json.JSONDecodeError, AttributeError):
        raise EngineBuildError(
            f"engine inspector output is not the expected JSON ({engine_information[:80]!r}); cannot verify "
            "the engine's precision"
        ) from None
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        raise EngineBuildError(
            "engine inspector reported no per-layer types (profiling verbosity is not DETAILED?); cannot "
            "verify the engine's precision"
        )
    counts = {"fp32": 0, "fp16": 0, "int8": 0, "other": 0}
    for layer in layers:
        counts[_layer_precision(layer)] += 1
    n = len(layers)
    return {k: round(v / n, 4) for k, v in counts.items()}, n


def check_layer_precisions(precision: str, shares: dict[str, float]) -> None:
    """Refuse an engine whose layers do not show the requested precision.

    fp32: no fp16 or int8 layer; fp16: some fp16 layers and no int8; int8: some int8 layers.

    Raises:
        EngineBuildError: naming the shares found.
    """
    fp16, int8 = shares.get("fp16", 0.0), shares.get("int8", 0.0)
    ok = {"fp32": fp16 == 0 and int8 == 0, "fp16": fp16 > 0 and int8 == 0, "int8": int8 > 0}.get(precision, False)
    if not ok:
        found = ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
        raise EngineBuildError(
            f"a {precision} engine was requested but TensorRT built layers {found}; refusing to write it "
            "(check the ONNX kind and the build path, or build another precision)"
        )


# ---- the build ---------------------------------------------------------------------------------------
def _spec_for(config: BuildConfig) -> DetectorSpec:
    path = config.spec or config.onnx.with_name("spec.json")
    if not path.is_file():
        raise InputError(
            f"spec file {str(path)!r} does not exist; keep the spec.json that retinaedge export wrote beside "
            "the ONNX, or pass --spec"
        )
    return DetectorSpec.load(path)


def _check_options(config: BuildConfig, caps: TrtCapabilities, path: BuildPath, *, has_calibrator: bool) -> None:
    tv = f"TensorRT {caps.version}"
    if config.dla_core is not None:
        if not caps.dla:
            raise EngineBuildError(f"dla_core={config.dla_core} but {tv} has no DLA API; drop --dla")
        if path.precision == "fp32":
            raise EngineBuildError(f"dla_core={config.dla_core} needs an fp16 or int8 engine, got fp32; pass "
                                   "--precision fp16 or int8 with --dla")
        if config.hardware_compatible:
            raise EngineBuildError("hardware-compatible engines cannot use DLA; drop --dla or --hardware-compatible")
    if config.version_compatible and not caps.version_compatible:
        raise EngineBuildError(f"version_compatible=True but {tv} has no BuilderFlag.VERSION_COMPATIBLE (>= 8.6)")
    if config.hardware_compatible and not caps.hardware_compatible:
        raise EngineBuildError(f"hardware_compatible=True but {tv} has no HardwareCompatibilityLevel (>= 8.6)")
    if config.require_timing_cache_hit and not caps.timing_cache_miss_error:
        raise EngineBuildError(f"require_timing_cache_hit=True but {tv} has no ERROR_ON_TIMING_CACHE_MISS (>= 10.0)")
    if config.require_timing_cache_hit and config.timing_cache is None:
        raise EngineBuildError("require_timing_cache_hit=True needs a timing_cache file")
    if not caps.engine_inspector:
        raise EngineBuildError(f"{tv} has no engine inspector; the built precision cannot be verified (need >= 8.6)")
    if path.calibrator and config.calib_data is None and not has_calibrator:
        raise EngineBuildError(
            f"{path.describe()} needs calibration images: pass --calib-data DATA, or build from the Q/DQ "
            "model.int8.onnx instead"
        )


def _dims(shape: Any) -> list[int]:
    return [int(shape[i]) for i in range(len(shape))]


def build_engine(
    config: BuildConfig,
    *,
    trt_module: ModuleType | None = None,
    calibrator: tensorrt.IInt8Calibrator | None = None,
    cuda: CudaApi | None = None,
) -> BuildResult:
    """Build, verify and write ``config.out_dir/model.<precision>.engine`` and its sidecar.

    Args:
        config: the build settings.
        trt_module: the ``tensorrt`` module (default: imported); tests pass namespaces of other versions.
        calibrator: an INT8 calibrator to use instead of the built-in entropy calibrator (weakly-typed INT8).
        cuda: CUDA helper (default: `PyCudaApi` on device 0); used for the device name, compute capability and
            the calibrator's device buffer.

    Returns:
        The written paths, the sidecar and the path taken (`BuildPath.describe` says which).

    Raises:
        MissingDependencyError: without TensorRT (or PyCUDA), with the install hint.
        EngineBuildError: for a precision the installed TensorRT cannot honour, ONNX parse errors (all of them in
            ``.errors``), a failed build, or built layers that do not match the requested precision.
        InputError: for unusable files or options.
    """
    if TYPE_CHECKING:  # mypy checks every call below against tensorrt-stubs
        import tensorrt as trt
    else:
        trt = trt_module if trt_module is not None else require("tensorrt", purpose="building engines")
    caps = detect(trt)
    if not config.onnx.is_file():
        raise InputError(f"ONNX {str(config.onnx)!r} does not exist; pass a model.<precision>.onnx from export")
    spec = _spec_for(config)
    onnx_kind = onnx_kind_of(config.onnx, config.onnx_kind)
    path = choose_path(caps, config.precision, onnx_kind, strongly_typed=config.strongly_typed)
    if calibrator is not None and not path.calibrator:
        raise EngineBuildError(f"a calibrator was given but the {path.describe()} takes none")
    _check_options(config, caps, path, has_calibrator=calibrator is not None)
    out_dir = ensure_writable_dir(config.out_dir)
    onnx_sha = sha256_file(config.onnx)
    notes = [f"TensorRT {caps.version}: {path.describe()}"]
    cuda = cuda if cuda is not None else PyCudaApi(device=0)
    cuda.open()
    try:
        device_name, cc = cuda.device_name(), cuda.compute_capability()
        if config.hardware_compatible and cc < (8, 0):
            raise EngineBuildError(
                f"hardware_compatible=True needs an Ampere+ GPU to build on; {device_name} is {cc[0]}.{cc[1]}"
            )

        logger = trt.Logger(trt.Logger.WARNING)
        if not trt.init_libnvinfer_plugins(logger, ""):  # registers EfficientNMS_TRT before the parse
            raise EngineBuildError(
                "initLibNvInferPlugins failed, so EfficientNMS_TRT cannot resolve; check libnvinfer_plugin is installed"
            )
        builder = trt.Builder(logger)
        flags = 0
        if path.name == "strongly-typed":
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        if caps.needs_explicit_batch:  # TRT < 10 only; the flag is gone in 11
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        parsed = parser.parse_from_file(str(config.onnx))
        errors = tuple(str(parser.get_error(i)) for i in range(parser.num_errors))
        if not parsed or errors:
            first = errors[0] if errors else "no error reported"
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            raise EngineBuildError(
                f"TensorRT {caps.version} cannot parse {config.onnx.name}: {first}{more}; check the opset and that "
                "the export matches this TensorRT",
                errors=errors,
            )
        qdq_types = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
        has_qdq = any(network.get_layer(i).type in qdq_types for i in range(network.num_layers))
        if has_qdq != (onnx_kind == "qdq"):
            raise EngineBuildError(
                f"{config.onnx.name} was taken as a {onnx_kind} ONNX but its network {'has' if has_qdq else 'has no'} "
                "Q/DQ layers; name it model.<fp32|fp16|int8>.onnx as export does, or set onnx_kind"
            )

        bc = builder.create_builder_config()
        bc.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
        bc.profiling_verbosity = trt.ProfilingVerbosity.DETAILED

        # optimisation profile: the batch dimension only; H and W come from the spec and must be static
        batch = config.batch or DEFAULT_BATCH
        profile = builder.create_optimization_profile()
        dynamic: list[tuple[str, list[int]]] = []
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = _dims(tensor.shape)
            if any(d < 0 for d in shape[1:]):
                raise EngineBuildError(
                    f"input {tensor.name!r} has dynamic dims {shape} beyond the batch; export with a static HxW"
                )
            if shape[0] < 0:
                dynamic.append((tensor.name, shape[1:]))
                profile.set_shape(tensor.name, *(trt.Dims([b, *shape[1:]]) for b in batch))
            elif config.batch is not None and config.batch != (shape[0],) * 3:
                raise EngineBuildError(
                    f"input {tensor.name!r} has a static batch of {shape[0]}, so batch={config.batch} cannot be "
                    f"honoured; pass --batch {shape[0]}:{shape[0]}:{shape[0]} or export with a dynamic batch"
                )
            else:
                batch = (shape[0],) * 3
        if dynamic:
            bc.add_optimization_profile(profile)

        if path.fp16_flag:
            bc.set_flag(trt.BuilderFlag.FP16)
        if path.int8_flag:
            bc.set_flag(trt.BuilderFlag.INT8)
        calib_hash: str | None = None
        own_calibrator = None
        if path.calibrator:
            if calibrator is None:
                images = calibration_images(config.calib_data or Path(), max_images=config.calib_max_images)
                calib_hash = calibration_cache_key(onnx_sha, images, spec)
                calib_bs = min(max(config.calib_batch_size, batch[0]), batch[2])
                batcher = CalibrationBatcher(images=images, spec=spec, batch_size=calib_bs)
                own_calibrator = make_entropy_calibrator(
                    trt, batcher, out_dir / "calib" / "entropy2.cache", cuda, cache_key=calib_hash
                )
                calibrator = own_calibrator
                notes.append(f"calibrating on {len(images)} images, batch {calib_bs} (key {calib_hash[:12]})")
            bc.int8_calibrator = calibrator
            if dynamic:  # calibration runs at the calibration profile's opt shape
                calib_profile = builder.create_optimization_profile()
                bs = calibrator.get_batch_size()
                for name, rest in dynamic:
                    calib_profile.set_shape(name, *(trt.Dims([bs, *rest]) for _ in range(3)))
                bc.set_calibration_profile(calib_profile)

        if config.dla_core is not None:
            if builder.num_DLA_cores <= config.dla_core:
                raise EngineBuildError(
                    f"dla_core={config.dla_core} but this device has {builder.num_DLA_cores} DLA cores; "
                    "drop --dla (desktop GPUs have none)"
                )
            bc.default_device_type = trt.DeviceType.DLA
            bc.DLA_core = config.dla_core
            bc.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        if config.version_compatible:
            bc.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if config.hardware_compatible:
            bc.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS

        cache_state = "none"
        if config.timing_cache is not None:
            blob = config.timing_cache.read_bytes() if config.timing_cache.is_file() else b""
            timing_cache = bc.create_timing_cache(blob)
            cache_state = "loaded" if blob else "new"
            if not bc.set_timing_cache(timing_cache, False):  # another GPU/TensorRT's cache: start afresh
                bc.set_timing_cache(bc.create_timing_cache(b""), False)
                cache_state = "rejected (other device or TensorRT), rebuilt"
            if config.require_timing_cache_hit:
                bc.set_flag(trt.BuilderFlag.ERROR_ON_TIMING_CACHE_MISS)

        t0 = time.perf_counter()
        try:
            plan = builder.build_serialized_network(network, bc)
        finally:
            if own_calibrator is not None:
                own_calibrator.free()
        build_time = time.perf_counter() - t0
        failure = getattr(own_calibrator, "failure", None)
        if failure is not None:
            raise EngineBuildError(f"INT8 calibration failed: {failure}") from failure
        if plan is None:
            raise EngineBuildError(
                f"TensorRT {caps.version} failed to build {config.onnx.name} as {path.describe()}; see the "
                "TensorRT log above (a larger --workspace can help)"
            )
        plan_bytes = bytes(memoryview(plan))
        if config.timing_cache is not None:
            atomic_write_bytes(config.timing_cache, bytes(memoryview(bc.get_timing_cache().serialize())))

        runtime = trt.Runtime(logger)
        if config.version_compatible:  # the plan embeds its lean runtime
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(plan_bytes)
        if engine is None:
            raise EngineBuildError("TensorRT built a plan it cannot deserialize; see the TensorRT log above")
        inspector = engine.create_engine_inspector()
        shares, num_layers = layer_precision_shares(
            inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        )
        check_layer_precisions(path.precision, shares)
    finally:
        cuda.close()

    engine_path = out_dir / f"model.{path.precision}.engine"
    build_options: dict[str, Any] = {
        "path": path.name,
        "onnx": str(config.onnx),
        "onnx_kind": onnx_kind,
        "fp16_flag": path.fp16_flag,
        "int8_flag": path.int8_flag,
        "calibrator": path.calibrator,
        "batch": list(batch),
        "workspace_mb": config.workspace_mb,
        "dla_core": config.dla_core,
        "timing_cache": str(config.timing_cache) if config.timing_cache else None,
        "timing_cache_state": cache_state,
        "version_compatible": config.version_compatible,
        "hardware_compatible": config.hardware_compatible,
    }
    if own_calibrator is not None:
        build_options["calib_batches"] = own_calibrator.batches_used
        build_options["calib_cache_hit"] = own_calibrator.cache_hit
    sidecar = EngineSidecar(
        trt_version=caps.version,
        device_name=device_name,
        compute_capability=cc,
        precision=path.precision,
        spec=spec.to_dict(),
        onnx_sha256=onnx_sha,
        calib_hash=calib_hash,
        build_options=build_options,
        build_time_s=round(build_time, 3),
        layer_precisions=shares,
        num_layers=num_layers,
    )
    atomic_write_bytes(engine_path, plan_bytes)
    side = sidecar_path(engine_path)
    sidecar.save(side)
    return BuildResult(engine_path=engine_path, sidecar_path=side, sidecar=sidecar, path=path, notes=tuple(notes))
