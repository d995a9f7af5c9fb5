"""The deployment half must import without torch (a Jetson has none), and the CLI must stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "


@pytest.mark.parametrize(
    "module",
    [
        "retinaedge.runtime",
        "retinaedge.runtime.spec",
        "retinaedge.runtime.preprocess",
        "retinaedge.runtime.runner",
        "retinaedge.runtime.postprocess",
        "retinaedge.runtime.nms",
        "retinaedge.runtime.ort_runner",
        "retinaedge.runtime.models",
        "retinaedge.runtime.trt_runner",
        "retinaedge.runtime.video",
        "retinaedge.runtime.validate",
        "retinaedge.engines",
        "retinaedge.engines.build",
        "retinaedge.engines.capability",
        "retinaedge.engines.calibrator",
    ],
)
def test_runtime_and_engines_import_without_torch(module):
    code = BLOCK_TORCH + f"import {module}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cli_help_imports_no_heavy_library():
    code = (
        "import sys; from retinaedge.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt', 'modelopt', 'av', 'matplotlib') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"heavy modules imported at CLI start: {proc.stdout} {proc.stderr[-2000:]}"


def test_tensorrt_stubs_did_not_leak_into_the_environment():
    """tensorrt-stubs inside the venv make `import tensorrt` succeed with no TensorRT (TENSORRT.md)."""
    code = "import tensorrt, sys; sys.exit(0 if hasattr(tensorrt, 'Logger') else 3)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 3, "an importable 'tensorrt' without Logger: tensorrt-stubs leaked into the venv"
