"""The few CUDA calls TensorRT needs (alloc, pinned host memory, async copies, a stream), behind `CudaApi`.

NVIDIA's own Python samples moved from PyCUDA to cuda-python (by TensorRT 8.6.1/9.x: docs/TENSORRT.md); keeping
the calls behind this Protocol means only `PyCudaApi` knows PyCUDA. `mem_alloc` also backs the ``IOutputAllocator``
of data-dependent outputs (runtime/trt_runner.py), called from inside ``execute_async_v3`` on the owning thread.
Context rule: the device's *primary* context (the one the CUDA runtime and therefore TensorRT use) is retained and
pushed by ONE thread in `CudaApi.open`, popped by the same thread in `CudaApi.close`, and every call checks it comes
from that thread. Never ``pycuda.autoinit``: it creates a
separate context, and TensorRT's ``enqueueV3`` then fails with "invalid resource handle".
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from retinaedge.runtime._lazy import require
from retinaedge.runtime.errors import InputError


class DeviceAllocation(Protocol):
    """Device memory; ``int(alloc)`` is the device pointer TensorRT takes."""

    def __int__(self) -> int: ...

    def free(self) -> None: ...


class CudaStream(Protocol):
    """A CUDA stream; ``handle`` is the ``cudaStream_t`` TensorRT's ``execute_async_v3`` takes."""

    @property
    def handle(self) -> int: ...

    def synchronize(self) -> None: ...


class CudaApi(Protocol):
    """The CUDA operations `TrtRunner` and the INT8 calibrator use."""

    def open(self) -> None:
        """Make the device's primary context current in the calling thread, which then owns it."""
        ...

    def close(self) -> None:
        """Pop the context in the owning thread."""
        ...

    def mem_alloc(self, nbytes: int) -> DeviceAllocation: ...

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """Pinned (page-locked) host array, needed for truly asynchronous copies."""
        ...

    def memcpy_htod(self, dst: DeviceAllocation, src: np.ndarray) -> None: ...

    def memcpy_htod_async(self, dst: DeviceAllocation, src: np.ndarray, stream: CudaStream) -> None: ...

    def memcpy_dtoh_async(self, dst: np.ndarray, src: DeviceAllocation, stream: CudaStream) -> None: ...

    def stream(self) -> CudaStream: ...

    def synchronize(self, stream: CudaStream) -> None: ...

    def device_name(self) -> str: ...

    def compute_capability(self) -> tuple[int, int]: ...


class PyCudaApi:
    """`CudaApi` on PyCUDA, in the style of ``pycuda.autoprimaryctx`` but owned by one thread.

    Args:
        device: CUDA device ordinal.

    Raises:
        MissingDependencyError: on first use when PyCUDA is not installed (with the install hint).
    """

    def __init__(self, *, device: int = 0) -> None:
        self.device = device
        self._context: Any = None
        self._owner: int | None = None
        self._depth = 0
        self._drv: Any = None

    def _driver(self) -> Any:
        if self._drv is None:
            driver = require("pycuda.driver", purpose="TensorRT engines (CUDA memory and streams)")
            driver.init()
            self._drv = driver
        return self._drv

    def _check_thread(self) -> None:
        if self._owner is None:
            raise RuntimeError("CUDA context is not open; call open() (TrtRunner.activate does) first")
        me = threading.get_ident()
        if me != self._owner:
            raise RuntimeError(
                f"CUDA context owned by thread {self._owner} used from thread {me}; "
                "run activate() and infer() in the same thread"
            )

    def open(self) -> None:
        if self._owner is not None:
            self._check_thread()
            self._depth += 1
            return
        driver = self._driver()
        count = driver.Device.count()
        if not 0 <= self.device < count:
            raise InputError(f"CUDA device={self.device} does not exist; this machine has devices 0..{count - 1}")
        context = driver.Device(self.device).retain_primary_context()
        context.push()
        self._context = context
        self._owner = threading.get_ident()
        self._depth = 1

    def close(self) -> None:
        if self._owner is None:
            return
        self._check_thread()
        self._depth -= 1
        if self._depth > 0:
            return
        self._context.pop()
        self._context = None
        self._owner = None

    def mem_alloc(self, nbytes: int) -> DeviceAllocation:
        self._check_thread()
        alloc: DeviceAllocation = self._driver().mem_alloc(max(int(nbytes), 1))
        return alloc

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        self._check_thread()
        out: np.ndarray = self._driver().pagelocked_empty(shape, np.dtype(dtype))
        return out

    def memcpy_htod(self, dst: DeviceAllocation, src: np.ndarray) -> None:
        self._check_thread()
        self._driver().memcpy_htod(dst, np.ascontiguousarray(src))

    def memcpy_htod_async(self, dst: DeviceAllocation, src: np.ndarray, stream: CudaStream) -> None:
        self._check_thread()
        self._driver().memcpy_htod_async(dst, src, stream)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: DeviceAllocation, stream: CudaStream) -> None:
        self._check_thread()
        self._driver().memcpy_dtoh_async(dst, src, stream)

    def stream(self) -> CudaStream:
        self._check_thread()
        s: CudaStream = self._driver().Stream()
        return s

    def synchronize(self, stream: CudaStream) -> None:
        self._check_thread()
        stream.synchronize()

    def device_name(self) -> str:
        return str(self._driver().Device(self.device).name())

    def compute_capability(self) -> tuple[int, int]:
        major, minor = self._driver().Device(self.device).compute_capability()
        return int(major), int(minor)
