"""Build a TensorRT engine from an exported ONNX: ``DIR/model.<precision>.engine`` + ``.engine.json`` sidecar.

One function, `build_engine`, in the order TensorRT wants it: plugins (EfficientNMS_TRT) -> network (strongly or
weakly typed, see `retinaedge.engines.capability`) -> ONNX parse (errors collected into `EngineBuildError`) ->
builder config (workspace cap, optimisation profile for the dynamic batch, precision flags and calibrator on the
weakly-typed path, DLA with GPU fallback, version/hardware compatibility, timing cache) ->
``build_serialized_network`` -> engine inspector: the share of layers per precision is recorded, and a build
whose layers do not match the request fails (other projects shipped "FP16" engines that were FP32). The
inspector's 8.6/10.x and 11.x JSON shapes and the rule per build path (what fails, what only warns) are written
down in `retinaedge.engines.inspector`.

On the weakly-typed FP16 path (and the INT8 one, which sets FP16 too) the box-delta clamp, the decode and the
NMS plugin are pinned to FP32 (`fp32_tail_layers`, ``OBEY_PRECISION_CONSTRAINTS``), as the strongly-typed FP16
ONNX keeps them; a weakly-typed INT8 build of an ONNX with ``retinaedge.keep_high`` (issue 11) pins those ONNX
nodes' layers to the kept dtype. Refused before building: a DLA build whose batch profile is not fixed, and a
version-compatible build of an EfficientNMS graph (the plugin cannot travel with the plan). On TensorRT >= 11 an
EfficientNMS graph builds with a warning naming ``--nms onnx`` (the plugin is deprecated since 10.12).

The plan is written as raw bytes (trtexec, DeepStream and Triton load it); everything else goes in the sidecar.
Nothing here has run on a GPU in this project's CI: it is written and type-checked against TensorRT's real API
(tensorrt-stubs 10.13) and exercised on CPU with namespaces of the 8.6 / 10.3 / 11.1 bindings.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from retinaedge.engines import inspector
from retinaedge.engines.calibrator import (
    CalibrationBatcher,
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
from retinaedge.runtime.calibration import calibration_images, calibration_key
from retinaedge.runtime.cuda import CudaApi, PyCudaApi
from retinaedge.runtime.engine_meta import AMPERE, EngineSidecar, sidecar_path
from retinaedge.runtime.errors import EngineBuildError, InputError, MissingDependencyError
from retinaedge.runtime.io import atomic_write_bytes, ensure_writable_dir, sha256_file
from retinaedge.runtime.onnxinfo import OnnxInfo, describe_onnx
from retinaedge.runtime.spec import DetectorSpec

layer_precision_shares = inspector.layer_precision_shares

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
        version_compatible: ``BuilderFlag.VERSION_COMPATIBLE`` (runs on later TensorRT: the same major, and a
            10.x build on 11.x; docs/TENSORRT.md "Version and hardware compatibility").
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
    warnings: tuple[str, ...] = field(default=())


_KIND_OF_PRECISION: dict[str, OnnxKind] = {"fp32": "fp32", "fp16": "fp16", "int8": "qdq", "int8-mixed": "qdq"}


def onnx_kind_of(path: Path, declared: OnnxKind | Literal["auto"] = "auto", *, info: OnnxInfo | None = None,
                 spec: DetectorSpec | None = None) -> OnnxKind:
    """What an ONNX holds: from ``declared``, else the export's file names, else `describe_onnx` (needs ``onnx``).

    Args:
        info: the file's `describe_onnx` if already read.
        spec: passed to `describe_onnx` (a bare ONNX without spec metadata or ``spec.json`` can still be told).

    Raises:
        InputError: for ``model.int8-cpu.onnx`` or an ONNX whose metadata says target ``cpu`` (ONNX Runtime's
            asymmetric U8S8, which TensorRT rejects).
    """
    if declared != "auto":
        return declared
    name = path.name.lower()
    cpu_hint = "build from model.int8.onnx"
    if name.endswith(".int8-cpu.onnx"):
        raise InputError(
            f"{path.name} is the CPU INT8 model (asymmetric U8 activations; TensorRT needs symmetric INT8); {cpu_hint}"
        )
    by_suffix: dict[str, OnnxKind] = {".fp32.onnx": "fp32", ".fp16.onnx": "fp16", ".int8.onnx": "qdq"}
    for suffix, kind in by_suffix.items():
        if name.endswith(suffix):
            return kind
    if info is None:
        info = describe_onnx(path, spec=spec)
    if info.target == "cpu":
        raise InputError(f"{path.name} says retinaedge.target='cpu' (ONNX Runtime's asymmetric INT8); {cpu_hint}")
    return _KIND_OF_PRECISION[info.precision]


def _describe(path: Path, spec: DetectorSpec) -> OnnxInfo | None:
    """`describe_onnx`, or None where the ``onnx`` package is not installed (a Jetson runtime install)."""
    try:
        return describe_onnx(path, spec=spec)
    except MissingDependencyError:
        return None


# ---- layer precision from the engine inspector -------------------------------------------------------
def check_layer_precisions(path: BuildPath, summary: inspector.LayerSummary, *,
                           explicit_quantization: bool = False) -> list[str]:
    """The per-path rule of `retinaedge.engines.inspector` (its docstring writes it down): warnings, or raises."""
    return inspector.check(path, summary, explicit_quantization=explicit_quantization)


# ---- per-layer precision constraints (weakly typed only) ---------------------------------------------
_SUFFIXED = re.compile(r"(.+)_\d+")


def _onnx_node_of(layer_name: str, nodes: set[str]) -> str | None:
    """The ONNX node a network layer came from: onnx-tensorrt names a node's first layer after the node and the
    rest ``<node>_<n>`` (ImporterContext::registerLayer -> generateUniqueName, weightUtils.cpp)."""
    if layer_name in nodes:
        return layer_name
    m = _SUFFIXED.fullmatch(layer_name)
    return m.group(1) if m and m.group(1) in nodes else None


def _pin(layer: tensorrt.ILayer, dtype: tensorrt.DataType, floats: tuple[tensorrt.DataType, ...], *,
         is_plugin: bool) -> bool:
    """``layer.precision`` and its float outputs' types to ``dtype``; False (untouched) for a layer with no float
    output that is not a plugin (shape and index layers: constraining them would only fail the build)."""
    outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
    if not outs and not is_plugin:
        return False
    layer.precision = dtype
    for j in outs:
        layer.set_output_type(j, dtype)
    return True


def plugin_layer_types(trt: ModuleType) -> tuple[Any, ...]:
    """``LayerType.PLUGIN*`` members of this TensorRT (PLUGIN_V3 is 10.x+)."""
    return tuple(getattr(trt.LayerType, n) for n in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3") if hasattr(trt.LayerType, n))


def fp32_tail_layers(network: tensorrt.INetworkDefinition, spec: DetectorSpec, plugins: tuple[Any, ...]) -> list[int]:
    """Indices of the network layers that must stay FP32: the box-delta clamp (the layer writing
    ``spec.io.box_deltas``), what reads the class logits (sigmoid or the plugin), every plugin layer
    (EfficientNMS_TRT) and everything downstream of those (the decode's ``exp``, the NMS): the layers the
    strongly-typed FP16 ONNX keeps in FP32 (docs/TENSORRT.md: confidence compression and ``exp`` overflow)."""
    producers: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    seeds: set[int] = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for k in range(layer.num_inputs):
            t = layer.get_input(k)
            if t is not None:
                consumers.setdefault(t.name, []).append(i)
        for j in range(layer.num_outputs):
            producers[layer.get_output(j).name] = i
        if layer.type in plugins:
            seeds.add(i)
    if spec.io.box_deltas in producers:
        seeds.add(producers[spec.io.box_deltas])
    seeds.update(consumers.get(spec.io.cls_logits, []))
    tail, todo = set(seeds), list(seeds)
    while todo:
        layer = network.get_layer(todo.pop())
        for j in range(layer.num_outputs):
            for c in consumers.get(layer.get_output(j).name, []):
                if c not in tail:
                    tail.add(c)
                    todo.append(c)
    return sorted(tail)


# ---- the build ---------------------------------------------------------------------------------------
def _spec_for(config: BuildConfig) -> DetectorSpec:
    path = config.spec or config.onnx.with_name("spec.json")
    if not path.is_file():
        raise InputError(
            f"spec file {str(path)!r} does not exist; keep the spec.json that retinaedge export wrote beside "
            "the ONNX, or pass --spec"
        )
    return DetectorSpec.load(path)


_VC_PLUGIN_REASON = (
    "TensorRT's version-compatible plugin library holds no EfficientNMS_TRT (NVIDIA/TensorRT v10.3.0 "
    "plugin/CMakeLists.txt builds libnvinfer_vc_plugin from VFC_PLUGIN_SOURCES, which only plugin/common and "
    "roiAlignPlugin add to) and libnvinfer_plugin exports only initLibNvInferPlugins (plugin/exports.map), not the "
    "getCreators entry a library given to IBuilderConfig.plugins_to_serialize needs (exports-vfc_plugin.map), so "
    "the plugin cannot be serialised with the plan"
)


def _check_options(config: BuildConfig, caps: TrtCapabilities, path: BuildPath, *, has_calibrator: bool,
                   nms: str) -> None:
    tv = f"TensorRT {caps.version}"
    if config.version_compatible and nms == "efficient":
        raise EngineBuildError(
            f"version_compatible=True with nms='efficient': {_VC_PLUGIN_REASON}; drop --version-compatible, or "
            "export with --nms onnx (INMSLayer, a built-in layer) and build that"
        )
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
    info = _describe(config.onnx, spec)
    onnx_kind = onnx_kind_of(config.onnx, config.onnx_kind, info=info, spec=spec)
    path = choose_path(caps, config.precision, onnx_kind, strongly_typed=config.strongly_typed)
    if calibrator is not None and not path.calibrator:
        raise EngineBuildError(f"a calibrator was given but the {path.describe()} takes none")
    nms = info.nms if info is not None else spec.nms
    _check_options(config, caps, path, has_calibrator=calibrator is not None, nms=nms)
    keep_high = info.keep_high if info is not None else None
    if info is None and "mixed" in config.onnx.name:
        raise EngineBuildError(
            f"{config.onnx.name} may carry a kept-high layer set (retinaedge.keep_high) but the onnx package that "
            "reads it is not installed; pip install onnx, then build again"
        )
    out_dir = ensure_writable_dir(config.out_dir)
    onnx_sha = sha256_file(config.onnx)
    notes = [f"TensorRT {caps.version}: {path.describe()}"]
    warnings: list[str] = []
    if caps.major >= 11 and nms == "efficient":
        # plugin/efficientNMSPlugin/README.md at v11.1: "deprecated since TensorRT 10.12 and will be removed";
        # INMSLayer (what ONNX NonMaxSuppression maps to) replaces it
        warnings.append(
            f"EfficientNMS_TRT is deprecated since TensorRT 10.12 and will be removed; on TensorRT {caps.version} "
            "re-export with `retinaedge export --nms onnx` (INMSLayer) and build that model instead"
        )
    cuda = cuda if cuda is not None else PyCudaApi(device=0)
    cuda.open()
    try:
        device_name, cc = cuda.device_name(), cuda.compute_capability()
        if config.hardware_compatible and cc < AMPERE:
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
        if path.name == "strongly-typed" and caps.strongly_typed_flag:  # TRT 9/10; deprecated + ignored in 11
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
        if config.dla_core is not None and dynamic and not batch[0] == batch[1] == batch[2]:
            # TensorRT docs, "DLA Supported Layers and Restrictions": DLA has no dynamic shapes (min = opt = max);
            # with GPU_FALLBACK a dynamic profile silently puts every layer on the GPU
            raise EngineBuildError(
                f"dla_core={config.dla_core} needs a fixed batch profile (DLA has no dynamic shapes: min = opt = max) "
                f"but batch is {batch[0]}:{batch[1]}:{batch[2]}; pass --batch {batch[1]} (= {batch[1]}:{batch[1]}:"
                f"{batch[1]}) with --dla"
            )

        if path.fp16_flag:
            bc.set_flag(trt.BuilderFlag.FP16)
        if path.int8_flag:
            bc.set_flag(trt.BuilderFlag.INT8)
        pinned: dict[str, int] = {}
        tail: list[int] = []
        plugins = plugin_layer_types(trt)
        floats = (trt.DataType.FLOAT, trt.DataType.HALF)
        if path.name == "weakly-typed" and path.fp16_flag:
            # FP16 is allowed for every layer here; the tail stays FP32 as in the strongly-typed FP16 ONNX
            tail = fp32_tail_layers(network, spec, plugins)
            pinned["fp32_tail"] = sum(
                _pin(layer, trt.DataType.FLOAT, floats, is_plugin=layer.type in plugins)
                for layer in (network.get_layer(i) for i in tail)
            )
        if path.name == "weakly-typed" and path.int8_flag and keep_high is not None:
            # issue 11: the kept-high set export --mixed chose, honoured on the implicit/weak path too
            nodes = set(keep_high["nodes"])
            dtype = trt.DataType.HALF if keep_high["dtype"] == "fp16" else trt.DataType.FLOAT
            hit: set[str] = set()
            count = 0
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                node = _onnx_node_of(layer.name, nodes)
                if node is not None and i in tail:  # the FP32 tail stays FP32 whatever the kept-high dtype
                    hit.add(node)
                elif node is not None and _pin(layer, dtype, floats, is_plugin=layer.type in plugins):
                    hit.add(node)
                    count += 1
            pinned["keep_high"] = count
            if nodes - hit:
                warnings.append(
                    f"{len(nodes - hit)} of {len(nodes)} kept-high ONNX nodes match no float network layer "
                    f"(e.g. {sorted(nodes - hit)[0]!r}); those run at TensorRT's choice"
                )
            notes.append(f"kept {count} layers of {len(hit)} ONNX nodes at {keep_high['dtype']} (retinaedge.keep_high)")
        if any(pinned.values()):
            bc.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            notes.append("precision constraints obeyed: " + ", ".join(f"{k} {v} layers" for k, v in pinned.items()))
        calib_hash: str | None = None
        own_calibrator = None
        if path.calibrator:
            if calibrator is None:
                images = calibration_images(config.calib_data or Path(), max_images=config.calib_max_images)
                calib_hash = calibration_key(onnx_sha, images, spec)
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
            if timing_cache is None:
                # an ill-formed blob gives nullptr (NVIDIA samples/utils/timingCache.cpp buildTimingCacheFromFile:
                # "TimingCache creation failed"); start afresh and write the new cache over it after the build
                if config.require_timing_cache_hit:
                    raise EngineBuildError(
                        f"timing cache {str(config.timing_cache)!r} ({len(blob)} bytes) is corrupt, so "
                        "require_timing_cache_hit=True cannot be met; delete it and build once without it"
                    )
                warnings.append(
                    f"timing cache {str(config.timing_cache)!r} ({len(blob)} bytes) is not a TensorRT timing cache "
                    "(corrupt or truncated); building with a new one, written over it"
                )
                timing_cache = bc.create_timing_cache(b"")
                cache_state = "corrupt, rebuilt"
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
        engine_inspector = engine.create_engine_inspector()
        summary = inspector.summarize(engine_inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        warnings += check_layer_precisions(path, summary, explicit_quantization=onnx_kind == "qdq")
        if config.dla_core is not None:
            notes.append(f"DLA core {config.dla_core}: {summary.dla_layers} of {summary.math_layers} layers "
                         f"({summary.dla_share:.0%}) on the DLA, the rest on the GPU")
            if not summary.dla_layers:
                warnings.append(f"dla_core={config.dla_core} but no layer runs on the DLA (all fell back to the GPU)")
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
        "nms": nms,
        "precision_constraints": pinned,
        "inspector_schema": summary.schema,
        "layers_excluded": summary.excluded,
        "layers_opaque": summary.opaque,
        "warnings": warnings,
    }
    if config.dla_core is not None:
        build_options["dla_layer_share"] = summary.dla_share
    if own_calibrator is not None:
        build_options["calib_batches"] = own_calibrator.batches_used
        build_options["calib_cache_hit"] = own_calibrator.cache_hit
    sidecar = EngineSidecar(  # build_options["dla_core"]: the runner sets Runtime.DLA_core from it
        trt_version=caps.version,
        device_name=device_name,
        compute_capability=cc,
        precision=path.precision,
        spec=spec.to_dict(),
        onnx_sha256=onnx_sha,
        calib_hash=calib_hash,
        build_options=build_options,
        build_time_s=round(build_time, 3),
        layer_precisions=summary.shares,
        num_layers=summary.num_layers,
    )
    atomic_write_bytes(engine_path, plan_bytes)
    side = sidecar_path(engine_path)
    sidecar.save(side)
    notes += [f"warning: {w}" for w in warnings]
    return BuildResult(engine_path=engine_path, sidecar_path=side, sidecar=sidecar, path=path, notes=tuple(notes),
                       warnings=tuple(warnings))
