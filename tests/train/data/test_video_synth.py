import json

import av
import numpy as np
import pytest

from retinaedge.runtime.errors import InputError
from retinaedge.train.data.synth import CATEGORIES
from retinaedge.train.data.video_synth import write_synthetic_video


def _decode(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)], c.streams.video[0].codec_context.name


def test_video_frames_and_ground_truth(tmp_path):
    s = write_synthetic_video(tmp_path / "video.mp4", tmp_path / "gt.json", frames=12, size=64, fps=10, seed=1)
    frames, codec = _decode(tmp_path / "video.mp4")
    assert len(frames) == 12 and frames[0].shape == (64, 80, 3)
    assert s["codec"] == "libx264" and codec == "h264"
    gt = json.loads((tmp_path / "gt.json").read_text())
    assert [c["id"] for c in gt["categories"]] == [c for c, _ in CATEGORIES]
    assert [im["frame_index"] for im in gt["images"]] == list(range(12))
    assert [im["file_name"] for im in gt["images"]] == [f"video.mp4#{i}" for i in range(12)]
    per_frame = {}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 80 and y + h <= 64
        per_frame.setdefault(a["image_id"], []).append(a)
    counts = {len(v) for v in per_frame.values()}
    assert len(per_frame) == 12 and len(counts) == 1 and counts.pop() >= 4  # the same objects in every frame
    # objects move: the first object's box is not where it started after 11 frames
    first = [per_frame[i][0]["bbox"] for i in (1, 12)]
    assert first[0] != first[1]
    # and the drawn content moves with them: consecutive frames differ
    assert np.abs(frames[0].astype(int) - frames[11].astype(int)).mean() > 1


def test_video_is_deterministic(tmp_path):
    for d in ("a", "b"):
        write_synthetic_video(tmp_path / d / "v.mp4", tmp_path / d / "gt.json", frames=3, size=48, seed=5)
    assert (tmp_path / "a/gt.json").read_bytes() == (tmp_path / "b/gt.json").read_bytes()
    assert (tmp_path / "a/v.mp4").read_bytes() == (tmp_path / "b/v.mp4").read_bytes()


def test_encoder_fallback_and_none_available(tmp_path):
    s = write_synthetic_video(tmp_path / "v.mp4", tmp_path / "gt.json", frames=4, size=48,
                              codecs=("no-such-encoder", "mpeg4"))
    frames, codec = _decode(tmp_path / "v.mp4")
    assert s["codec"] == "mpeg4" and codec == "mpeg4" and len(frames) == 4
    with pytest.raises(InputError, match=r"none of the video encoders \['nope'\] is available"):
        write_synthetic_video(tmp_path / "w.mp4", tmp_path / "gt2.json", frames=2, size=48, codecs=("nope",))
    assert not (tmp_path / "w.mp4").exists() and not list(tmp_path.glob(".w.mp4.*"))


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="frames=0 is not allowed"):
        write_synthetic_video(tmp_path / "v.mp4", tmp_path / "gt.json", frames=0)
    with pytest.raises(InputError, match="size=20 is too small"):
        write_synthetic_video(tmp_path / "v.mp4", tmp_path / "gt.json", size=20)
