"""The `Runner` interface every backend implements, and `Detector`, which wraps a runner with the shared
pre- and post-processing.

A runner maps a preprocessed batch to the graph's named outputs and nothing more; it allocates nothing
before `activate` (Polygraphy's rule), so constructing one is cheap and side-effect free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Literal

import numpy as np

from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.preprocess import preprocess_batch
from retinaedge.runtime.spec import DetectorSpec

Backend = Literal["torch", "ort", "trt"]
Precision = Literal["fp32", "fp16", "int8"]


class Runner(ABC):
    """A backend that runs a detector graph.

    Subclasses set `backend`, `precision`, `spec` and `name`, and implement `activate_impl`, `infer_impl`
    and `deactivate_impl`. Use as a context manager::

        with OrtRunner(path="model.fp32.onnx") as r:
            outputs = r.infer(batch)      # {"num_detections": (B, 1) int32, ...}
    """

    backend: Backend
    precision: Precision
    spec: DetectorSpec
    name: str
    source: str | None = None
    """The file the runner runs (ONNX, engine, checkpoint); None for an in-memory model."""
    target: str | None = None
    """What the graph was exported for: ``tensorrt`` or ``cpu`` (an ONNX's ``retinaedge.target``; an engine is
    ``tensorrt``); None when nothing says (a torch model)."""

    def __init__(self) -> None:
        self._active = False

    @property
    def is_active(self) -> bool:
        return self._active

    @property
    def on_host_cpu(self) -> bool:
        """Whether the model's arithmetic runs on the host's CPU cores (True unless a backend says otherwise).

        The video pipeline uses it: when decoding, drawing and encoding share cores with the model, its threads
        take turns instead of pre-empting the model's thread pool.
        """
        return True

    def share_cores(self) -> None:
        """Hint that other busy threads share the host's cores from the next `activate` on (no-op by default).

        ONNX Runtime uses it to stop its idle pool threads from spinning, which would starve those threads.
        """
        return None  # a backend without a host thread pool has nothing to change

    def activate(self) -> None:
        """Allocate sessions, contexts, streams and buffers."""
        if not self._active:
            self.activate_impl()
            self._active = True

    def deactivate(self) -> None:
        """Free everything `activate` allocated; the runner can be activated again."""
        if self._active:
            self._active = False
            self.deactivate_impl()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch.

        Args:
            batch: (B, 3, H, W) from `retinaedge.runtime.preprocess.preprocess_batch`.

        Returns:
            The graph's outputs by name (for ``efficient`` graphs the four ``detection_*`` tensors).
        """
        if not self._active:
            raise RuntimeError(f"runner {self.name!r} is not active; call activate() or use it in a with-block")
        expected = (3, self.spec.input_height, self.spec.input_width)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise InputError(
                f"batch shape {tuple(batch.shape)} does not match the model input (B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}); preprocess with the model's spec"
            )
        return self.infer_impl(batch)

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deactivate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, precision={self.precision!r})"


class Detector:
    """Images in, `Detections` out: letterbox -> runner -> post-process -> original coordinates.

    Args:
        runner: an active or inactive `Runner` (activated on first use).
        spec: defaults to ``runner.spec``.
    """

    def __init__(self, *, runner: Runner, spec: DetectorSpec | None = None) -> None:
        self.runner = runner
        self.spec = spec or runner.spec

    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect objects in RGB images.

        Args:
            images: B arrays of (H_i, W_i, 3) uint8 RGB, any sizes.

        Returns:
            B `Detections`, boxes in each image's own pixels.
        """
        from retinaedge.runtime.postprocess import to_detections

        if not images:
            return []
        batch, metas = preprocess_batch(list(images), self.spec)
        self.runner.activate()
        outputs = self.runner.infer(batch)
        return to_detections(outputs, self.spec, metas)
