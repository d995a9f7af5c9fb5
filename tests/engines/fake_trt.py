"""A recording stand-in for TensorRT's builder objects, on top of a real-names namespace (test helper).

Only the *names* come from TensorRT (`trt_namespaces`); the behaviour here is invented and minimal: it lets the
CPU tests drive `retinaedge.engines.build.build_engine` end to end and see which flags, profiles and settings it
applies. Accessing a name the flavour does not export raises AttributeError, as the real module would: enums
are IntEnums of exactly the listed members, and the builder config refuses attributes its flavour lacks (so a
build on the 11.1 namespace proves ``BuilderFlag.FP16``/``INT8``, ``int8_calibrator`` and
``set_calibration_profile`` are never reached there). It says nothing about whether TensorRT accepts the build.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from trt_namespaces import CLASSES, namespace

FP32 = "Row major linear FP32"
FP16 = "Channel major FP16 format where channel % 8 == 0"
INT8 = "Thirty-two wide channel vectorized row major Int8 format"
INT32 = "Row major linear INT32"


@dataclass
class Recorder:
    """What the build did to the fake TensorRT objects."""

    plugins_initialised: int = 0
    network_flags: int = -1
    parsed: str | None = None
    flags: list[str] = field(default_factory=list)
    pool_limits: dict[str, int] = field(default_factory=dict)
    profiles: list[dict[str, tuple[tuple[int, ...], ...]]] = field(default_factory=list)
    calibration_profile: dict[str, tuple[tuple[int, ...], ...]] | None = None
    calibrator: Any = None
    calibration_batches: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    timing_cache_in: bytes | None = None
    builds: int = 0
    host_code_allowed: bool = False


def fake_tensorrt(
    flavour: str,
    *,
    layers: list[str] | None = None,
    parse_errors: tuple[str, ...] = (),
    input_shape: tuple[int, ...] = (-1, 3, 64, 64),
    qdq: bool = False,
    num_dla_cores: int = 0,
    build_ok: bool = True,
    plan: bytes = b"PLAN-BYTES",
) -> tuple[ModuleType, Recorder]:
    """A ``tensorrt`` module for ``flavour`` whose builder records what it was asked to do.

    Args:
        layers: ``Format/Datatype`` of each built layer's first input, reported by the engine inspector.
        parse_errors: errors the ONNX parser reports (a non-empty tuple fails the parse).
        input_shape: the network input's shape (-1: dynamic batch).
        qdq: the parsed network holds Q/DQ layers.
        num_dla_cores: ``Builder.num_DLA_cores``.
        build_ok: ``build_serialized_network`` returns the plan (else None, as TensorRT does on failure).
    """
    trt = namespace(flavour)
    rec = Recorder()
    layer_formats = layers if layers is not None else [FP32, FP32]
    allowed_config = set(CLASSES[flavour]["IBuilderConfig"])

    class Logger:
        WARNING = 2

        def __init__(self, min_severity: int = 2) -> None:
            self.min_severity = min_severity

    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        rec.plugins_initialised += 1
        return True

    layer_type = enum.IntEnum("LayerType", ["CONVOLUTION", "QUANTIZE", "DEQUANTIZE", "PLUGIN_V2"], start=0)

    @dataclass
    class Tensor:
        name: str
        shape: tuple[int, ...]

    @dataclass
    class Layer:
        type: Any

    class Network:
        num_inputs = 1

        def __init__(self) -> None:
            kinds = [layer_type.QUANTIZE, layer_type.DEQUANTIZE] if qdq else []
            self._layers = [Layer(t) for t in [layer_type.CONVOLUTION, *kinds, layer_type.PLUGIN_V2]]

        def get_input(self, i: int) -> Tensor:
            return Tensor("images", input_shape)

        @property
        def num_layers(self) -> int:
            return len(self._layers)

        def get_layer(self, i: int) -> Layer:
            return self._layers[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            rec.parsed = path
            return not parse_errors

        @property
        def num_errors(self) -> int:
            return len(parse_errors)

        def get_error(self, i: int) -> str:
            return parse_errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = bytes(blob)

        def serialize(self) -> bytes:
            return self.blob + b"|timed"

    def _config_methods() -> dict[str, Any]:
        def set_memory_pool_limit(self: Any, pool: Any, size: int) -> None:
            rec.pool_limits[pool.name] = size

        def set_flag(self: Any, flag: Any) -> None:
            rec.flags.append(flag.name)

        def add_optimization_profile(self: Any, profile: Profile) -> int:
            rec.profiles.append(profile.shapes)
            return len(rec.profiles) - 1

        def set_calibration_profile(self: Any, profile: Profile) -> bool:
            rec.calibration_profile = profile.shapes
            return True

        def create_timing_cache(self: Any, blob: bytes) -> TimingCache:
            return TimingCache(blob)

        def set_timing_cache(self: Any, cache: TimingCache, ignore_mismatch: bool) -> bool:
            rec.timing_cache_in = cache.blob
            self._timing_cache = cache
            return True

        def get_timing_cache(self: Any) -> TimingCache:
            return self._timing_cache

        def __setattr__(self: Any, name: str, value: Any) -> None:
            if not name.startswith("_") and name not in allowed_config:
                raise AttributeError(f"'IBuilderConfig' object has no attribute {name!r} (TensorRT {flavour})")
            if not name.startswith("_"):
                rec.attributes[name] = value
            object.__setattr__(self, name, value)

        return {k: v for k, v in locals().items() if k in allowed_config or k.startswith("__")}

    builder_config = type("IBuilderConfig", (trt.IBuilderConfig,), _config_methods())

    class Inspector:
        def get_engine_information(self, fmt: Any) -> str:
            return json.dumps({"Layers": [
                {"Name": f"layer{i}", "LayerType": "Fake", "Inputs": [{"Name": "t", "Format/Datatype": f}],
                 "Outputs": []} for i, f in enumerate(layer_formats)
            ], "Bindings": ["images"]})

    class Engine:
        def create_engine_inspector(self) -> Inspector:
            return Inspector()

    class Runtime(trt.Runtime):
        def __init__(self, logger: Logger) -> None:
            pass

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "engine_host_code_allowed":
                rec.host_code_allowed = bool(value)
            object.__setattr__(self, name, value)

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            assert bytes(data) == plan
            return Engine()

    class Builder(trt.Builder):
        def __init__(self, logger: Logger) -> None:
            pass

        @property
        def num_DLA_cores(self) -> int:
            return num_dla_cores

        def create_network(self, flags: int = 0) -> Network:
            rec.network_flags = flags
            return Network()

        def create_builder_config(self) -> Any:
            return builder_config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Any) -> bytes | None:
            rec.builds += 1
            calibrator = rec.attributes.get("int8_calibrator")
            if calibrator is not None:  # what TensorRT does with a calibrator, in short (pyInt8.cpp)
                rec.calibrator = calibrator
                if calibrator.read_calibration_cache() is None:
                    while calibrator.get_batch(["images"]):
                        rec.calibration_batches += 1
                    calibrator.write_calibration_cache(b"TRT-8601-EntropyCalibration2\nimages: 3c010a14\n")
            return plan if build_ok else None

    for name, value in {
        "Logger": Logger, "init_libnvinfer_plugins": init_libnvinfer_plugins, "LayerType": layer_type,
        "OnnxParser": OnnxParser, "Builder": Builder, "Runtime": Runtime, "Dims": tuple,
        "IBuilderConfig": builder_config,
    }.items():
        setattr(trt, name, value)
    return trt, rec


class HostCuda:
    """`CudaApi` on host memory (numpy), for CPU tests of code that allocates and copies."""

    def __init__(self, *, name: str = "Fake GPU", cc: tuple[int, int] = (8, 7)) -> None:
        self.name, self.cc = name, cc
        self.opened = 0
        self.closed = 0
        self.copies = 0
        self.allocs: dict[int, HostCuda._Alloc] = {}

    class _Alloc:
        def __init__(self, nbytes: int) -> None:
            self.buf = np.zeros(nbytes, np.uint8)
            self.freed = False

        def __int__(self) -> int:
            return int(self.buf.ctypes.data)

        def free(self) -> None:
            self.freed = True

    class _Stream:
        handle = 0

        def synchronize(self) -> None:
            return None

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def mem_alloc(self, nbytes: int) -> HostCuda._Alloc:
        alloc = HostCuda._Alloc(nbytes)
        self.allocs[int(alloc)] = alloc
        return alloc

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def memcpy_htod(self, dst: HostCuda._Alloc, src: np.ndarray) -> None:
        raw = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        dst.buf[: raw.size] = raw
        self.copies += 1

    def memcpy_htod_async(self, dst: HostCuda._Alloc, src: np.ndarray, stream: Any) -> None:
        self.memcpy_htod(dst, src)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: HostCuda._Alloc, stream: Any) -> None:
        flat = dst.reshape(-1).view(np.uint8)
        flat[:] = src.buf[: flat.size]

    def stream(self) -> HostCuda._Stream:
        return HostCuda._Stream()

    def synchronize(self, stream: Any) -> None:
        return None

    def device_name(self) -> str:
        return self.name

    def compute_capability(self) -> tuple[int, int]:
        return self.cc
