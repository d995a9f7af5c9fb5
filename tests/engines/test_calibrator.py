"""The calibrator's host side: batching a real image folder through the runtime's letterbox, and the cache key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaedge.engines.calibrator import CalibrationBatcher, make_entropy_calibrator
from retinaedge.runtime.errors import EngineBuildError, InputError
from retinaedge.runtime.preprocess import load_image, preprocess_batch
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from tests.support.trt_namespaces import namespace

SPEC = DetectorSpec(
    class_names=("a",), input_height=64, input_width=64, letterbox_pad=114,
    anchors=AnchorSpec(strides=(16, 32), sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0,)),
)


def _pngs(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_batches_are_the_runtime_preprocessing(tmp_path):
    paths = _pngs(tmp_path / "imgs", [(32, 48), (64, 64), (80, 40), (20, 70), (64, 30)])
    batcher = CalibrationBatcher(images=paths, spec=SPEC, batch_size=2)
    batches = list(batcher)
    assert len(batches) == len(batcher) == 2  # 5 images, batch 2: the 5th is dropped (one profile shape)
    assert batcher.shape == (2, 3, 64, 64) and batcher.dtype == np.uint8
    for k, batch in enumerate(batches):
        assert batch.shape == (2, 3, 64, 64) and batch.dtype == np.uint8 and batch.flags.c_contiguous
        expected, _ = preprocess_batch([load_image(p) for p in paths[2 * k : 2 * k + 2]], SPEC)
        np.testing.assert_array_equal(batch, expected)
    # letterboxed, not stretched: the 32x48 image leaves pad rows (value 114) top and bottom
    assert (batches[0][0, :, 0, :] == 114).all() and (batches[0][0, :, 32, :] != 114).any()


def test_float_input_spec(tmp_path):
    paths = _pngs(tmp_path / "imgs", [(64, 64)] * 2)
    batch = next(iter(CalibrationBatcher(images=paths, spec=SPEC.replace(input_dtype="float32"), batch_size=2)))
    assert batch.dtype == np.float32 and batch.max() <= 255.0 and batch.max() > 1.0  # 0..255, not normalised


def test_corrupt_images_are_skipped_or_raise(tmp_path):
    paths = _pngs(tmp_path / "imgs", [(64, 64)] * 3)
    bad = tmp_path / "imgs" / "bad.png"
    bad.write_bytes(b"not a png")
    batcher = CalibrationBatcher(images=[paths[0], bad, paths[1], paths[2]], spec=SPEC, batch_size=3)
    assert len(list(batcher)) == 1 and batcher.skipped == [bad]
    strict = CalibrationBatcher(images=[paths[0], bad, paths[1]], spec=SPEC, batch_size=1, skip_corrupt=False)
    with pytest.raises(InputError, match=r"bad\.png"):
        list(strict)
    too_few = CalibrationBatcher(images=[paths[0], bad], spec=SPEC, batch_size=2)
    with pytest.raises(InputError, match="only 1 of 2 calibration images"):
        list(too_few)


def test_batcher_argument_checks(tmp_path):
    paths = _pngs(tmp_path / "imgs", [(64, 64)] * 2)
    with pytest.raises(InputError, match="at least batch_size=4"):
        CalibrationBatcher(images=paths, spec=SPEC, batch_size=4)
    with pytest.raises(InputError, match="batch_size=0"):
        CalibrationBatcher(images=paths, spec=SPEC, batch_size=0)


def test_make_entropy_calibrator_refuses_on_trt11(tmp_path):
    paths = _pngs(tmp_path / "imgs", [(64, 64)] * 2)
    batcher = CalibrationBatcher(images=paths, spec=SPEC, batch_size=2)
    with pytest.raises(EngineBuildError, match="no IInt8EntropyCalibrator2"):
        make_entropy_calibrator(namespace("11.1"), batcher, tmp_path / "c.cache", object(), cache_key="k")


def test_entropy_calibrator_feeds_batches_and_never_reuses_a_stale_cache(tmp_path, monkeypatch):
    """The IInt8EntropyCalibrator2 subclass, with a stand-in base class (its module imports tensorrt)."""
    import importlib
    import sys

    from tests.support.fake_trt import HostCuda

    class IInt8EntropyCalibrator2:  # the binding's base: only __init__ matters to the subclass
        def __init__(self) -> None:
            pass

    fake = namespace("10.3")
    fake.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.delitem(sys.modules, "retinaedge.engines._trt_calibrator", raising=False)
    mod = importlib.import_module("retinaedge.engines._trt_calibrator")
    monkeypatch.setitem(sys.modules, "retinaedge.engines._trt_calibrator", mod)  # removed again at teardown

    paths = _pngs(tmp_path / "imgs", [(64, 64)] * 5)
    batcher = CalibrationBatcher(images=paths, spec=SPEC, batch_size=2)
    cache = tmp_path / "calib" / "entropy2.cache"
    cuda = HostCuda()
    cal = make_entropy_calibrator(fake, batcher, cache, cuda, cache_key="key-1")
    assert cal.get_batch_size() == 2 and cal.read_calibration_cache() is None
    ptrs = cal.get_batch(["images"])
    assert len(ptrs) == 1 and cuda.copies == 1
    assert cal.get_batch(["images"]) and cal.get_batch(["images"]) == []  # 5 images: 2 batches, then the end
    assert cal.batches_used == 2 and cal.failure is None
    cal.write_calibration_cache(memoryview(b"TRT-1003-EntropyCalibration2\n"))
    assert cache.read_bytes() == b"TRT-1003-EntropyCalibration2\n"  # raw table, still trtexec-readable
    # same key: the table is reused; any other key (other ONNX, images or preprocessing): it is not
    again = make_entropy_calibrator(fake, batcher, cache, cuda, cache_key="key-1")
    assert again.read_calibration_cache() == cache.read_bytes() and again.cache_hit
    stale = make_entropy_calibrator(fake, batcher, cache, cuda, cache_key="key-2")
    assert stale.read_calibration_cache() is None and not stale.cache_hit
    # an error inside get_batch is kept for the builder (the binding would swallow it) and ends calibration
    assert stale.get_batch(["images", "second_input"]) == [] and "one image input" in str(stale.failure)
