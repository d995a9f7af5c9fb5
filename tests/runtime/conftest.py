"""Fixtures for the video, validation, comparison and bench tests, over the scene of `tests.support.scenes`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retinaedge.runtime.spec import DetectorSpec
from tests.support import scenes
from tests.support.scenes import build_pipeline, coco_gt, render, tiny_spec, write_clip, write_square_data


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`build_pipeline` under this session's base temp dir."""
    return build_pipeline(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def spec() -> DetectorSpec:
    return tiny_spec()


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 30-frame 96x64 H.264 clip of the moving squares and its per-frame COCO ground truth."""
    d = tmp_path_factory.mktemp("clip")
    frames, width, height = 30, 96, 64
    write_clip(d / "clip.mp4", frames, width, height)
    gt = coco_gt([render(i, width, height)[1] for i in range(frames)], width, height)
    (d / "video_gt.json").write_text(json.dumps(gt))
    return {"video": d / "clip.mp4", "gt": d / "video_gt.json", "frames": frames, "width": width,
            "height": height, "fps": 10}


@pytest.fixture(scope="session")
def square_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`write_square_data` once per session."""
    return write_square_data(tmp_path_factory.mktemp("squares"))


@pytest.fixture(scope="session")
def squares() -> object:
    """`tests.support.scenes` (`OracleRunner`, `tiny_spec`, `render`, `oracle_onnx`, ...), for tests that take the
    helpers as a fixture; new tests import ``tests.support.scenes`` directly."""
    return scenes
