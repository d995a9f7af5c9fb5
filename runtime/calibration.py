"""Which images calibrate INT8, and the key a calibration result is valid for.

One answer for both calibrating stages: export (ModelOpt's ONNX PTQ writing the Q/DQ file, `retinaedge.export.calib`)
and engines (TensorRT's entropy calibrator on the weakly-typed path, `retinaedge.engines.calibrator`). Part of the
shared kernel, so neither stage keeps its own folder rule or cache-key function.

* The folder: ``data`` itself when it directly holds images (an image folder named on purpose), else the
  dataset's training split (``DATA/train``, or ``train2017`` in a COCO download: calibrate on the training
  distribution and keep val held out for measuring AP), else its val split.
* The key: sha256 of (the key format, the ONNX's sha256, each image's name and content hash in order, and the
  spec's preprocessing parameters). Any change to one of them gives another key, so a cache written for another
  model, image set or letterbox is never read ("Calibration failure occurred with no scaling factors detected"
  after swapping the ONNX, in TensorRT's case).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retinaedge.runtime.cocoeval import split_layout
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.io import sha256_file, sha256_strings
from retinaedge.runtime.preprocess import IMAGE_SUFFIXES, list_images
from retinaedge.runtime.spec import DetectorSpec

KEY_FORMAT = "retinaedge-calib-2"
"""Bumped whenever what the key covers changes (2: one key for export and engines)."""


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def calibration_folder(data: str | Path) -> Path:
    """The folder whose images calibrate: ``data`` if it holds images, else its train split, else its val split.

    Raises:
        InputError: when none of these exists or holds images (names the path and what to pass).
    """
    d = Path(data)
    for candidate in (d, split_layout(d, "train")[1], split_layout(d, "val")[1]):
        if _has_images(candidate):
            return candidate
    raise InputError(
        f"calibration data {str(d)!r} holds no images in itself, train/ or val/ (suffixes {list(IMAGE_SUFFIXES)}); "
        "pass an image folder or a dataset root (DATA/train, DATA/val)"
    )


def calibration_images(data: str | Path, *, max_images: int | None = None) -> list[Path]:
    """The calibration image files of `calibration_folder` (``data``), sorted by name, at most ``max_images``."""
    files = list_images(calibration_folder(data))
    return files[:max_images] if max_images else files


def preprocessing_params(spec: DetectorSpec) -> dict[str, Any]:
    """Everything in the spec that changes the calibration tensors (part of the key)."""
    return {
        "input_height": spec.input_height,
        "input_width": spec.input_width,
        "layout": spec.layout,
        "input_dtype": spec.input_dtype,
        "letterbox_pad": spec.letterbox_pad,
        "letterbox_center": spec.letterbox_center,
        "pixel_mean": list(spec.pixel_mean),
        "pixel_std": list(spec.pixel_std),
    }


def calibration_key(onnx_sha256: str, files: Sequence[str | Path], spec: DetectorSpec) -> str:
    """sha256 over the key format, the ONNX (its sha256), each image (name and content, in order) and the
    preprocessing; hex digest."""
    parts = [f"format={KEY_FORMAT}", f"onnx={onnx_sha256}"]
    parts += [f"image={Path(f).name}:{sha256_file(f)}" for f in files]
    parts.append("preprocessing=" + json.dumps(preprocessing_params(spec), sort_keys=True))
    return sha256_strings(parts)
