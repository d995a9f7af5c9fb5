"""runtime/sources.py: what a --source names."""

import pytest

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.sources import classify_source, is_image_source


def test_classify_source(tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"")
    assert classify_source(str(f)).kind == "file"
    assert classify_source(f"file://{f}").kind == "file"
    assert classify_source("rtsp://cam/1").live
    assert classify_source("/dev/video0").format == "v4l2"
    with pytest.raises(InputError, match="scheme 'ftp' is not supported"):
        classify_source("ftp://x/y")


def test_is_image_source(tmp_path):
    (tmp_path / "a.JPG").write_bytes(b"")
    (tmp_path / "v.mp4").write_bytes(b"")
    assert is_image_source(tmp_path) and is_image_source(tmp_path / "a.JPG")
    assert not is_image_source(tmp_path / "v.mp4") and not is_image_source("rtsp://cam/1")
