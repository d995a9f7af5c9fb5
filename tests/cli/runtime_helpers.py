"""tests/runtime/conftest.py's helpers (oracle ONNX, synthetic scenes) for the CLI tests.

Loaded once under a unique module name: under ``--import-mode=importlib`` a conftest cannot be imported by name.
"""

import importlib.util
import sys
from pathlib import Path


def _load():
    name = "retinaedge_tests_runtime_helpers"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "runtime" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


H = _load()
