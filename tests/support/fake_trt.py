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

from tests.support.trt_namespaces import CLASSES, namespace

# ``Format/Datatype`` strings exactly as TensorRT 8.6 / 10.x print them: the keys of trt-engine-explorer's
# ``_regionFormatDict`` (NVIDIA/TensorRT v10.3.0, tools/experimental/trt-engine-explorer/trex/activations.py),
# e.g. ``"Row major linear UInt8 format" : "UInt8 NCHW"`` and ``"Channel major UInt8 format": "UInt8 NHWC"``.
FP32 = "Row major linear FP32"
FP16 = "Channel major FP16 format where channel % 8 == 0"
INT8 = "Thirty-two wide channel vectorized row major Int8 format"
INT8_NHWC16 = "Channel major INT8 format where channel % 16 == 0"
INT32 = "Row major linear Int32"
UINT8 = "Row major linear UInt8 format"
UINT8_NHWC = "Channel major UInt8 format"
# the same table's "kgen formats" (Myelin regions print a bare type name; also ``Format/Datatype: Float`` in
# NVIDIA/TensorRT v11.1 samples/sampleEditableTimingCache/README.md)
KGEN = {"fp32": "Float", "fp16": "Half", "int8": "Int8", "uint8": "UInt8", "int32": "Int32", "bf16": "BFloat16"}
_TOKEN_OF = {"FP32": "fp32", "FP16": "fp16", "Int8": "int8", "INT8": "int8", "UInt8": "uint8", "Int32": "int32",
             "INT32": "int32", "BFloat16": "bf16", "Float": "fp32", "Half": "fp16"}


def split_format(fmt: str) -> dict[str, str]:
    """A 10.x ``Format/Datatype`` string as TensorRT 11.x writes it: ``DataType`` (a kgen type name) + ``Format``.

    Shape from the 10.x-to-11.x migration guide, "Migrating IEngineInspector Usage from TensorRT 10.x to 11.x"
    (docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-IEngineInspector.html): its
    ``I/O Tensors`` entries read ``"DataType": "Float"`` beside ``"Format": "Row major linear FP32 format
    (kLINEAR)"``, and it lists "the split of the Format/DataType field" for layer tensors.
    """
    token = next((_TOKEN_OF[w] for w in fmt.replace(".", " ").split() if w in _TOKEN_OF), None)
    return {"DataType": KGEN[token] if token else "None", "Format": fmt}


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
    layer_precisions: dict[str, str] = field(default_factory=dict)
    output_types: dict[tuple[str, int], str] = field(default_factory=dict)
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
    network_layers: list[tuple[str, str, list[str], list[tuple[str, str]]]] | None = None,
    io_tensors: list[str] | None = None,
) -> tuple[ModuleType, Recorder]:
    """A ``tensorrt`` module for ``flavour`` whose builder records what it was asked to do.

    Args:
        layers: what the engine inspector reports per built layer: a ``Format/Datatype`` string (a layer
            ``layer<i>`` with that one input), or a whole layer dict in the 8.6/10.x shape; the 11.1 flavour
            rewrites every tensor with `split_format` and ``Bindings`` as ``I/O Tensors``.
        network_layers: the parsed network as ``(name, LayerType member, input names, [(output, DataType)])``;
            default: a convolution reading ``images`` and a plugin layer.
        io_tensors: the engine's I/O tensor names for ``Bindings`` / ``I/O Tensors``.
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

    layer_type = enum.IntEnum("LayerType", ["CONVOLUTION", "QUANTIZE", "DEQUANTIZE", "PLUGIN_V2", "ELEMENTWISE",
                                            "UNARY", "ACTIVATION", "CONCATENATION", "CONSTANT", "SHAPE", "NMS"],
                              start=0)
    data_type = enum.IntEnum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64"], start=0)

    @dataclass
    class Tensor:
        name: str
        shape: tuple[int, ...]
        dtype: Any = data_type.FLOAT

    class Layer:
        """An ILayer: name, type, tensors; records ``precision`` and ``set_output_type`` (pyGraph.cpp names)."""

        def __init__(self, name: str, kind: Any, inputs: list[Tensor], outputs: list[Tensor]) -> None:
            self.name, self.type, self._inputs, self._outputs = name, kind, inputs, outputs
            self.output_types: dict[int, Any] = {}
            self._precision: Any = None

        @property
        def precision(self) -> Any:
            return self._precision

        @precision.setter
        def precision(self, value: Any) -> None:
            self._precision = value
            rec.layer_precisions[self.name] = value.name

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_input(self, k: int) -> Tensor:
            return self._inputs[k]

        def get_output(self, j: int) -> Tensor:
            return self._outputs[j]

        def set_output_type(self, j: int, dtype: Any) -> None:
            rec.output_types[(self.name, j)] = dtype.name

    spec_layers = network_layers if network_layers is not None else [
        ("conv", "CONVOLUTION", ["images"], [("feat", "FLOAT")]),
        *([("q", "QUANTIZE", ["feat"], [("fq", "INT8")]), ("dq", "DEQUANTIZE", ["fq"], [("fdq", "FLOAT")])]
          if qdq else []),
        ("efficient_nms", "PLUGIN_V2", ["feat"], [("num_detections", "INT32"), ("detection_boxes", "FLOAT")]),
    ]

    class Network:
        num_inputs = 1

        def __init__(self) -> None:
            tensors: dict[str, Tensor] = {"images": Tensor("images", input_shape, data_type.UINT8)}
            self._layers = []
            for name, kind, ins, outs in spec_layers:
                out_t = [Tensor(o, (), data_type[d]) for o, d in outs]
                tensors.update((t.name, t) for t in out_t)
                self._layers.append(Layer(name, layer_type[kind], [tensors[i] for i in ins], out_t))

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

    def well_formed(blob: bytes) -> bool:  # invented stand-in for TensorRT's own header check
        return not blob or bytes(blob).endswith(b"|timed")

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

        def create_timing_cache(self: Any, blob: bytes) -> TimingCache | None:
            # an ill-formed blob gives None, as IBuilderConfig::createTimingCache gives nullptr (NVIDIA/TensorRT
            # v10.3.0 samples/utils/timingCache.cpp: SMP_RETVAL_IF_FALSE(timingCache != nullptr, "TimingCache
            # creation failed", ...))
            return TimingCache(blob) if well_formed(blob) else None

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
            return inspector_json(flavour, layer_formats, io_tensors or ["images"])

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
        "IBuilderConfig": builder_config, "DataType": data_type,
    }.items():
        setattr(trt, name, value)
    return trt, rec


def inspector_json(flavour: str, layers: list[Any], io_tensors: list[str]) -> str:
    """``get_engine_information(JSON)`` in the shape of ``flavour``: ``{"Layers", "Bindings"}`` with
    ``Format/Datatype`` (8.6 / 10.x), or ``{"Layers", "I/O Tensors"}`` with ``DataType`` + ``Format`` (11.x,
    `split_format`)."""
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, str):
            layer = {"Name": f"layer{i}", "LayerType": "CaskConvolution",
                     "Inputs": [{"Name": f"t{i}", "Dimensions": [1, 8, 4, 4], "Format/Datatype": layer}],
                     "Outputs": []}
        out.append(layer)
    if not flavour.startswith("11"):
        return json.dumps({"Layers": out, "Bindings": io_tensors})

    def split(t: dict[str, Any]) -> dict[str, Any]:
        t = dict(t)
        fmt = t.pop("Format/Datatype", None)
        return {**t, **split_format(fmt)} if isinstance(fmt, str) else t

    out = [{**layer, **{k: [split(t) for t in layer.get(k, [])] for k in ("Inputs", "Outputs")}} for layer in out]
    io = [{"Name": n, "IOMode": "Input" if i == 0 else "Output", "DataType": "Float", "Dimensions": [1],
           "Location": "Device", "IsShapeInferenceIO": False} for i, n in enumerate(io_tensors)]
    return json.dumps({"Layers": out, "I/O Tensors": io})


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


# a DLA engine: the layer names of NVIDIA/TensorRT issue 3143's DLA profile ("images to nvm",
# "{ForeignNode[Conv_0...Concat_198]}", "head_3 from nvm", "images copy finish"); the DLA region reads what the
# "to nvm" copy wrote. Its LayerType is in no NVIDIA source read, so it is left unknown here (make gpu-check dumps
# a real one) and the DLA is told by the NVM copy feeding it.
DLA_LAYERS = [
    {"Name": "images to nvm", "LayerType": "Reformat",
     "Inputs": [{"Name": "images", "Format/Datatype": FP16}],
     "Outputs": [{"Name": "images_nvm", "Format/Datatype": FP16}]},
    {"Name": "{ForeignNode[Conv_0...Concat_198]}", "LayerType": "unknown",
     "Inputs": [{"Name": "images_nvm", "Format/Datatype": FP16}],
     "Outputs": [{"Name": "head_3_nvm", "Format/Datatype": FP16}]},
    {"Name": "head_3 from nvm", "LayerType": "Reformat",
     "Inputs": [{"Name": "head_3_nvm", "Format/Datatype": FP16}],
     "Outputs": [{"Name": "head_3", "Format/Datatype": FP16}]},
    {"Name": "images copy finish", "LayerType": "unknown", "Inputs": [], "Outputs": []},
    {"Name": "gpu_tail", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "head_3", "Format/Datatype": FP16}],
     "Outputs": [{"Name": "out", "Format/Datatype": FP16}]},
]
