"""`TrtRunner` on CPU: construction without TensorRT/PyCUDA, refusals, parity with `OrtRunner`, and its
host/device plumbing driven through a stand-in engine (real binding names; invented arithmetic).

The stand-in engine computes each image's outputs from that image alone, so the runner's buffer handling
(pinned host views, set_input_shape, tensor addresses or bindings, H2D/execute/D2H, slicing to the batch) is
checked by batch consistency and by comparison with a numpy reference. Whether TensorRT runs the real engine
is the `tensorrt`-marked tests' job (tests/engines/test_engines_gpu.py, GPU hosts only).
"""

from __future__ import annotations

import enum
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))  # shared test helpers
from fake_trt import HostCuda
from trt_namespaces import namespace

from retinaedge.runtime.engine_meta import EngineSidecar, sidecar_path
from retinaedge.runtime.errors import EngineMismatchError, InputError, MissingDependencyError, ModelError
from retinaedge.runtime.runner import Runner
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.runtime.trt_runner import TrtRunner

SPEC = DetectorSpec(
    class_names=("a", "b", "c"), input_height=64, input_width=64,
    anchors=AnchorSpec(strides=(16, 32), sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0,)),
)
K = 5
OUTPUTS = {"num_detections": ("INT32", (1,)), "detection_boxes": ("FLOAT", (K, 4)),
           "detection_scores": ("FLOAT", (K,)), "detection_classes": ("INT32", (K,))}


def reference(batch: np.ndarray) -> dict[str, np.ndarray]:
    """What the stand-in engine computes: per image, from that image only."""
    mean = batch.reshape(len(batch), -1).astype(np.float64).mean(axis=1)
    ar = np.arange(K, dtype=np.float64)
    return {
        "num_detections": (mean.astype(np.int64) % (K + 1)).astype(np.int32)[:, None],
        "detection_boxes": (mean[:, None, None] + ar[None, :, None] + np.arange(4)[None, None]).astype(np.float32),
        "detection_scores": (mean[:, None] / 255.0 - ar[None] / 100).astype(np.float32),
        "detection_classes": ((mean.astype(np.int64)[:, None] + ar.astype(np.int64)[None]) % 3).astype(np.int32),
    }


def fake_trt_module(cuda: HostCuda, *, flavour: str = "10.3", bindings_only: bool = False):
    trt = namespace(flavour)
    data_type = enum.IntEnum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64"], start=0)
    names = ["images", *OUTPUTS]
    dtypes = {"images": data_type.UINT8, **{n: getattr(data_type, t) for n, (t, _) in OUTPUTS.items()}}

    class Context:
        def __init__(self) -> None:
            self.batch = -1
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            if name != "images" or tuple(shape[1:]) != (3, 64, 64) or not 1 <= shape[0] <= 8:
                return False
            self.batch = shape[0]
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.batch, 3, 64, 64) if name == "images" else (self.batch, *OUTPUTS[name][1])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            return self._run(self.addresses)

        # TensorRT 8.x bindings API
        def set_binding_shape(self, index: int, shape: tuple[int, ...]) -> bool:
            return self.set_input_shape(names[index], shape)

        def get_binding_shape(self, index: int) -> tuple[int, ...]:
            return self.get_tensor_shape(names[index])

        def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
            return self._run(dict(zip(names, bindings, strict=True)))

        def _run(self, addresses: dict[str, int]) -> bool:
            n = self.batch * 3 * 64 * 64
            batch = cuda.allocs[addresses["images"]].buf[:n].reshape(self.batch, 3, 64, 64)
            for name, value in reference(batch).items():
                raw = np.ascontiguousarray(value).view(np.uint8).reshape(-1)
                cuda.allocs[addresses[name]].buf[: raw.size] = raw
            return True

    class Engine:
        num_io_tensors = len(names)
        num_bindings = len(names)

        def get_tensor_name(self, i: int) -> str:
            return names[i]

        def get_tensor_mode(self, name: str):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return dtypes[name]

        def get_binding_name(self, i: int) -> str:
            return names[i]

        def binding_is_input(self, i: int) -> bool:
            return i == 0

        def get_binding_dtype(self, i: int):
            return dtypes[names[i]]

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger) -> None:
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            return Engine()

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            pass

    trt.Runtime, trt.Logger, trt.DataType = Runtime, Logger, data_type
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    if bindings_only:  # TensorRT before 8.5: no tensor API
        trt.IExecutionContext = type("IExecutionContext", (), {"execute_async_v2": None})
    return trt


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    path = tmp_path / "model.fp16.engine"
    path.write_bytes(b"plan")
    EngineSidecar(
        trt_version="10.3.0", device_name="Fake GPU", compute_capability=(8, 7), precision="fp16",
        spec=SPEC.to_dict(), onnx_sha256="0" * 64, build_options={"batch": [1, 2, 8]},
    ).save(sidecar_path(path))
    return path


def test_construct_reads_only_the_sidecar(engine):
    runner = TrtRunner(path=engine)
    assert runner.spec == SPEC and runner.precision == "fp16" and runner.backend == "trt"
    assert runner.name == "trt-fp16:model.fp16.engine" and runner.batch_range == (1, 8)
    assert not runner.is_active
    assert not runner.on_host_cpu  # the video pipeline lets host threads overlap a GPU engine freely
    assert "pycuda" not in sys.modules and "pycuda.driver" not in sys.modules
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer(np.zeros((1, 3, 64, 64), np.uint8))


def test_missing_files_are_refused(tmp_path, engine):
    with pytest.raises(ModelError, match="does not exist"):
        TrtRunner(path=tmp_path / "nope.engine")
    sidecar_path(engine).unlink()
    with pytest.raises(ModelError, match=r"engine\.json"):
        TrtRunner(path=engine)
    with pytest.raises(InputError, match="device=-1"):
        TrtRunner(path=tmp_path / "nope.engine", device=-1)


def test_activate_without_tensorrt_is_the_install_hint(engine):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed on this host")
    runner = TrtRunner(path=engine)
    with pytest.raises(MissingDependencyError, match="install TensorRT"):
        runner.activate()
    assert not runner.is_active


def test_interface_parity_with_ort_runner():
    from retinaedge.runtime.ort_runner import OrtRunner

    for cls in (TrtRunner, OrtRunner):
        assert issubclass(cls, Runner) and not inspect.isabstract(cls)
        for method in ("activate", "deactivate", "infer", "__enter__", "__exit__"):
            assert getattr(cls, method) is getattr(Runner, method), f"{cls.__name__} overrides {method}"
        params = inspect.signature(cls.__init__).parameters
        assert all(p.kind is p.KEYWORD_ONLY for n, p in params.items() if n != "self")
        for name in ("path", "spec", "name"):
            assert name in params
        assert params["spec"].default is None and params["name"].default is None
    assert {TrtRunner.backend, OrtRunner.backend} == {"trt", "ort"}


@pytest.mark.parametrize("bindings_only", [False, True], ids=["tensor-api", "bindings-api"])
def test_infer_plumbing_matches_reference_and_is_batch_consistent(engine, monkeypatch, rng, bindings_only):
    cuda = HostCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt_module(cuda, bindings_only=bindings_only))
    images = rng.integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    with TrtRunner(path=engine, cuda=cuda) as runner:
        assert runner._tensor_api is not bindings_only
        # pinned buffers sized for the profile's largest batch (8), one per IO tensor
        assert [t.host.size for t in runner._tensors] == [8 * 3 * 64 * 64, 8, 8 * K * 4, 8 * K, 8 * K]
        mixed = runner.infer(images)
        want = reference(images)
        assert set(mixed) == set(OUTPUTS)
        for name in OUTPUTS:
            assert mixed[name].shape == want[name].shape and mixed[name].dtype == want[name].dtype
            np.testing.assert_array_equal(mixed[name], want[name])
        for i in range(3):  # a mixed batch gives the per-image results
            single = runner.infer(images[i : i + 1])
            for name in OUTPUTS:
                np.testing.assert_array_equal(single[name][0], mixed[name][i])
        same = runner.infer(np.repeat(images[:1], 4, axis=0))  # B identical images -> B identical outputs
        for name in OUTPUTS:
            assert (same[name] == same[name][:1]).all()
        with pytest.raises(InputError, match=r"outside model\.fp16\.engine's profile 1\.\.8"):
            runner.infer(np.zeros((9, 3, 64, 64), np.uint8))
        allocs = list(cuda.allocs.values())
    assert cuda.opened == cuda.closed == 1 and all(a.freed for a in allocs)


def test_activate_refuses_another_gpu_naming_both_sides(engine, monkeypatch):
    cuda = HostCuda(name="NVIDIA H100", cc=(9, 0))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt_module(cuda))
    runner = TrtRunner(path=engine, cuda=cuda)
    with pytest.raises(EngineMismatchError, match=r"on Fake GPU \(8\.7\), running TensorRT 10\.3\.0 on NVIDIA H100"):
        runner.activate()
    assert not runner.is_active and cuda.opened == cuda.closed == 1
