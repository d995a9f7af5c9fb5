"""Which images calibrate INT8 and the calibration key: one rule for export's Q/DQ and the TensorRT calibrator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaedge.runtime.calibration import calibration_folder, calibration_images, calibration_key
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from tests.support.images import write_images

SPEC = DetectorSpec(
    class_names=("a",), input_height=64, input_width=64, letterbox_pad=114,
    anchors=AnchorSpec(strides=(16, 32), sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0,)),
)


def test_folder_choice(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds no images"):
        calibration_folder(tmp_path)
    write_images(tmp_path / "val", 1)
    assert calibration_folder(tmp_path) == tmp_path / "val"
    write_images(tmp_path / "train", 1)
    assert calibration_folder(tmp_path) == tmp_path / "train"  # train calibrates, val stays held out
    assert calibration_folder(tmp_path / "val") == tmp_path / "val"  # a plain image folder
    write_images(tmp_path, 1)
    assert calibration_folder(tmp_path) == tmp_path  # a folder that holds images is the one named on purpose



def test_folder_choice_in_a_coco_download(tmp_path: Path) -> None:
    # COCO as unpacked from cocodataset.org: train2017/, val2017/ (no train/, val/)
    write_images(tmp_path / "val2017", 1)
    assert calibration_folder(tmp_path) == tmp_path / "val2017"
    write_images(tmp_path / "train2017", 1)
    assert calibration_folder(tmp_path) == tmp_path / "train2017"

def test_key_changes_with_each_part(tmp_path: Path) -> None:
    files = write_images(tmp_path / "imgs", 3)
    onnx_sha = "a" * 64
    key = calibration_key(onnx_sha, files, SPEC)
    assert key == calibration_key(onnx_sha, list(files), SPEC) and len(key) == 64  # deterministic, hex sha256
    changed = {
        "onnx": calibration_key("b" * 64, files, SPEC),
        "image list": calibration_key(onnx_sha, files[:2], SPEC),
        "image order": calibration_key(onnx_sha, files[::-1], SPEC),
        "letterbox pad": calibration_key(onnx_sha, files, SPEC.replace(letterbox_pad=0)),
        "input dtype": calibration_key(onnx_sha, files, SPEC.replace(input_dtype="float32")),
        "pixel mean": calibration_key(onnx_sha, files, SPEC.replace(pixel_mean=(0.0, 0.0, 0.0))),
    }
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(files[0])  # same name, new content
    changed["image content"] = calibration_key(onnx_sha, files, SPEC)
    assert all(v != key for v in changed.values()), [k for k, v in changed.items() if v == key]
    assert len(set(changed.values())) == len(changed)


def test_calibration_images_prefers_train_split(tmp_path):
    train = write_images(tmp_path / "data" / "train", 3)
    write_images(tmp_path / "data" / "val", 2, seed=1)
    assert calibration_images(tmp_path / "data") == train
    assert calibration_images(tmp_path / "data", max_images=2) == train[:2]
    assert calibration_images(tmp_path / "data" / "train") == train
    with pytest.raises(InputError):
        calibration_images(tmp_path / "nowhere")
    coco = write_images(tmp_path / "coco" / "train2017", 2)  # COCO's own folder names
    write_images(tmp_path / "coco" / "val2017", 2, seed=1)
    assert calibration_images(tmp_path / "coco") == coco
