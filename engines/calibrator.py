"""INT8 calibration for weakly-typed builds (TensorRT 8.6 / 10.x): the host-side batcher, the cache key,
and the factory for the ``IInt8EntropyCalibrator2`` that PyCUDA feeds.

Calibration images go through `retinaedge.runtime.preprocess` -- the runtime's own letterbox -- so the scales
TensorRT measures are those of the inputs it will see (retinanet-examples calibrated stretched images and ran
letterboxed ones). The cache is keyed by the ONNX, the image files and the preprocessing, so a stale table is
never reused ("Calibration failure occurred with no scaling factors detected" after swapping the ONNX).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retinaedge.runtime.errors import EngineBuildError, InputError
from retinaedge.runtime.preprocess import load_image, preprocess_batch
from retinaedge.runtime.spec import DetectorSpec

if TYPE_CHECKING:
    from retinaedge.engines._trt_calibrator import EntropyCalibrator
    from retinaedge.runtime.cuda import CudaApi

class CalibrationBatcher:
    """Fixed-size batches of letterboxed calibration images, the exact runtime preprocessing.

    Only whole batches are produced (TensorRT calibrates at one profile shape); the remainder is dropped.

    Args:
        images: image files.
        spec: the model's spec (input size, letterbox, input dtype).
        batch_size: images per batch.
        skip_corrupt: skip images that cannot be decoded (listed in `skipped`) instead of raising.

    Yields:
        (batch_size, 3, H, W) contiguous arrays in the spec's input dtype (0..255 pixels).
    """

    def __init__(
        self, *, images: Sequence[Path], spec: DetectorSpec, batch_size: int = 8, skip_corrupt: bool = True
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"calibration batch_size={batch_size!r} must be an integer >= 1")
        if len(images) < batch_size:
            raise InputError(
                f"calibration needs at least batch_size={batch_size} images, got {len(images)}; "
                "add images or lower the calibration batch size"
            )
        self.images = [Path(p) for p in images]
        self.spec = spec
        self.batch_size = batch_size
        self.skip_corrupt = skip_corrupt
        self.skipped: list[Path] = []

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 3, self.spec.input_height, self.spec.input_width)

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return np.dtype(self.spec.input_dtype)

    def __len__(self) -> int:
        """Upper bound on the number of batches (fewer when images are skipped)."""
        return len(self.images) // self.batch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        self.skipped = []
        pending: list[np.ndarray] = []
        for path in self.images:
            try:
                pending.append(load_image(path))
            except InputError:
                if not self.skip_corrupt:
                    raise
                self.skipped.append(path)
                continue
            if len(pending) == self.batch_size:
                batch, _ = preprocess_batch(pending, self.spec)
                pending = []
                yield np.ascontiguousarray(batch)
        if len(self.images) - len(self.skipped) < self.batch_size:
            raise InputError(
                f"only {len(self.images) - len(self.skipped)} of {len(self.images)} calibration images could be "
                f"decoded, fewer than batch_size={self.batch_size}; first bad file: {str(self.skipped[0])!r}"
            )


def make_entropy_calibrator(
    trt: object, batcher: CalibrationBatcher, cache_path: Path, cuda: CudaApi, *, cache_key: str
) -> EntropyCalibrator:
    """An ``IInt8EntropyCalibrator2`` fed from ``batcher`` through ``cuda``, with a keyed cache.

    The class lives at module level in `retinaedge.engines._trt_calibrator`, which subclasses
    ``tensorrt.IInt8EntropyCalibrator2`` when imported; it is imported only here, after the capability check,
    because TensorRT 11 has no such base class (and this module must import without TensorRT).

    Args:
        trt: the ``tensorrt`` module (checked for the calibrator API).
        batcher: host-side batches.
        cache_path: calibration table file; ``<cache_path>.key`` holds the key it was written for.
        cuda: an open `CudaApi` in the building thread.
        cache_key: `retinaedge.runtime.calibration.calibration_key`.

    Raises:
        EngineBuildError: if this TensorRT has no ``IInt8EntropyCalibrator2`` (TensorRT 11).
    """
    from retinaedge.engines.capability import detect

    caps = detect(trt)
    if not caps.int8_calibrator:
        raise EngineBuildError(
            f"TensorRT {caps.version} has no IInt8EntropyCalibrator2 (removed in 11.0); "
            "build INT8 from the Q/DQ ONNX (model.int8.onnx) instead"
        )
    from retinaedge.engines._trt_calibrator import EntropyCalibrator

    return EntropyCalibrator(batcher=batcher, cache_path=cache_path, cache_key=cache_key, cuda=cuda)
