"""`TrtRunner` on CPU: construction without TensorRT/PyCUDA, refusals, parity with `OrtRunner`, and its
host/device plumbing driven through a stand-in engine (real binding names; invented arithmetic).

The stand-in engine computes each image's outputs from that image alone, so the runner's buffer handling
(pinned host views, set_input_shape, tensor addresses or bindings, H2D/execute/D2H, slicing to the batch) is
checked by batch consistency and by comparison with a numpy reference. Whether TensorRT runs the real engine
is the `tensorrt`-marked tests' job (tests/engines/test_engines_gpu.py, GPU hosts only).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

from retinaedge.runtime.engine_meta import EngineSidecar, sidecar_path
from retinaedge.runtime.errors import EngineMismatchError, InputError, MissingDependencyError, ModelError
from retinaedge.runtime.runner import Runner
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.runtime.trt_runner import TrtRunner
from tests.support.fake_trt import HostCuda
from tests.support.trt_namespaces import namespace

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


def fake_trt_module(cuda: HostCuda, *, flavour: str = "10.3", bindings_only: bool = False, dla_cores: int = 0):
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
        """``Runtime.DLA_core`` is a read/write property whose default is -1 and ``num_DLA_cores`` a read-only one
        (pyCore.cpp v10.3.0: ``.def_property("DLA_core", &IRuntime::getDLACore, &IRuntime::setDLACore)``,
        ``.def_property_readonly("num_DLA_cores", &IRuntime::getNbDLACores)``; NvInferRuntime.h: "Defaults to -1")."""

        def __init__(self, logger) -> None:
            self.engine_host_code_allowed = False
            self.DLA_core = -1
            self.num_DLA_cores = dla_cores

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            dla_log.append(self.DLA_core)
            return Engine()

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            pass

    dla_log: list[int] = []  # Runtime.DLA_core at each deserialize_cuda_engine
    trt.Runtime, trt.Logger, trt.DataType, trt.deserialised_on_dla = Runtime, Logger, data_type, dla_log
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    if bindings_only:  # TensorRT before 8.5: no tensor API
        trt.IExecutionContext = type("IExecutionContext", (), {"execute_async_v2": None})
    return trt


def write_engine(tmp_path: Path, *, spec: DetectorSpec = SPEC, trt_version: str = "10.3.0", **build_options) -> Path:
    path = tmp_path / "model.fp16.engine"
    path.write_bytes(b"plan")
    EngineSidecar(
        trt_version=trt_version, device_name="Fake GPU", compute_capability=(8, 7), precision="fp16",
        spec=spec.to_dict(), onnx_sha256="0" * 64, build_options={"batch": [1, 2, 8], **build_options},
    ).save(sidecar_path(path))
    return path


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    return write_engine(tmp_path)


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


# ---- DLA (issue 13 item 4) ------------------------------------------------------------------------------------
def test_dla_core_is_set_before_deserialising(tmp_path, monkeypatch):
    """The sidecar's dla_core reaches Runtime.DLA_core before deserialize_cuda_engine (default -1 otherwise)."""
    cuda = HostCuda()
    trt = fake_trt_module(cuda, dla_cores=2)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with TrtRunner(path=write_engine(tmp_path, dla_core=1, batch=[2, 2, 2]), cuda=cuda) as runner:
        assert runner._runtime.DLA_core == 1 and runner.batch_range == (2, 2)
    assert trt.deserialised_on_dla == [1]


def test_gpu_engine_leaves_dla_core_default(tmp_path, monkeypatch):
    cuda = HostCuda()
    trt = fake_trt_module(cuda, dla_cores=2)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with TrtRunner(path=write_engine(tmp_path, dla_core=None), cuda=cuda):
        pass
    assert trt.deserialised_on_dla == [-1]


def test_dla_engine_without_that_core_is_refused(tmp_path, monkeypatch):
    """IRuntime::setDLACore "does nothing" when getNbDLACores() is 0 (NvInferRuntime.h v10.3.0): refuse first."""
    cuda = HostCuda()
    trt = fake_trt_module(cuda, dla_cores=0)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    runner = TrtRunner(path=write_engine(tmp_path, dla_core=0), cuda=cuda)
    with pytest.raises(ModelError, match="built for DLA core 0, but this device has 0 DLA cores"):
        runner.activate()
    assert trt.deserialised_on_dla == [] and not runner.is_active and cuda.opened == cuda.closed == 1


# ---- data-dependent outputs through IOutputAllocator (issue 13 item 6) ----------------------------------------
N_ANCHORS = (64 // 16) ** 2 + (64 // 32) ** 2  # SPEC: one anchor per cell on strides 16 and 32
ONNX_SPEC = dataclasses.replace(SPEC, nms="onnx")


class AlignedHostCuda(HostCuda):
    """`HostCuda` whose device blocks are 256-byte aligned, as ``cudaMalloc``/``cuMemAlloc`` memory is (TensorRT
    requires "at least 256-byte alignment" of tensor addresses: NvInferRuntime.h ``setTensorAddress``, v10.3.0)."""

    def __init__(self, *, fail_above: int | None = None, align: int = 256) -> None:
        super().__init__()
        self.fail_above, self.align = fail_above, align

    def mem_alloc(self, nbytes: int) -> HostCuda._Alloc:
        if self.fail_above is not None and nbytes > self.fail_above:
            raise MemoryError(f"cuMemAlloc failed: out of memory ({nbytes} bytes)")
        alloc = HostCuda._Alloc(nbytes + 512)
        off = (-int(alloc)) % 256 + (256 - self.align if self.align < 256 else 0)
        alloc.buf = alloc.buf[off : off + nbytes]
        self.allocs[int(alloc)] = alloc
        return alloc


def nms_reference(batch: np.ndarray) -> dict[str, np.ndarray]:
    """What the stand-in --nms onnx engine computes: per image b, ``mean % 4`` selected rows (b, class, anchor)."""
    mean = batch.reshape(len(batch), -1).astype(np.float64).mean(axis=1)
    rows = [[b, (int(m) + j) % 3, (int(m) * 7 + j) % N_ANCHORS] for b, m in enumerate(mean) for j in range(int(m) % 4)]
    return {
        "boxes": np.broadcast_to((mean[:, None, None] + np.arange(4)).astype(np.float32), (len(batch), N_ANCHORS, 4)),
        "scores": np.broadcast_to((mean[:, None, None] / 255).astype(np.float32), (len(batch), N_ANCHORS, 3)),
        "selected_indices": np.asarray(rows, np.int64).reshape(-1, 3),
    }


def fake_nms_trt_module(cuda: HostCuda, *, flavour: str = "10.3"):
    """A ``tensorrt`` whose engine has a data-dependent output, with ``IOutputAllocator`` as the bindings define it.

    NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` (v10.3.0 line 497 ff., v11.1 line 591 ff., identical):

        py::class_<IOutputAllocator, PyOutputAllocator>(m, "IOutputAllocator", ...).def(py::init<>());
        .def("set_output_allocator", &IExecutionContext::setOutputAllocator, "name"_a, "output_allocator"_a, ...,
             py::keep_alive<1, 3>{})
        // PyOutputAllocator::reallocateOutputAsync
        py::function pyFunc = utils::getOverride(..., "reallocate_output_async", false);
        if (!pyFunc) { return reallocateOutput(tensorName, currentMemory, size, alignment); }   // legacy
        py::object ptr = pyFunc(tensorName, reinterpret_cast<size_t>(currentMemory), size, alignment, cudaStreamPtr);
        return reinterpret_cast<void*>(ptr.cast<size_t>());       // a cast_error prints and returns nullptr
        // PyOutputAllocator::notifyShape
        PYBIND11_OVERLOAD_PURE_NAME(void, IOutputAllocator, "notify_shape", notifyShape, tensorName, dims);

    At v8.6.1 there is no ``reallocate_output_async``: ``reallocate_output(tensor_name, memory, size, alignment)``
    only. enqueueV3 calls the allocator, then notifyShape "sometime between when it calls reallocateOutput and
    enqueueV3 returns" (NvInferRuntime.h v10.3.0); ``size`` is "Always positive, even for an empty tensor". Input,
    ``boxes`` and ``scores`` are static; ``selected_indices`` is [-1, 3] INT64 (INMSLayer's [NumOutputBoxes, 3],
    NvInfer.h v10.3.0, as the ONNX graph's int64). The arithmetic is invented.
    """
    trt = fake_trt_module(cuda, flavour=flavour)
    data_type = trt.DataType
    names = ["images", "boxes", "scores", "selected_indices"]
    dtypes = {"images": data_type.UINT8, "boxes": data_type.FLOAT, "scores": data_type.FLOAT,
              "selected_indices": data_type.INT64}
    legacy = flavour == "8.6"

    class IOutputAllocator:
        def __init__(self) -> None:
            self._pybind_init = True

    class Dims(tuple):
        pass

    class Context:
        def __init__(self) -> None:
            self.batch = -1
            self.addresses: dict[str, int] = {}
            self.allocators: dict[str, object] = {}
            self.calls: list[str] = []

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            if name != "images" or not 1 <= shape[0] <= 8:
                return False
            self.batch = shape[0]
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return {"images": (self.batch, 3, 64, 64), "boxes": (self.batch, N_ANCHORS, 4),
                    "scores": (self.batch, N_ANCHORS, 3), "selected_indices": (-1, 3)}[name]

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def set_output_allocator(self, name: str, output_allocator: object) -> bool:
            if not isinstance(output_allocator, IOutputAllocator):
                raise TypeError("set_output_allocator(): incompatible function arguments")
            if not getattr(output_allocator, "_pybind_init", False):  # pybind11's trampoline check
                raise TypeError("IOutputAllocator.__init__() must be called when overriding __init__")
            if name != "selected_indices":
                return False
            self.allocators[name] = output_allocator
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            n = self.batch * 3 * 64 * 64
            batch = cuda.allocs[self.addresses["images"]].buf[:n].reshape(self.batch, 3, 64, 64)
            out = nms_reference(batch)
            for name in ("boxes", "scores"):
                raw = np.ascontiguousarray(out[name]).view(np.uint8).reshape(-1)
                cuda.allocs[self.addresses[name]].buf[: raw.size] = raw
            sel = out["selected_indices"]
            alloc = self.allocators["selected_indices"]
            size, current = max(sel.nbytes, 1), self.addresses.get("selected_indices", 0)
            fn = None if legacy else getattr(type(alloc), "reallocate_output_async", None)
            if fn is not None:
                self.calls.append("reallocate_output_async")
                ptr = fn(alloc, "selected_indices", current, size, 256, stream_handle)
            else:
                self.calls.append("reallocate_output")
                ptr = alloc.reallocate_output("selected_indices", current, size, 256)
            try:
                ptr = int(ptr)  # ptr.cast<size_t>()
            except TypeError:
                ptr = 0
            if ptr == 0:
                return False
            self.addresses["selected_indices"] = ptr
            alloc.notify_shape("selected_indices", Dims(sel.shape))
            raw = sel.view(np.uint8).reshape(-1)
            cuda.allocs[ptr].buf[: raw.size] = raw
            return True

    class Engine:
        num_io_tensors = len(names)

        def get_tensor_name(self, i: int) -> str:
            return names[i]

        def get_tensor_mode(self, name: str):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return dtypes[name]

        def create_execution_context(self) -> Context:
            trt.last_context = Context()
            return trt.last_context

    base_runtime = trt.Runtime

    class Runtime(base_runtime):
        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            return Engine()

    trt.Runtime, trt.IOutputAllocator = Runtime, IOutputAllocator
    return trt


@pytest.mark.parametrize("flavour", ["8.6", "10.3", "11.1"])
def test_data_dependent_output_runs_through_output_allocator(tmp_path, monkeypatch, rng, flavour):
    """Today's runner refused any output with a -1 dimension ("TrtRunner needs static output shapes")."""
    cuda = AlignedHostCuda()
    trt = fake_nms_trt_module(cuda, flavour=flavour)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    images = rng.integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    images[0] = 5  # mean 5 -> 1 row; the others vary
    with TrtRunner(path=write_engine(tmp_path, spec=ONNX_SPEC, trt_version=trt.__version__), cuda=cuda) as runner:
        got = runner.infer(images)
        want = nms_reference(images)
        assert set(got) == {"boxes", "scores", "selected_indices"}
        for name in want:
            assert got[name].dtype == want[name].dtype
            np.testing.assert_array_equal(got[name], want[name])
        # a later batch with more rows grows the block; the replaced one is freed only after the sync
        first = runner._dynamic.memory["selected_indices"]
        many = np.full((8, 3, 64, 64), 3, np.uint8)  # mean 3 -> 3 rows each, 24 rows
        got = runner.infer(many)
        np.testing.assert_array_equal(got["selected_indices"], nms_reference(many)["selected_indices"])
        assert first.freed and runner._dynamic.memory["selected_indices"] is not first
        none = runner.infer(np.full((2, 3, 64, 64), 4, np.uint8))  # mean 4 -> 0 rows: an empty (0, 3) array
        assert none["selected_indices"].shape == (0, 3) and none["selected_indices"].dtype == np.int64
        assert none["boxes"].shape == (2, N_ANCHORS, 4)
        expected_call = "reallocate_output" if flavour == "8.6" else "reallocate_output_async"
        assert set(trt.last_context.calls) == {expected_call}
        allocs = list(cuda.allocs.values())
    assert cuda.opened == cuda.closed == 1 and all(a.freed for a in allocs)


def test_data_dependent_outputs_feed_the_onnx_postprocess(tmp_path, monkeypatch, rng):
    """The allocator path's outputs are what `postprocess` expects of an nms=onnx graph (selected rows -> boxes)."""
    from retinaedge.runtime.postprocess import to_detections
    from retinaedge.runtime.preprocess import Letterbox

    cuda = AlignedHostCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_nms_trt_module(cuda))
    images = np.full((1, 3, 64, 64), 130, np.uint8)  # mean 130 -> 2 rows, score 130/255
    with TrtRunner(path=write_engine(tmp_path, spec=ONNX_SPEC), cuda=cuda) as runner:
        out = runner.infer(images)
    meta = Letterbox(scale=1.0, pad_x=0.0, pad_y=0.0, orig_height=64, orig_width=64)
    dets = to_detections(out, ONNX_SPEC, [meta])[0]
    assert len(dets.scores) == 2 and np.allclose(dets.scores, 130 / 255)


def test_output_allocation_failure_is_a_model_error(tmp_path, monkeypatch):
    cuda = AlignedHostCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_nms_trt_module(cuda))
    with TrtRunner(path=write_engine(tmp_path, spec=ONNX_SPEC), cuda=cuda) as runner:
        cuda.fail_above = 8  # the static buffers exist; selected_indices (3 rows, 72 bytes) cannot be had
        with pytest.raises(ModelError, match=r"output allocation failed .*cannot allocate 72 bytes for output "
                                             r"'selected_indices': cuMemAlloc failed"):
            runner.infer(np.full((1, 3, 64, 64), 3, np.uint8))


def test_misaligned_device_memory_is_refused_not_handed_to_tensorrt():
    from retinaedge.runtime.trt_runner import _OutputAllocations

    store = _OutputAllocations(AlignedHostCuda(align=64))
    assert store.reallocate("selected_indices", 24, 256) == 0
    assert "not 256-byte aligned" in store.errors[0] and store.memory == {}


def test_data_dependent_output_without_output_allocator_is_refused(tmp_path, monkeypatch):
    cuda = AlignedHostCuda()
    trt = fake_nms_trt_module(cuda)
    del trt.IOutputAllocator  # TensorRT before 8.5
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    runner = TrtRunner(path=write_engine(tmp_path, spec=ONNX_SPEC), cuda=cuda)
    with pytest.raises(ModelError, match=r"'selected_indices' .* data-dependent shape \(-1, 3\) .*IOutputAllocator"):
        runner.activate()
    assert not runner.is_active and all(a.freed for a in cuda.allocs.values())


@pytest.mark.tensorrt
def test_inms_layer_engine_runs_through_the_output_allocator_on_a_gpu(tmp_path):
    """GPU hosts only: a real INMSLayer engine (what ONNX NonMaxSuppression becomes) through TrtRunner.

    The network is built with the TensorRT API (``add_nms``, TensorRT >= 8.6) so it needs no ONNX: constant boxes
    and scores scaled by the image mean, per-class NMS at IoU 0.5. Expected rows worked by hand: box 1 overlaps box 0
    with IoU 81/119 = 0.68, so in each class the lower-scored of the two is dropped.
    """
    import tensorrt as trt

    from retinaedge.runtime.cuda import PyCudaApi

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)[None]
    scores = np.array([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [0.7, 0.2, 0.6], [0.1, 0.5, 0.4]], np.float32)[None]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # 8.x; implicit (and deprecated) from 10.0
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    net = builder.create_network(flags)
    images = net.add_input("images", trt.float32, (1, 3, 64, 64))
    mean = net.add_reduce(images, trt.ReduceOperation.AVG, (1 << 1) | (1 << 2) | (1 << 3), False).get_output(0)
    shuffle = net.add_shuffle(mean)
    shuffle.reshape_dims = (1, 1, 1)
    consts = {name: net.add_constant(trt.Dims(value.shape), trt.Weights(value)).get_output(0)
              for name, value in (("boxes", boxes), ("scores", scores / 255),
                                  ("max_out", np.array([10], np.int32)), ("iou", np.array([0.5], np.float32)))}
    scaled = net.add_elementwise(consts["scores"], shuffle.get_output(0), trt.ElementWiseOperation.PROD).get_output(0)
    max_out = net.add_shuffle(consts["max_out"])
    max_out.reshape_dims = trt.Dims([])  # MaxOutputBoxesPerClass is a 0-D int32 tensor (NvInfer.h INMSLayer)
    iou = net.add_shuffle(consts["iou"])
    iou.reshape_dims = trt.Dims([])
    nms = net.add_nms(consts["boxes"], scaled, max_out.get_output(0))
    nms.set_input(3, iou.get_output(0))
    for name, tensor in (("boxes", net.add_identity(consts["boxes"]).get_output(0)),
                         ("scores", net.add_identity(scaled).get_output(0)), ("selected_indices", nms.get_output(0))):
        tensor.name = name
        net.mark_output(tensor)
    plan = builder.build_serialized_network(net, builder.create_builder_config())
    assert plan is not None, "TensorRT could not build the INMSLayer test network; see its log"
    path = tmp_path / "model.fp32.engine"
    path.write_bytes(bytes(memoryview(plan)))
    api = PyCudaApi()
    spec = dataclasses.replace(SPEC, nms="onnx")
    EngineSidecar(
        trt_version=trt.__version__, device_name=api.device_name(), compute_capability=api.compute_capability(),
        precision="fp32", spec=spec.to_dict(), onnx_sha256="0" * 64, build_options={"batch": [1, 1, 1]},
    ).save(sidecar_path(path))
    with TrtRunner(path=path) as runner:
        assert runner._dynamic is not None  # selected_indices is data-dependent: the allocator path was taken
        out = runner.infer(np.full((1, 3, 64, 64), 255, np.uint8))
        again = runner.infer(np.full((1, 3, 64, 64), 255, np.uint8))
    rows = {tuple(int(v) for v in r) for r in out["selected_indices"]}
    assert rows == {(0, 0, 0), (0, 0, 2), (0, 0, 3), (0, 1, 3), (0, 1, 1), (0, 1, 2), (0, 2, 2), (0, 2, 3), (0, 2, 0)}
    np.testing.assert_array_equal(again["selected_indices"], out["selected_indices"])
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-6)


def test_data_dependent_output_host_buffer_is_never_zero_sized_and_grows(tmp_path, monkeypatch):
    """PyCUDA's pagelocked_empty goes to cuMemHostAlloc; the runner never asks it for zero bytes."""
    cuda = AlignedHostCuda()
    requested: list[tuple[int, ...]] = []
    base = cuda.pagelocked_empty
    cuda.pagelocked_empty = lambda shape, dtype: requested.append(tuple(shape)) or base(shape, dtype)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_nms_trt_module(cuda))
    with TrtRunner(path=write_engine(tmp_path, spec=ONNX_SPEC), cuda=cuda) as runner:
        dyn = next(t for t in runner._tensors if t.dynamic)
        start = dyn.host.size
        many = np.full((8, 3, 64, 64), 3, np.uint8)  # 24 rows -> 72 int64 elements, within the start size
        runner.infer(many)
        assert dyn.host.size == start
        dyn.host = dyn.host[:10]  # force a regrow: 72 elements needed
        got = runner.infer(many)
        assert dyn.host.size >= 72
        np.testing.assert_array_equal(got["selected_indices"], nms_reference(many)["selected_indices"])
    assert all(int(np.prod(s)) > 0 for s in requested)
