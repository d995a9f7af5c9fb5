"""Lazy imports of optional dependencies with a one-line install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from retinaedge.runtime.errors import MissingDependencyError

_HINTS = {
    "onnxruntime": "pip install 'retinaedge[validate]' (or onnxruntime)",
    "onnx": "pip install onnx",
    "tensorrt": "install TensorRT (JetPack ships it; desktop: pip install 'retinaedge[tensorrt]')",
    "pycuda": "install PyCUDA (pip install pycuda; needs the CUDA toolkit)",
    "av": "pip install 'retinaedge[video]'",
    "pycocotools": "pip install 'retinaedge[validate]'",
    "polygraphy": "pip install 'retinaedge[validate]'",
    "matplotlib": "pip install 'retinaedge[validate]'",
    "torch": "pip install 'retinaedge[train]'",
    "onnx_graphsurgeon": "pip install 'retinaedge[export]'",
    "modelopt": "pip install 'retinaedge[export]'",
}


def require(module: str, *, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise `MissingDependencyError` naming the extra to install.

    Args:
        module: dotted module name, e.g. ``"onnxruntime"`` or ``"pycuda.driver"``.
        purpose: what it is needed for, for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        hint = _HINTS.get(top, f"pip install {top}")
        why = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(f"{module} is needed{why} but cannot be imported ({e}); {hint}") from None
