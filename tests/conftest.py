"""Shared fixtures and the auto-skip of GPU-only tests.

``cuda`` tests need PyCUDA and a CUDA device; ``tensorrt`` tests need TensorRT as well. Both are skipped
with the reason on machines without them (CI, development boxes) and run by ``make gpu-check``.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest

# Shared test helpers live in tests/support/ and are imported as ``tests.support.<module>``; no sys.path edits.


@functools.cache
def _cuda_reason() -> str | None:
    if importlib.util.find_spec("pycuda") is None:
        return "PyCUDA is not installed (GPU host only: make gpu-check)"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device"
    except Exception as e:  # any driver failure means: not here
        return f"CUDA is not usable here ({type(e).__name__}: {e})"
    return None


@functools.cache
def _tensorrt_reason() -> str | None:
    reason = _cuda_reason()
    if reason:
        return reason
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (GPU host only: make gpu-check)"
    import tensorrt as trt

    if not hasattr(trt, "Logger"):
        return "the importable 'tensorrt' is not TensorRT (stubs leaked into the environment?)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("tensorrt"):
        reason = _tensorrt_reason()
        if reason:
            pytest.skip(f"tensorrt: {reason}")
    elif item.get_closest_marker("cuda"):
        reason = _cuda_reason()
        if reason:
            pytest.skip(f"cuda: {reason}")


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test (RNG isolated per test)."""
    return np.random.default_rng(0)
