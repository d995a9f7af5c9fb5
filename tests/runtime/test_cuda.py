"""`PyCudaApi`: the install hint without PyCUDA (here), and real pinned memory, streams and async copies
(``cuda`` marker: needs PyCUDA and a device; auto-skipped elsewhere, run by ``make gpu-check``)."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest

from retinaedge.runtime.cuda import CudaApi, PyCudaApi
from retinaedge.runtime.errors import MissingDependencyError


def test_calls_before_open_are_refused():
    api = PyCudaApi(device=0)
    with pytest.raises(RuntimeError, match="not open"):
        api.mem_alloc(16)
    api.close()  # closing a never-opened context is a no-op


def test_without_pycuda_the_error_is_the_install_hint():
    if importlib.util.find_spec("pycuda") is not None:
        pytest.skip("PyCUDA is installed on this host")
    with pytest.raises(MissingDependencyError, match="pip install pycuda"):
        PyCudaApi(device=0).open()


def test_pycuda_api_satisfies_the_protocol():
    api: CudaApi = PyCudaApi(device=0)  # mypy checks the assignment; here: every member exists
    for name in CudaApi.__dict__:
        if not name.startswith("_"):
            assert callable(getattr(api, name)), name


@pytest.fixture
def cuda():
    api = PyCudaApi(device=0)
    api.open()
    yield api
    api.close()


@pytest.mark.cuda
def test_pinned_async_round_trip(cuda, rng):
    host_in = cuda.pagelocked_empty((4, 3, 8, 8), np.float32)
    host_in[:] = rng.standard_normal(host_in.shape).astype(np.float32)
    host_out = cuda.pagelocked_empty((4, 3, 8, 8), np.float32)
    host_out[:] = 0
    dev = cuda.mem_alloc(host_in.nbytes)
    stream = cuda.stream()
    assert isinstance(stream.handle, int) and int(dev) != 0
    cuda.memcpy_htod_async(dev, host_in, stream)
    cuda.memcpy_dtoh_async(host_out, dev, stream)
    cuda.synchronize(stream)
    np.testing.assert_array_equal(host_out, host_in)
    dev.free()


@pytest.mark.cuda
def test_prefix_views_of_pinned_buffers(cuda):
    # TrtRunner copies batch-sized prefixes of max-batch pinned buffers
    big = cuda.pagelocked_empty((8 * 6,), np.int32)
    big[:] = np.arange(48)
    dev = cuda.mem_alloc(big.nbytes)
    stream = cuda.stream()
    cuda.memcpy_htod_async(dev, big[:12].reshape(2, 6), stream)
    back = cuda.pagelocked_empty((8 * 6,), np.int32)
    back[:] = -1
    cuda.memcpy_dtoh_async(back[:12].reshape(2, 6), dev, stream)
    cuda.synchronize(stream)
    assert back[:12].tolist() == list(range(12)) and (back[12:] == -1).all()
    dev.free()


@pytest.mark.cuda
def test_device_identity(cuda):
    major, minor = cuda.compute_capability()
    assert major >= 3 and minor >= 0 and cuda.device_name()


@pytest.mark.cuda
def test_context_is_owned_by_one_thread(cuda):
    errors: list[BaseException] = []

    def other() -> None:
        try:
            cuda.mem_alloc(16)
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "same thread" in str(errors[0])
    cuda.open()  # nested open/close in the owning thread keeps the context
    cuda.close()
    cuda.mem_alloc(16).free()
