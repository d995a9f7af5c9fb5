"""The ``IInt8EntropyCalibrator2`` subclass, defined at module level (not inside a function) against the real
TensorRT base class, so mypy checks its overrides against tensorrt-stubs.

Importing this module imports TensorRT and needs ``IInt8EntropyCalibrator2``, which TensorRT 11 removed: import
it only through `retinaedge.engines.calibrator.make_entropy_calibrator`, which checks the capability first.
TensorRT calls these methods from ``build_serialized_network`` in the building thread; an exception raised in
them is swallowed by the bindings (python/src/infer/pyInt8.cpp prints it and ends calibration), so it is kept
in `EntropyCalibrator.failure` and the builder re-raises it after the build.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorrt as trt

from retinaedge.engines.calibrator import CalibrationBatcher
from retinaedge.runtime.cuda import CudaApi, DeviceAllocation
from retinaedge.runtime.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12


def key_path(cache_path: Path) -> Path:
    """``calib.cache`` -> ``calib.cache.key``: the key the table was written for (the table stays trtexec-readable)."""
    return cache_path.with_name(cache_path.name + ".key")


class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
    """Feeds letterboxed batches to TensorRT's entropy calibration and keeps a keyed cache.

    Args:
        batcher: host-side batches (runtime preprocessing).
        cache_path: calibration table file.
        cache_key: the key the table must have been written for; another key means "calibrate again".
        cuda: an open `CudaApi` in the building thread.
    """

    def __init__(self, *, batcher: CalibrationBatcher, cache_path: Path, cache_key: str, cuda: CudaApi) -> None:
        trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 needs the explicit base __init__
        self.batcher = batcher
        self.cache_path = Path(cache_path)
        self.cache_key = cache_key
        self.cuda = cuda
        self.batches_used = 0
        self.cache_hit = False
        self.failure: BaseException | None = None
        self._iter: Iterator[np.ndarray] | None = None
        self._device: DeviceAllocation | None = None

    def get_batch_size(self) -> int:
        return self.batcher.batch_size

    def get_batch(self, names: list[str]) -> list[int]:
        """One device pointer per input in ``names``; an empty list ends calibration (pyInt8.cpp)."""
        try:
            if len(names) != 1:
                raise ValueError(f"the calibrator feeds one image input, TensorRT asked for {names}")
            if self._iter is None:
                self._iter = iter(self.batcher)
            batch = next(self._iter, None)
            if batch is None:
                return []
            # TensorRT reads calibration inputs as float32 (Polygraphy's calibrator casts likewise)
            host = np.ascontiguousarray(batch, dtype=np.float32)
            if self._device is None:
                self._device = self.cuda.mem_alloc(host.nbytes)
            self.cuda.memcpy_htod(self._device, host)
            self.batches_used += 1
            return [int(self._device)]
        except Exception as e:  # surfaced by the builder after build_serialized_network
            self.failure = e
            return []

    # The stub declares `-> Buffer`, but the binding treats None as "no cache" (pyInt8.cpp:
    # readCalibrationCache "Cannot cast `None` to py::buffer" -> nullptr); an empty buffer is not the same.
    def read_calibration_cache(self) -> bytes | None:
        """The cached table, only if it was written for this `cache_key`."""
        kp = key_path(self.cache_path)
        if not (self.cache_path.is_file() and kp.is_file()):
            return None
        if kp.read_text().strip() != self.cache_key:
            return None
        data = self.cache_path.read_bytes()
        if not data:
            return None
        self.cache_hit = True
        return data

    def write_calibration_cache(self, cache: Buffer) -> None:
        try:
            atomic_write_bytes(self.cache_path, bytes(memoryview(cache)))
            atomic_write_text(key_path(self.cache_path), self.cache_key + "\n")
        except Exception as e:
            self.failure = e

    def free(self) -> None:
        if self._device is not None:
            self._device.free()
            self._device = None
