"""`TrtRunner`: runs a TensorRT engine through PyCUDA, with the same outputs contract as `OrtRunner`.

Construction reads only the ``.engine.json`` sidecar (spec, precision, batch profile); nothing is imported or
allocated before `activate` (Polygraphy's rule), which then: checks the sidecar against the running TensorRT and
GPU (refusing a mismatch, both sides named), registers TensorRT's plugins (EfficientNMS_TRT), deserialises the
engine, creates the execution context, a stream, and one pinned host buffer plus one device buffer per IO tensor,
sized for the profile's largest batch. `infer` is then: set the input shape, async H2D, execute, async D2H of
every output on the same stream, one synchronize. TensorRT >= 8.5 uses the tensor API (``set_tensor_address`` +
``execute_async_v3``); older 8.x the bindings API (``execute_async_v2``), chosen by feature.

A DLA engine (sidecar ``dla_core``) gets ``Runtime.DLA_core`` set before deserialising (its default is -1).
An output whose shape is data-dependent (``-1`` after the input shape is set: ``selected_indices`` of the
``--nms onnx`` export, which TensorRT runs as ``INMSLayer``) gets no fixed buffer: an ``IOutputAllocator``
(`_OutputAllocations` behind a ``tensorrt.IOutputAllocator`` subclass) hands TensorRT device memory from inside
``execute_async_v3`` and records the shape TensorRT reports; the D2H copy then reads that many elements. Static
outputs keep the fixed buffers. docs/TENSORRT.md has the sources.

Not verified on a GPU in this project's CI: written and type-checked against tensorrt-stubs 10.13; the
``tensorrt``-marked tests run it on a GPU host (``make gpu-check``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from retinaedge.runtime._lazy import require
from retinaedge.runtime.cuda import CudaApi, CudaStream, DeviceAllocation, PyCudaApi
from retinaedge.runtime.engine_meta import EngineSidecar, check_compatible
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.runner import Backend, Precision, Runner
from retinaedge.runtime.spec import DetectorSpec

if TYPE_CHECKING:
    import tensorrt

_DYNAMIC_HOST_START = 1024
"""Elements of pinned host memory a data-dependent output starts with (e.g. 341 NMS rows of 3 int64)."""
_PRECISIONS: dict[str, Precision] = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}
# tensorrt.DataType member name -> numpy (``trt.nptype`` is untyped in the stubs, and raises on new types)
_NP_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
              "BOOL": "bool", "UINT8": "uint8"}


@dataclass
class _IOTensor:
    """One engine input or output: pinned host memory and device memory for the largest batch.

    A data-dependent output (``dynamic``) has no device memory of its own: `_OutputAllocations` holds it, and
    ``host`` is regrown to the size TensorRT reports.
    """

    name: str
    index: int  # binding index (TensorRT 8.x bindings API)
    is_input: bool
    dtype: np.dtype[Any]
    host: np.ndarray  # flat, pinned
    device: DeviceAllocation | None
    dynamic: bool = False


class _OutputAllocations:
    """Device memory and reported shapes of data-dependent outputs, for an ``IOutputAllocator``.

    TensorRT calls ``reallocate_output_async(tensor_name, memory, size, alignment, stream)`` (or, where that is not
    overridden, the deprecated ``reallocate_output(tensor_name, memory, size, alignment)``) from inside
    ``execute_async_v3`` on the calling thread, then ``notify_shape(tensor_name, shape)`` "sometime between when it
    calls reallocateOutput and enqueueV3 returns" (``NvInferRuntime.h``, ``IOutputAllocator``, v10.3.0). The
    returned address must be "at least 256-byte" aligned (``setTensorAddress``, same header); ``cuMemAlloc`` gives
    that. Memory only grows, so steady-state calls return the current block; a replaced block is freed after the
    stream is synchronised, never while TensorRT may still write it. Errors cannot cross back into TensorRT
    (the binding prints and drops them), so they are kept in ``errors`` and raised by the runner.

    Args:
        cuda: allocates the device memory (PyCUDA ``mem_alloc`` in production).
    """

    def __init__(self, cuda: CudaApi) -> None:
        self._cuda = cuda
        self.memory: dict[str, DeviceAllocation] = {}
        self.capacity: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.errors: list[str] = []
        self._retired: list[DeviceAllocation] = []

    def reallocate(self, tensor_name: str, size: int, alignment: int) -> int:
        """Device address of at least ``size`` bytes for ``tensor_name``; 0 (TensorRT's nullptr) if impossible."""
        try:
            size = max(int(size), 1)
            current = self.memory.get(tensor_name)
            if current is not None and self.capacity[tensor_name] >= size:
                return int(current)
            block = self._cuda.mem_alloc(size)
            if alignment > 0 and int(block) % int(alignment):
                block.free()
                self.errors.append(
                    f"device memory for output {tensor_name!r} at {int(block):#x} is not {alignment}-byte aligned"
                )
                return 0
            if current is not None:
                self._retired.append(current)
            self.memory[tensor_name] = block
            self.capacity[tensor_name] = size
            return int(block)
        except Exception as e:  # crosses into TensorRT's C++ callback, which would only print it
            self.errors.append(f"cannot allocate {size} bytes for output {tensor_name!r}: {e}")
            return 0

    def notify_shape(self, tensor_name: str, shape: tuple[int, ...]) -> None:
        self.shapes[tensor_name] = shape

    def start(self) -> None:
        """Forget the previous batch's shapes and errors (called before each execute)."""
        self.shapes.clear()
        self.errors.clear()

    def release_retired(self) -> None:
        """Free replaced blocks; call only after the stream is synchronised."""
        for block in self._retired:
            block.free()
        self._retired = []

    def free(self) -> None:
        self.release_retired()
        for block in self.memory.values():
            block.free()
        self.memory.clear()
        self.capacity.clear()


def _output_allocator(trt_module: ModuleType, store: _OutputAllocations) -> Any:
    """A ``tensorrt.IOutputAllocator`` forwarding to ``store``.

    Signatures as NVIDIA's bindings call them (``python/src/infer/pyCore.cpp``, ``PyOutputAllocator``, identical at
    v10.3.0 and v11.1): ``pyFunc(tensorName, reinterpret_cast<size_t>(currentMemory), size, alignment)`` for
    ``reallocate_output``; the same plus ``cudaStreamPtr`` for ``reallocate_output_async`` (looked up first; the
    binding falls back to ``reallocate_output`` "for legacy implementation"); ``notify_shape(tensorName, dims)``
    with a ``tensorrt.Dims``. The return value is cast to ``size_t``. The base ``__init__`` must be called
    explicitly (``OutputAllocatorDoc::descr``, ``python/docstrings/infer/pyCoreDoc.h``).
    """
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = trt_module

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            return store.reallocate(tensor_name, size, alignment)

        def reallocate_output_async(
            self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
        ) -> int:
            return store.reallocate(tensor_name, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            store.notify_shape(tensor_name, _dims(shape))

    return OutputAllocator()


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(int(shape[i]) for i in range(len(shape)))


def _np_dtype(trt_dtype: tensorrt.DataType) -> np.dtype[Any]:
    name = trt_dtype.name
    if name not in _NP_DTYPES:
        raise ModelError(f"engine IO tensor type {name} is not supported; allowed: {sorted(_NP_DTYPES)}")
    return np.dtype(_NP_DTYPES[name])


class TrtRunner(Runner):
    """Run a ``model.<precision>.engine`` built by ``retinaedge build``.

    Args:
        path: the ``.engine`` file; its ``.engine.json`` sidecar must sit beside it.
        spec: the detector spec; defaults to the one recorded in the sidecar.
        device: CUDA device ordinal.
        name: label in reports (default ``trt-<precision>:<file name>``).
        cuda: the CUDA helper (default `PyCudaApi` on ``device``); its context is owned by the thread that calls
            `activate`, and `infer` must be called from that thread.

    Raises:
        ModelError: if the engine or its sidecar is missing or unreadable.
    """

    backend: Backend = "trt"

    @property
    def on_host_cpu(self) -> bool:
        return False  # the engine runs on the GPU (or DLA); host threads overlap with it freely

    def __init__(
        self,
        *,
        path: str | Path,
        spec: DetectorSpec | None = None,
        device: int = 0,
        name: str | None = None,
        cuda: CudaApi | None = None,
    ) -> None:
        super().__init__()
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            raise InputError(f"device={device!r} must be a CUDA device ordinal >= 0")
        self.path = Path(path)
        self.source, self.target = str(self.path), "tensorrt"  # an engine is a TensorRT build by definition
        if not self.path.is_file():
            raise ModelError(f"engine {str(self.path)!r} does not exist; build one with retinaedge build")
        self.sidecar = EngineSidecar.for_engine(self.path)
        self.spec = spec or DetectorSpec.from_dict(self.sidecar.spec)
        self.precision = _PRECISIONS[self.sidecar.precision]
        self.name = name or f"trt-{self.precision}:{self.path.name}"
        self.device = device
        batch = self.sidecar.build_options.get("batch", [1, 1, 1])
        self.batch_range = (int(batch[0]), int(batch[-1]))
        self._cuda_arg = cuda
        self._cuda: CudaApi | None = None
        self._stream: CudaStream | None = None
        self._runtime: tensorrt.Runtime | None = None
        self._engine: tensorrt.ICudaEngine | None = None
        self._context: tensorrt.IExecutionContext | None = None
        self._tensors: list[_IOTensor] = []
        self._tensor_api = True
        self._dynamic: _OutputAllocations | None = None
        self._allocator: Any = None  # the tensorrt.IOutputAllocator; kept alive as long as the context

    # ---- lifecycle -------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        if TYPE_CHECKING:  # mypy checks every call below against tensorrt-stubs
            import tensorrt as trt
        else:
            trt = require("tensorrt", purpose="running .engine files")
        cuda = self._cuda_arg if self._cuda_arg is not None else PyCudaApi(device=self.device)
        cuda.open()
        self._cuda = cuda
        try:
            self._activate(trt, cuda)
        except BaseException:
            self.deactivate_impl()
            raise

    def _activate(self, trt_module: ModuleType, cuda: CudaApi) -> None:
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = trt_module
        check_compatible(
            self.sidecar,
            trt_version=trt.__version__,
            device_name=cuda.device_name(),
            compute_capability=cuda.compute_capability(),
        )
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        self._runtime = trt.Runtime(logger)
        if self.sidecar.version_compatible:  # the plan embeds its lean runtime
            self._runtime.engine_host_code_allowed = True
        dla_core = self.sidecar.dla_core
        if dla_core is not None:
            # IRuntime::setDLACore "Defaults to -1" and "if getNbDLACores() returns 0, then this function does
            # nothing" (NvInferRuntime.h, v10.3.0): refuse here rather than fail inside deserialisation.
            cores = int(self._runtime.num_DLA_cores)
            if dla_core >= cores:
                raise ModelError(
                    f"{self.path.name} was built for DLA core {dla_core}, but this device has {cores} DLA cores; "
                    "run it on a Jetson with that core or rebuild without --dla"
                )
            self._runtime.DLA_core = dla_core
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise ModelError(f"TensorRT cannot deserialize {self.path.name}; see the TensorRT log above and rebuild")
        self._engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise ModelError(f"TensorRT cannot create an execution context for {self.path.name} (out of memory?)")
        self._context = context
        self._stream = cuda.stream()
        self._tensor_api = hasattr(trt.ICudaEngine, "num_io_tensors") and hasattr(
            trt.IExecutionContext, "execute_async_v3"
        )
        spec_shape = (3, self.spec.input_height, self.spec.input_width)
        max_input = (self.batch_range[1], *spec_shape)
        if self._tensor_api:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            modes = [engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
            dtypes = [_np_dtype(engine.get_tensor_dtype(n)) for n in names]
        else:  # TensorRT 8.x before 8.5: the bindings API
            names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]  # type: ignore[attr-defined]  # TRT 8.x only
            modes = [engine.binding_is_input(i) for i in range(len(names))]  # type: ignore[attr-defined]  # TRT 8.x only
            dtypes = [_np_dtype(engine.get_binding_dtype(i)) for i in range(len(names))]  # type: ignore[attr-defined]  # TRT 8.x only
        inputs = [n for n, is_in in zip(names, modes, strict=True) if is_in]
        if len(inputs) != 1:
            raise ModelError(f"engine {self.path.name} has inputs {inputs}; a detector engine has exactly one")
        self._set_input_shape(inputs[0], names.index(inputs[0]), max_input)
        for i, (name, is_input, dtype) in enumerate(zip(names, modes, dtypes, strict=True)):
            shape = max_input if is_input else self._output_shape(name, i)
            if any(d < 0 for d in shape):
                self._tensors.append(self._dynamic_output(trt, context, name, i, shape, dtype))
                continue
            size = int(np.prod(shape))
            host = cuda.pagelocked_empty((size,), dtype)
            device = cuda.mem_alloc(max(host.nbytes, 1))
            self._tensors.append(_IOTensor(name, i, is_input, dtype, host, device))
            if self._tensor_api and not context.set_tensor_address(name, int(device)):
                raise ModelError(f"TensorRT refused the device address of tensor {name!r}")

    def _dynamic_output(
        self,
        trt: ModuleType,
        context: tensorrt.IExecutionContext,
        name: str,
        index: int,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
    ) -> _IOTensor:
        """Register a data-dependent output with the output allocator (created on the first one)."""
        if not self._tensor_api or not hasattr(trt, "IOutputAllocator"):
            raise ModelError(
                f"output {name!r} of {self.path.name} has a data-dependent shape {shape} (nms=onnx?), which needs "
                f"TensorRT's IOutputAllocator (tensor API, TensorRT >= 8.5; this is {trt.__version__}): "
                "export with --nms efficient or none"
            )
        if self._cuda is None:
            raise RuntimeError("TrtRunner is not active")
        if self._dynamic is None:
            self._dynamic = _OutputAllocations(self._cuda)
            self._allocator = _output_allocator(trt, self._dynamic)
        if not context.set_output_allocator(name, self._allocator):
            raise ModelError(f"TensorRT refused an output allocator for tensor {name!r} of {self.path.name}")
        # grown in _copy_dynamic; never empty (a zero-byte page-locked allocation is not a given in CUDA)
        host = self._cuda.pagelocked_empty((_DYNAMIC_HOST_START,), dtype)
        return _IOTensor(name, index, False, dtype, host, None, dynamic=True)

    def deactivate_impl(self) -> None:
        for t in self._tensors:
            if t.device is not None:
                t.device.free()
        self._tensors = []
        self._context = None  # context before engine before runtime: TensorRT's destruction order
        self._allocator = None  # after the context that holds it
        if self._dynamic is not None:
            self._dynamic.free()
            self._dynamic = None
        self._engine = None
        self._runtime = None
        self._stream = None
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None

    # ---- shapes ----------------------------------------------------------------------------------
    def _set_input_shape(self, name: str, index: int, shape: tuple[int, ...]) -> None:
        if self._context is None:
            raise RuntimeError("TrtRunner is not active")
        if self._tensor_api:
            ok = self._context.set_input_shape(name, shape)
        else:
            ok = self._context.set_binding_shape(index, shape)  # type: ignore[attr-defined]  # TRT 8.x only
        if not ok:
            raise InputError(
                f"TensorRT refused input shape {shape} for {self.path.name} (profile batch "
                f"{self.batch_range[0]}..{self.batch_range[1]}); rebuild with another --batch"
            )

    def _output_shape(self, name: str, index: int) -> tuple[int, ...]:
        if self._context is None:
            raise RuntimeError("TrtRunner is not active")
        if self._tensor_api:
            return _dims(self._context.get_tensor_shape(name))
        return _dims(self._context.get_binding_shape(index))  # type: ignore[attr-defined]  # TRT 8.x only

    # ---- inference -------------------------------------------------------------------------------
    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch.

        Args:
            batch: (B, 3, H, W) from `preprocess_batch`, ``B`` within the engine's batch profile.

        Returns:
            Every engine output by name, e.g. ``num_detections`` (B, 1) int32, ``detection_boxes`` (B, K, 4)
            float32 xyxy in network-input pixels, ``detection_scores`` (B, K), ``detection_classes`` (B, K) int32.
        """
        if self._cuda is None or self._context is None or self._stream is None:
            raise RuntimeError("TrtRunner is not active")
        cuda, context, stream = self._cuda, self._context, self._stream
        b = int(batch.shape[0])
        lo, hi = self.batch_range
        if not lo <= b <= hi:
            raise InputError(
                f"batch size {b} is outside {self.path.name}'s profile {lo}..{hi}; split the batch or rebuild "
                f"with --batch {min(lo, b)}:{min(lo, b)}:{max(hi, b)}"
            )
        inp = next(t for t in self._tensors if t.is_input)
        if inp.device is None:
            raise RuntimeError("TrtRunner input has no device buffer")
        host_in = inp.host[: batch.size].reshape(batch.shape)
        np.copyto(host_in, batch, casting="same_kind")
        cuda.memcpy_htod_async(inp.device, host_in, stream)  # first CUDA call: refuses a foreign thread
        self._set_input_shape(inp.name, inp.index, tuple(int(d) for d in batch.shape))
        if self._dynamic is not None:
            self._dynamic.start()
        if self._tensor_api:
            ok = context.execute_async_v3(stream.handle)
        else:
            bindings = [int(t.device) if t.device is not None else 0 for t in self._tensors]
            ok = context.execute_async_v2(bindings=bindings, stream_handle=stream.handle)  # type: ignore[attr-defined]  # TRT 8.x only
        if self._dynamic is not None and self._dynamic.errors:
            errors = "; ".join(self._dynamic.errors)
            raise ModelError(f"TensorRT output allocation failed for {self.path.name}: {errors}")
        if not ok:
            raise ModelError(f"TensorRT failed to execute {self.path.name}; see the TensorRT log above")
        views: dict[str, np.ndarray] = {}
        for t in self._tensors:
            if t.is_input:
                continue
            if t.dynamic:
                views[t.name] = self._copy_dynamic(t)
                continue
            if t.device is None:
                raise RuntimeError(f"TrtRunner output {t.name!r} has no device buffer")
            shape = self._output_shape(t.name, t.index)
            view = t.host[: int(np.prod(shape))].reshape(shape)
            cuda.memcpy_dtoh_async(view, t.device, stream)
            views[t.name] = view
        cuda.synchronize(stream)
        if self._dynamic is not None:
            self._dynamic.release_retired()
        return {name: view.copy() for name, view in views.items()}

    def _copy_dynamic(self, t: _IOTensor) -> np.ndarray:
        """Queue the D2H copy of a data-dependent output, ``shape`` as TensorRT reported it via notify_shape."""
        if self._cuda is None or self._stream is None or self._dynamic is None:
            raise RuntimeError("TrtRunner is not active")
        shape = self._dynamic.shapes.get(t.name)
        if shape is None or any(d < 0 for d in shape):
            raise ModelError(
                f"TensorRT reported no shape for data-dependent output {t.name!r} of {self.path.name} "
                f"(notify_shape gave {shape}); see the TensorRT log above"
            )
        count = int(np.prod(shape))
        if count == 0:
            return np.empty(shape, t.dtype)
        memory = self._dynamic.memory.get(t.name)
        nbytes = count * t.dtype.itemsize
        if memory is None or self._dynamic.capacity[t.name] < nbytes:
            raise ModelError(
                f"TensorRT reported output {t.name!r} of shape {shape} ({nbytes} bytes) but asked the allocator "
                f"for {self._dynamic.capacity.get(t.name, 0)} bytes"
            )
        if t.host.size < count:  # pinned host memory grows (doubling) and is kept for the next batch
            t.host = self._cuda.pagelocked_empty((max(count, 2 * t.host.size),), t.dtype)
        view = t.host[:count].reshape(shape)
        self._cuda.memcpy_dtoh_async(view, memory, self._stream)
        return view
