"""What the installed TensorRT can do, detected by feature, and which build path honours a precision.

TensorRT 8.6 / 10.x (JetPack 5 / 6) build *weakly typed* networks: FP16/INT8 are builder flags and INT8 needs a
calibrator. TensorRT >= 10 also builds *strongly typed* networks, where the ONNX's own types decide (an FP16
ONNX gives FP16 layers, a Q/DQ ONNX gives INT8), and TensorRT 11 builds nothing else: its bindings have no
``BuilderFlag.FP16``/``INT8``, no ``IInt8EntropyCalibrator2``, no ``int8_calibrator`` and no
``EXPLICIT_BATCH`` (python/src/infer/pyCore.cpp at v11.1 against v10.3.0). So detection looks at the names the
module exports (``hasattr``), never at the version string, and `choose_path` refuses, in one line, a precision
the installed TensorRT cannot honour: never a silent FP32 engine when FP16 was asked.

The names TRT 11 removed are reached only through a `BuildPath` that `choose_path` made from these
capabilities (tests/engines/test_build.py runs the builder against an 11.x namespace that lacks them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from retinaedge.runtime.errors import EngineBuildError, InputError

RequestedPrecision = Literal["auto", "fp32", "fp16", "int8"]
Precision = Literal["fp32", "fp16", "int8"]
OnnxKind = Literal["fp32", "fp16", "qdq"]
"""What an ONNX holds: FP32 weights and math, FP16 (IO may stay FP32), or Q/DQ INT8 (ModelOpt PTQ)."""
PathName = Literal["strongly-typed", "weakly-typed"]

REQUESTED_PRECISIONS: tuple[str, ...] = get_args(RequestedPrecision)
ONNX_KINDS: tuple[str, ...] = get_args(OnnxKind)

_NATURAL: dict[str, Precision] = {"fp32": "fp32", "fp16": "fp16", "qdq": "int8"}
_EXPORT_FILE = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx (Q/DQ)"}


@dataclass(frozen=True)
class TrtCapabilities:
    """Feature set of a TensorRT Python module.

    Attributes:
        version: ``tensorrt.__version__`` (for messages and the sidecar only; never used to decide).
        major: leading integer of ``version``, -1 if unparsable.
        strongly_typed: the builder makes strongly typed networks: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
            exists (TRT 9.x / 10.x), or the module is TRT >= 11, or it has no ``BuilderFlag.FP16`` (a weakly-typed
            builder without its FP16 flag is none). TRT 11 deprecates that flag and ignores it ("Strongly typed mode
            is always enabled", include/NvInfer.h at v11.1, ``kSTRONGLY_TYPED TRT_DEPRECATED_ENUM = 0``), so a later
            release may drop the name without dropping strong typing.
        strongly_typed_flag: ``STRONGLY_TYPED`` must be set on ``create_network`` to get a strongly typed network
            (TRT 9.x / 10.x, where networks are weakly typed by default); False on TRT >= 11 or without
            ``BuilderFlag.FP16``, where it is ignored (or gone).
        needs_explicit_batch: the implicit-batch builder API still exists (``Builder.max_batch_size``, TRT < 10),
            so ONNX networks must be created with ``EXPLICIT_BATCH``.
        weak_fp16: ``BuilderFlag.FP16`` exists (removed in 11.0).
        weak_int8: ``BuilderFlag.INT8`` exists (removed in 11.0).
        int8_calibrator: ``IInt8EntropyCalibrator2`` and ``IBuilderConfig.int8_calibrator`` exist (removed in 11.0).
        tensor_api: ``ICudaEngine.num_io_tensors`` and ``IExecutionContext.execute_async_v3`` (TRT >= 8.5).
        bindings_api: ``IExecutionContext.execute_async_v2`` (TRT 8.x; removed in 10.0).
        dla: ``DeviceType.DLA`` and ``BuilderFlag.GPU_FALLBACK`` (the API; whether the device has DLA cores is
            ``Builder.num_DLA_cores`` at build time).
        version_compatible: ``BuilderFlag.VERSION_COMPATIBLE`` (TRT >= 8.6).
        hardware_compatible: ``HardwareCompatibilityLevel.AMPERE_PLUS`` (TRT >= 8.6).
        engine_inspector: ``ICudaEngine.create_engine_inspector`` and ``ProfilingVerbosity.DETAILED``.
        timing_cache_miss_error: ``BuilderFlag.ERROR_ON_TIMING_CACHE_MISS`` (TRT >= 10.0).
    """

    version: str
    major: int
    strongly_typed: bool
    strongly_typed_flag: bool
    needs_explicit_batch: bool
    weak_fp16: bool
    weak_int8: bool
    int8_calibrator: bool
    tensor_api: bool
    bindings_api: bool
    dla: bool
    version_compatible: bool
    hardware_compatible: bool
    engine_inspector: bool
    timing_cache_miss_error: bool

    @property
    def weakly_typed(self) -> bool:
        """The builder still takes precision flags (TRT 8.6 / 10.x)."""
        return self.weak_fp16


def _has(obj: object, *path: str) -> bool:
    for name in path:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def detect(trt_module: object) -> TrtCapabilities:
    """Read the feature set of ``trt_module`` (the imported ``tensorrt``, or any namespace with its names)."""
    version = str(getattr(trt_module, "__version__", "unknown"))
    head = version.split(".", 1)[0]
    t = trt_module
    major = int(head) if head.isdigit() else -1
    has_flag = _has(t, "NetworkDefinitionCreationFlag", "STRONGLY_TYPED")
    weak_fp16 = _has(t, "BuilderFlag", "FP16")
    only_strong = major >= 11 or (_has(t, "BuilderFlag") and not weak_fp16)
    return TrtCapabilities(
        version=version,
        major=major,
        strongly_typed=has_flag or only_strong,
        strongly_typed_flag=has_flag and not only_strong,
        needs_explicit_batch=_has(t, "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH")
        and _has(t, "Builder", "max_batch_size"),
        weak_fp16=weak_fp16,
        weak_int8=_has(t, "BuilderFlag", "INT8"),
        int8_calibrator=_has(t, "IInt8EntropyCalibrator2") and _has(t, "IBuilderConfig", "int8_calibrator"),
        tensor_api=_has(t, "ICudaEngine", "num_io_tensors") and _has(t, "IExecutionContext", "execute_async_v3"),
        bindings_api=_has(t, "IExecutionContext", "execute_async_v2"),
        dla=_has(t, "DeviceType", "DLA") and _has(t, "BuilderFlag", "GPU_FALLBACK"),
        version_compatible=_has(t, "BuilderFlag", "VERSION_COMPATIBLE"),
        hardware_compatible=_has(t, "HardwareCompatibilityLevel", "AMPERE_PLUS"),
        engine_inspector=_has(t, "ICudaEngine", "create_engine_inspector")
        and _has(t, "ProfilingVerbosity", "DETAILED"),
        timing_cache_miss_error=_has(t, "BuilderFlag", "ERROR_ON_TIMING_CACHE_MISS"),
    )


@dataclass(frozen=True)
class BuildPath:
    """How an engine of ``precision`` is built.

    Attributes:
        name: ``strongly-typed`` (types come from the ONNX) or ``weakly-typed`` (builder flags).
        precision: the engine precision this path produces.
        fp16_flag: set ``BuilderFlag.FP16`` (weakly typed only).
        int8_flag: set ``BuilderFlag.INT8`` (weakly typed only).
        calibrator: attach an ``IInt8EntropyCalibrator2`` (weakly typed INT8 from an FP32 ONNX).
    """

    name: PathName
    precision: Precision
    fp16_flag: bool = False
    int8_flag: bool = False
    calibrator: bool = False

    def describe(self) -> str:
        flags = [f for f, on in (("FP16", self.fp16_flag), ("INT8", self.int8_flag)) if on]
        how = f"builder flags {'+'.join(flags)}" if flags else "no precision flags"
        if self.name == "strongly-typed":
            how = "types from the ONNX"
        cal = " + entropy calibrator" if self.calibrator else ""
        return f"{self.precision} engine, {self.name} network ({how}{cal})"


def _weak_path(caps: TrtCapabilities, precision: Precision, onnx_kind: OnnxKind) -> BuildPath | str:
    """The weakly-typed path, or the reason there is none."""
    tv = f"TensorRT {caps.version}"
    if not caps.weakly_typed:
        return f"{tv} builds strongly typed networks only (no BuilderFlag.FP16/INT8)"
    if precision == "fp32":
        return BuildPath("weakly-typed", "fp32")
    if precision == "fp16":
        return BuildPath("weakly-typed", "fp16", fp16_flag=True)
    if not caps.weak_int8:
        return f"{tv} has no BuilderFlag.INT8"
    if onnx_kind == "qdq":  # explicit quantization: the flag, no calibrator
        return BuildPath("weakly-typed", "int8", fp16_flag=True, int8_flag=True)
    if not caps.int8_calibrator:
        return f"{tv} has no IInt8EntropyCalibrator2 / int8_calibrator"
    return BuildPath("weakly-typed", "int8", fp16_flag=True, int8_flag=True, calibrator=True)


def choose_path(
    caps: TrtCapabilities,
    precision: RequestedPrecision,
    onnx_kind: OnnxKind,
    *,
    strongly_typed: bool | None = None,
) -> BuildPath:
    """Pick the build path that honours ``precision`` from an ONNX of ``onnx_kind``, or refuse.

    ``auto`` precision means the ONNX's own (fp32 -> fp32, fp16 -> fp16, qdq -> int8). Strongly typed is
    preferred where TensorRT offers it and the ONNX already holds the precision; weakly typed otherwise.

    Args:
        caps: from `detect`.
        precision: ``auto``, ``fp32``, ``fp16`` or ``int8``.
        onnx_kind: ``fp32``, ``fp16`` or ``qdq``.
        strongly_typed: None (auto), True (strongly typed or refuse), False (weakly typed or refuse).

    Raises:
        EngineBuildError: when the precision cannot be honoured, naming why and which ONNX to build from.
        InputError: for an unknown precision or ONNX kind.
    """
    if precision not in REQUESTED_PRECISIONS:
        raise InputError(f"precision={precision!r} is not one of {list(REQUESTED_PRECISIONS)}")
    if onnx_kind not in ONNX_KINDS:
        raise InputError(f"onnx kind {onnx_kind!r} is not one of {list(ONNX_KINDS)}")
    natural = _NATURAL[onnx_kind]
    want: Precision = natural if precision == "auto" else precision
    if onnx_kind != "fp32" and want != natural:
        raise EngineBuildError(
            f"precision={want!r} cannot be built from a {onnx_kind} ONNX (it gives {natural} only); "
            f"build from {_EXPORT_FILE[want]} written by retinaedge export"
        )
    strong: BuildPath | str
    if not caps.strongly_typed:
        strong = f"TensorRT {caps.version} has no NetworkDefinitionCreationFlag.STRONGLY_TYPED (< 9.0)"
    elif want != natural:
        strong = f"a strongly typed {want} engine needs {_EXPORT_FILE[want]}, not the fp32 ONNX"
    else:
        strong = BuildPath("strongly-typed", want)
    weak = _weak_path(caps, want, onnx_kind)
    if strongly_typed is True:
        order = [strong]
    elif strongly_typed is False:
        order = [weak]
    else:
        order = [strong, weak]
    for candidate in order:
        if isinstance(candidate, BuildPath):
            return candidate
    reasons = "; ".join(c for c in order if isinstance(c, str))
    mode = {True: " strongly typed", False: " weakly typed", None: ""}[strongly_typed]
    hint = (
        f"build from {_EXPORT_FILE[want]} (retinaedge export --precision {want})"
        if want != "fp32"
        else "use a TensorRT that matches the --strongly-typed choice"
    )
    raise EngineBuildError(f"cannot build a{mode} {want} engine from a {onnx_kind} ONNX: {reasons}; {hint}")
