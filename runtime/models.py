"""Open a model file with the right `Runner`, chosen by its suffix.

What an ONNX file says about itself (precision, spec, NMS, target) is `retinaedge.runtime.onnxinfo`, part of the
shared kernel so export and the CLI read it the same way; an engine's is its sidecar
(`retinaedge.runtime.engine_meta`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.runner import Runner

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")


def load_runner(path: str | Path, **kwargs: Any) -> Runner:
    """The runner for a model file, chosen by suffix; nothing is allocated until it is activated.

    Args:
        path: ``.onnx`` -> `retinaedge.runtime.ort_runner.OrtRunner`; ``.engine`` / ``.plan`` ->
            `retinaedge.runtime.trt_runner.TrtRunner`.
        **kwargs: passed to the runner's constructor (``spec=``, ``raw=``, ``threads=`` ...).

    Raises:
        InputError: for any other suffix.
        ModelError: if the file is missing or unreadable (from the runner).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from retinaedge.runtime.ort_runner import OrtRunner

        return OrtRunner(path=p, **kwargs)
    if suffix in ENGINE_SUFFIXES:
        from retinaedge.runtime.trt_runner import TrtRunner

        return TrtRunner(path=p, **kwargs)
    raise InputError(
        f"model {str(p)!r} has suffix {suffix!r}; allowed: {list(ONNX_SUFFIXES + ENGINE_SUFFIXES)} "
        "(ONNX for ONNX Runtime, a TensorRT engine from 'retinaedge build')"
    )
