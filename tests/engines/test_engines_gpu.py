"""Build and run real TensorRT engines from the tiny ONNX (``tensorrt`` marker: GPU hosts with TensorRT and
PyCUDA only; auto-skipped elsewhere with the reason; run by ``make gpu-check``).

Every precision on every path the installed TensorRT offers (others skip, saying which capability is missing);
each engine runs through `TrtRunner` and is compared with ONNX Runtime on the same inputs; batch consistency
(B identical images -> identical detections, a mixed batch -> the per-image results); timing-cache reuse; DLA.
Never run in this project's CI (no GPU there): results come from ``make gpu-check`` on a user's machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.tiny_onnx import MAX_DET, make_tiny_onnx

pytestmark = pytest.mark.tensorrt

# (id, precision, onnx file, strongly_typed, capability it needs)
CASES = [
    ("fp32-auto", "fp32", "model.fp32.onnx", None, None),
    ("fp32-weak", "fp32", "model.fp32.onnx", False, "weakly_typed"),
    ("fp16-weak-flag", "fp16", "model.fp32.onnx", False, "weak_fp16"),
    ("fp16-weak-onnx", "fp16", "model.fp16.onnx", False, "weak_fp16"),
    ("fp16-strong", "fp16", "model.fp16.onnx", True, "strongly_typed"),
    ("int8-weak-calibrator", "int8", "model.fp32.onnx", False, "int8_calibrator"),
    ("int8-weak-qdq", "int8", "model.int8.onnx", False, "weak_int8"),
    ("int8-strong-qdq", "int8", "model.int8.onnx", True, "strongly_typed"),
]
ATOL = {"fp32": 1e-3, "fp16": 3e-2, "int8": 0.25}


@pytest.fixture(scope="module")
def caps():
    import tensorrt

    from retinaedge.engines.capability import detect

    return detect(tensorrt)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trt")
    for kind in ("fp32", "fp16", "qdq"):
        make_tiny_onnx(d / "onnx", kind=kind)
    rng = np.random.default_rng(3)
    (d / "calib").mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (48 + i, 64, 3), dtype=np.uint8)).save(d / "calib" / f"{i:02d}.png")
    return d


_built: dict[str, object] = {}


def _build(case, caps, workdir: Path, **extra):
    from retinaedge.engines.build import BuildConfig, build_engine

    cid, precision, onnx, strongly, needs = case
    if needs is not None and not getattr(caps, needs):
        pytest.skip(f"TensorRT {caps.version} has no {needs}: path {cid} is not offered")
    key = cid + repr(sorted(extra.items()))
    if key not in _built:
        settings = {"batch": (1, 2, 4), "calib_batch_size": 4, "workspace_mb": 256, **extra}
        config = BuildConfig(
            onnx=workdir / "onnx" / onnx, out_dir=workdir / "engines" / cid, precision=precision,
            strongly_typed=strongly, calib_data=workdir / "calib" if "calibrator" in cid else None, **settings,
        )
        _built[key] = build_engine(config)
    return _built[key]


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_build_each_precision_on_each_path(case, caps, workdir):
    result = _build(case, caps, workdir)
    side = result.sidecar
    assert side.precision == case[1] and result.engine_path.name == f"model.{case[1]}.engine"
    assert result.engine_path.stat().st_size > 0 and result.sidecar_path.is_file()
    assert side.trt_version == caps.version and side.num_layers > 0
    if case[3] is not None:
        assert result.path.name == ("strongly-typed" if case[3] else "weakly-typed")
    if "calibrator" in case[0]:
        cache = result.engine_path.parent / "calib" / "entropy2.cache"
        assert cache.is_file() and side.calib_hash and side.build_options["calib_batches"] == 4


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_run_each_engine_against_onnxruntime(case, caps, workdir):
    from retinaedge.runtime.ort_runner import OrtRunner
    from retinaedge.runtime.trt_runner import TrtRunner

    result = _build(case, caps, workdir)
    images = _images(2, seed=5)
    with TrtRunner(path=result.engine_path) as runner:
        out = runner.infer(images)
    assert out["num_detections"].shape == (2, 1) and out["num_detections"].dtype == np.int32
    assert out["detection_boxes"].shape == (2, MAX_DET, 4) and out["detection_scores"].shape == (2, MAX_DET)
    n = out["num_detections"][:, 0]
    assert ((n >= 0) & (n <= MAX_DET)).all()
    if case[0] == "int8-weak-calibrator":
        return  # no ONNX holds these scales; judged by ΔmAP in retinaedge validate, not here
    with OrtRunner(path=workdir / "onnx" / case[2], threads=1) as ort_runner:
        ref = ort_runner.infer(images)
    for b in range(2):  # scores in rank order do not depend on how ties between boxes were broken
        k = min(n[b], ref["num_detections"][b, 0])
        np.testing.assert_allclose(out["detection_scores"][b, :k], ref["detection_scores"][b, :k], atol=ATOL[case[1]])


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[7]], ids=["fp32", "fp16-strong", "int8-strong"])
def test_batch_consistency(case, caps, workdir):
    from retinaedge.runtime.trt_runner import TrtRunner

    result = _build(case, caps, workdir)
    images = _images(4, seed=7)
    with TrtRunner(path=result.engine_path) as runner:
        same = runner.infer(np.repeat(images[:1], 4, axis=0))
        for name, value in same.items():  # B identical images -> B identical detection sets (mmdeploy 1945)
            assert (value == value[:1]).all(), name
        mixed = runner.infer(images)
        for i in range(4):
            single = runner.infer(images[i : i + 1])
            assert single["num_detections"][0, 0] == mixed["num_detections"][i, 0]
            np.testing.assert_allclose(single["detection_scores"][0], mixed["detection_scores"][i], atol=1e-4)
            np.testing.assert_allclose(single["detection_boxes"][0], mixed["detection_boxes"][i], atol=1e-2)


def test_timing_cache_reuse(caps, workdir):
    if not caps.timing_cache_miss_error:
        pytest.skip(f"TensorRT {caps.version} has no ERROR_ON_TIMING_CACHE_MISS to prove the hits")
    cache = workdir / "timing.cache"
    first = _build(CASES[0], caps, workdir, timing_cache=cache)
    assert cache.stat().st_size > 0 and first.sidecar.build_options["timing_cache_state"] == "new"
    # a second build that may not time anything: succeeds only if every tactic comes from the cache
    second = _build(CASES[0], caps, workdir, timing_cache=cache, require_timing_cache_hit=True)
    assert second.sidecar.build_options["timing_cache_state"] == "loaded"


def test_dla(caps, workdir):
    import tensorrt as trt

    if trt.Builder(trt.Logger(trt.Logger.WARNING)).num_DLA_cores == 0:
        pytest.skip("this device has no DLA cores (Jetson AGX/NX only)")
    case = CASES[4] if caps.strongly_typed else CASES[2]
    result = _build(case, caps, workdir, dla_core=0, batch=(1, 1, 1))  # DLA needs min = opt = max
    assert result.sidecar.build_options["dla_core"] == 0 and result.sidecar.precision == "fp16"
    assert 0.0 <= result.sidecar.build_options["dla_layer_share"] <= 1.0
