"""What ``retinaedge infer`` writes: the output file names, the JSONL record of a frame or an image, and the
annotated-MP4 writer.

Split from the video pipeline because the on-disk formats are shared by video runs and image-folder runs
(`retinaedge.runtime.images`) and are what scripts read, while the pipeline is about threads and queues.

``detections.jsonl`` holds one line per frame, ``{"frame": index, "pts": seconds or null, "detections": [...]}``,
or per image, ``{"file", "width", "height", "detections"}`` (+ ``"annotated"``); each detection is
``{"bbox": [x1, y1, x2, y2], "score", "class", "name", "category_id"}`` in frame/image pixels (``class`` the
contiguous class index, ``category_id`` the dataset's own, possibly sparse, id).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from retinaedge.runtime._lazy import require
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.draw import draw_detections

VIDEO_NAME = "annotated.mp4"
JSONL_NAME = "detections.jsonl"
STATS_NAME = "stats.json"

DRAW_MIN_SCORE = 0.3
"""Detections at or above this score are drawn on annotated outputs (all are written to the JSONL); the default of
`run_video`, `run_images` and ``retinaedge infer --min-score`` (tests/cli/test_infer_cmd.py holds the CLI to it)."""


def frame_record(index: int, pts: float | None, dets: Detections, class_names: Sequence[str],
                 category_ids: Sequence[int] | None) -> dict[str, Any]:
    """The JSONL line of a video frame: index, presentation time in seconds (6 decimals) and detections."""
    return {"frame": index, "pts": None if pts is None else round(float(pts), 6),
            "detections": dets.to_json(class_names, category_ids)}


def image_record(file: Path, image: np.ndarray, dets: Detections, class_names: Sequence[str],
                 category_ids: Sequence[int] | None) -> dict[str, Any]:
    """The JSONL line of an image: its file name, its (displayed) size and detections."""
    return {"file": file.name, "width": int(image.shape[1]), "height": int(image.shape[0]),
            "detections": dets.to_json(class_names, category_ids)}


class FrameWriter:
    """The video run's outputs: the annotated MP4 (written to ``.part`` and renamed when closed) and one JSONL
    line per frame (`frame_record`). Used from the pipeline's writer thread only.

    Args:
        out_dir: where ``annotated.mp4`` and ``detections.jsonl`` go.
        class_names: drawn on the boxes and written as ``name``.
        fps: the output video's frame rate.
        write_video: write the MP4 (the JSONL is always written).
        codec: the video codec; ``mpeg4`` when FFmpeg lacks it.
        min_score: detections below it are not drawn (all are written).
        shared_cores: the model runs on the host's cores: x264 runs single-threaded (its threads would run
            outside the pipeline's turns).
        category_ids: the dataset's category id of each class index, written as ``category_id``.
    """

    def __init__(self, *, out_dir: Path, class_names: Sequence[str], fps: Fraction, write_video: bool,
                 codec: str, min_score: float, shared_cores: bool = False,
                 category_ids: Sequence[int] | None = None) -> None:
        self.class_names = tuple(class_names)
        self.category_ids = tuple(category_ids) if category_ids is not None else None
        self.shared_cores = shared_cores
        self.fps = fps
        self.write_video = write_video
        self.codec = codec
        self.min_score = min_score
        self.video_path = out_dir / VIDEO_NAME
        self.part_path = out_dir / f".{VIDEO_NAME}.part"
        self.jsonl_path = out_dir / JSONL_NAME
        # line-buffered: each frame is on disk as soon as it is written (tail -f, first-detection timing)
        self.jsonl = open(self.jsonl_path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
        self.container: Any = None
        self.stream: Any = None
        self.size: tuple[int, int] = (0, 0)

    def _open_video(self, height: int, width: int) -> None:
        av = require("av", purpose="video inference")
        # yuv420p needs even sides: drop a last odd row/column rather than rescale
        self.size = (height - height % 2, width - width % 2)
        self.container = av.open(str(self.part_path), "w", format="mp4")
        try:
            stream = self.container.add_stream(self.codec, rate=self.fps)
        except (av.FFmpegError, ValueError):
            stream = self.container.add_stream("mpeg4", rate=self.fps)  # an FFmpeg build without libx264
        stream.height, stream.width = self.size
        stream.pix_fmt = "yuv420p"
        if stream.codec_context.name == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "23"}
            if self.shared_cores:
                stream.options = {**stream.options, "threads": "1"}  # x264's threads would run outside the turns
        self.stream = stream

    def write(self, index: int, pts: float | None, image: np.ndarray, dets: Detections) -> None:
        """One frame: (H, W, 3) uint8 RGB ``image`` drawn with ``dets`` (frame pixels) into the MP4, and its line."""
        av = require("av", purpose="video inference")
        if self.write_video:
            if self.container is None:
                self._open_video(*image.shape[:2])
            h, w = self.size
            annotated = draw_detections(image[:h, :w], dets, self.class_names, min_score=self.min_score)
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(annotated), format="rgb24")
            for packet in self.stream.encode(video_frame):
                self.container.mux(packet)
        self.jsonl.write(json.dumps(frame_record(index, pts, dets, self.class_names, self.category_ids)) + "\n")

    def close(self) -> str | None:
        """Flush the encoder, close both files; returns the video path if one was written."""
        self.jsonl.close()
        if self.container is None:
            return None
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
        os.replace(self.part_path, self.video_path)
        return str(self.video_path)
