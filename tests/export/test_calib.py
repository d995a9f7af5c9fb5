"""Calibration images (runtime preprocessing, corrupt files) and the calibration cache reuse rules (the folder and
the key: tests/runtime/test_calibration.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retinaedge.export.calib import CalibrationCache, load_calibration_set
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.preprocess import letterbox, list_images, load_image, to_input
from retinaedge.runtime.spec import DetectorSpec
from tests.support.images import write_images


def test_calibration_uses_the_runtime_letterbox(tmp_path: Path, tiny_spec: DetectorSpec) -> None:
    files = write_images(tmp_path / "imgs", 3)
    cset = load_calibration_set(list_images(tmp_path / "imgs"), tiny_spec, limit=2)
    assert cset.files == tuple(files[:2])
    assert cset.batch.shape == (2, 3, 64, 64) and cset.batch.dtype == np.uint8
    want = to_input([letterbox(load_image(f), tiny_spec)[0] for f in files[:2]], tiny_spec)
    np.testing.assert_array_equal(cset.batch, want)
    assert cset.batch[0, :, 0, 0].tolist() == [114, 114, 114]  # letterbox pad row (50x30 -> 64x38 centred)


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path, tiny_spec: DetectorSpec) -> None:
    files = write_images(tmp_path / "imgs", 2)
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    cset = load_calibration_set([bad, *files], tiny_spec)
    assert cset.files == tuple(files)
    assert [p for p, _ in cset.skipped] == [bad] and "cannot be decoded" in cset.skipped[0][1]
    with pytest.raises(InputError, match=r"no usable calibration image among 1 files, 1 corrupt.*broken\.jpg"):
        load_calibration_set([bad], tiny_spec)


def test_cache_reuse_and_no_stale_reads(tmp_path: Path) -> None:
    root = tmp_path / "calib"
    old = CalibrationCache(root=root, key="a" * 64)
    assert old.get("int8.max.onnx") is None
    old.put("int8.max.onnx", b"old-quantized", record={"AP": 0.5})
    assert old.get("int8.max.onnx") == b"old-quantized" and old.record("int8.max.onnx") == {"AP": 0.5}
    new = CalibrationCache(root=root, key="b" * 64)
    assert new.get("int8.max.onnx") is None  # another key never reads the old entry
    # same 16-char prefix but a different full key: the manifest check refuses it
    assert CalibrationCache(root=root, key="a" * 16 + "c" * 48).get("int8.max.onnx") is None
    new.put("int8.max.onnx", b"new")
    assert not (root / ("a" * 16)).exists()  # stale entries are pruned on write
    (new.dir / "int8.max.onnx").write_bytes(b"tampered")
    assert new.get("int8.max.onnx") is None  # content must match the manifest's sha256
