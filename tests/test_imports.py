"""The deployment half must import without torch (a Jetson has none), and the CLI must stay light."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import retinaedge.deploy
import retinaedge.engines
import retinaedge.runtime

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
# exit 3 naming the module when an import needs an optional library that is not installed here (TensorRT)
IMPORT_OR_NAME_MISSING = (
    "try:\n    import {module}\nexcept ModuleNotFoundError as e:\n"
    "    if e.name in ('torch', 'torchvision'):\n        raise\n    print(e.name); sys.exit(3)\n"
)


def _modules(*packages: object) -> list[str]:
    """Every module of the packages, walked from their folders (a new module is checked without a list to keep)."""
    names: list[str] = []
    for package in packages:
        names.append(package.__name__)  # type: ignore[attr-defined]
        prefix = package.__name__ + "."  # type: ignore[attr-defined]
        names += sorted(m.name for m in pkgutil.walk_packages(package.__path__, prefix))  # type: ignore[attr-defined]
    return names


TORCH_FREE = _modules(retinaedge.runtime, retinaedge.engines, retinaedge.deploy)


def test_the_walk_finds_the_deployment_modules():
    assert {"retinaedge.runtime.video", "retinaedge.runtime.validate", "retinaedge.runtime.trt_runner",
            "retinaedge.engines.build", "retinaedge.engines.calibrator", "retinaedge.deploy.triton"} <= set(TORCH_FREE)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_runtime_engines_and_deploy_import_without_torch(module):
    code = BLOCK_TORCH + "\n" + IMPORT_OR_NAME_MISSING.format(module=module)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode == 3:
        pytest.skip(f"{module} needs {proc.stdout.strip()!r}, not installed here (GPU host only)")
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
    """tensorrt-stubs inside the venv make `import tensorrt` succeed with no TensorRT (docs/TENSORRT.md)."""
    code = "import tensorrt, sys; sys.exit(0 if hasattr(tensorrt, 'Logger') else 3)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 3, "an importable 'tensorrt' without Logger: tensorrt-stubs leaked into the venv"


def test_every_runtime_module_is_either_shared_kernel_or_deployment_in_the_contracts():
    """runtime/ is the shared kernel plus the deployed stage: each module is declared one or the other, the kernel
    list of `retinaedge.runtime.SHARED_KERNEL` is the contract's, and the two lists do not overlap."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    contracts = {c["name"]: c for c in pyproject["tool"]["importlinter"]["contracts"]}
    stages = next(c for c in contracts.values() if c.get("source_modules") == ["retinaedge.train", "retinaedge.export"]
                  and "retinaedge.runtime.video" in c["forbidden_modules"])
    kernel = next(c for c in contracts.values() if c.get("source_modules", [""])[0] == "retinaedge.runtime.spec")
    deployment = set(stages["forbidden_modules"])
    shared = {f"retinaedge.runtime.{m}" for m in retinaedge.runtime.SHARED_KERNEL}
    assert set(kernel["source_modules"]) == shared and set(kernel["forbidden_modules"]) == deployment
    runtime_modules = set(_modules(retinaedge.runtime)) - {"retinaedge.runtime"}
    assert not shared & deployment
    assert runtime_modules - shared - deployment == set(), "declare the new module shared or deployment"
    assert (shared | deployment) - runtime_modules == set(), "a declared module does not exist"
