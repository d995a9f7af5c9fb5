"""Typed exceptions. Each message names the value received, what is allowed, and a hint."""

from __future__ import annotations


class RetinaEdgeError(Exception):
    """Base of every error retinaedge raises on purpose; the CLI prints it as one line."""


class SpecError(RetinaEdgeError, ValueError):
    """A `DetectorSpec` field or spec file is invalid."""


class MissingDependencyError(RetinaEdgeError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class InputError(RetinaEdgeError, ValueError):
    """A user-supplied file, folder or value cannot be used."""


class DataError(InputError):
    """A dataset file (annotations, image) is malformed."""


class ModelError(RetinaEdgeError):
    """A model file cannot be loaded or does not match what was asked."""


class EngineMismatchError(ModelError):
    """An engine sidecar does not match the running TensorRT or GPU."""


class EngineBuildError(ModelError):
    """TensorRT cannot build the engine as asked; ``errors`` holds the ONNX parser's messages, if any."""

    def __init__(self, message: str, *, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.errors = errors
