"""A short synthetic test video of moving shapes, with per-frame COCO ground truth.

`write_synthetic_video` writes an MP4 (H.264 through PyAV's libx264; MPEG-4 Part 2 when libx264 is not
available) and a COCO-format JSON with one image entry per frame::

    {"id": i + 1, "frame_index": i, "file_name": "video.mp4#<i>", "width": W, "height": H}

and the annotations of that frame (same categories and sparse ids as the still images, `synth.CATEGORIES`).

The scene: a static textured background with static clutter (hollow shapes, lines, scribbles, speckles),
one or two hollow shapes drifting across it, and 4..7 filled class shapes, each moving in its own
horizontal lane (bouncing off the left/right edges, wobbling vertically, slowly turning). Lanes do not
overlap and every object stays inside the frame, so no object is ever occluded or truncated: the per-frame
boxes are exact (tight around the drawn pixels, pixel-grid ``[x, y, w, h]``) and a detector's per-frame AP50
on the clip measures the detector, not label ambiguity.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from retinaedge.runtime._lazy import require
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.io import atomic_write_text
from retinaedge.train.data.synth import (
    _SPLIT_CODE,
    CATEGORIES,
    SHAPES,
    _background,
    _distractor,
    _pick_colour,
    _poly_mask,
    _span,
    coco_categories,
    shape_polygon,
)

DEFAULT_CODECS: tuple[str, ...] = ("libx264", "mpeg4")


@dataclass(frozen=True)
class _Mover:
    """A labelled object moving in its lane (centre x bounces in ``[margin, W - margin]``)."""

    cls: int
    size: float
    margin: float
    x: float
    vx: float
    mid: float
    wobble: float
    phase: float
    angle: float
    spin: float
    colour: np.ndarray


@dataclass(frozen=True)
class _Drifter:
    """An unlabelled hollow shape drifting under the objects."""

    shape: str
    size: float
    x: float
    y: float
    vx: float
    vy: float
    colour: np.ndarray


def _open_stream(container: Any, codecs: tuple[str, ...], fps: int, width: int, height: int) -> tuple[Any, str]:
    av = require("av", purpose="writing the synthetic video")
    for name in codecs:
        try:
            av.codec.Codec(name, "w")
        except ValueError:  # av.codec.codec.UnknownCodecError: not in this FFmpeg build, try the next one
            continue
        stream = container.add_stream(name, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if name == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.bit_rate = 4_000_000
        return stream, name
    raise InputError(f"none of the video encoders {list(codecs)} is available in this PyAV/FFmpeg build; "
                     "install a PyAV wheel with libx264 (pip install av)")


def write_synthetic_video(path: str | Path, gt_path: str | Path, *, frames: int = 90, size: int = 256,
                          fps: int = 15, seed: int = 0,
                          codecs: tuple[str, ...] = DEFAULT_CODECS) -> dict[str, Any]:
    """Write a synthetic MP4 of moving shapes and its per-frame ground truth.

    Args:
        path: the ``.mp4`` to write (atomically: a temp file, then rename).
        gt_path: the COCO-format ground-truth JSON to write.
        frames: number of frames.
        size: frame height in pixels; the width is ``1.25 x size`` (both rounded to even numbers, as
            yuv420p needs).
        fps: frame rate.
        seed: everything drawn depends only on it.
        codecs: encoders to try in order.

    Returns:
        ``{"path", "gt_path", "frames", "fps", "width", "height", "codec", "annotations"}``.

    Raises:
        InputError: on bad arguments or when no encoder is available.
        MissingDependencyError: when PyAV is not installed.
    """
    if not isinstance(frames, int) or frames < 1:
        raise InputError(f"frames={frames!r} is not allowed; give at least 1 frame")
    if not isinstance(fps, int) or fps < 1:
        raise InputError(f"fps={fps!r} is not allowed; give a positive integer frame rate")
    if not isinstance(size, int) or size < 48:
        raise InputError(f"size={size!r} is too small for a video; give a frame height >= 48 pixels")
    av = require("av", purpose="writing the synthetic video")
    path, gt_path = Path(path), Path(gt_path)
    h = size - size % 2
    w = round(size * 1.25)
    w -= w % 2
    rng = np.random.default_rng([seed, _SPLIT_CODE["video"]])

    bg = _background(rng, h, w)
    for kind in rng.choice(["hollow", "line", "scribble", "speckle", "segment"], size=int(rng.integers(3, 7))):
        m = _distractor(rng, w, h, str(kind))
        if m is not None:
            bg[m.window][m.m] = _pick_colour(rng, bg, m, tries=3)

    # objects: one per lane, never overlapping, never leaving the frame
    n_obj = int(rng.integers(4, 8))
    lane_h = h / n_obj
    objs: list[_Mover] = []
    for k in range(n_obj):
        cls = int(rng.integers(len(SHAPES)))
        size_k = float(rng.uniform(min(14.0, lane_h * 0.6), min(lane_h * 0.75, size / 3)))
        margin = size_k * 0.65 + 1
        lane_mid = (k + 0.5) * lane_h
        wobble = max(0.0, lane_h / 2 - margin)
        lane_rect = _poly_mask(w, h, np.array([[0, k * lane_h], [w - 1, k * lane_h], [w - 1, (k + 1) * lane_h - 1],
                                               [0, (k + 1) * lane_h - 1]]))
        colour = _pick_colour(rng, bg, lane_rect) if lane_rect is not None else rng.uniform(0, 255, 3)
        speed = float(rng.uniform(1.0, 4.0)) * (1 if rng.random() < 0.5 else -1)
        objs.append(_Mover(cls=cls, size=size_k, margin=margin, x=float(rng.uniform(margin, w - margin)), vx=speed,
                           mid=lane_mid, wobble=wobble, phase=float(rng.uniform(0, 2 * np.pi)),
                           angle=float(rng.uniform(-0.3, 0.3)), spin=float(rng.uniform(-0.02, 0.02)),
                           colour=np.asarray(colour, dtype=np.float32)))
    drifters: list[_Drifter] = []
    for _ in range(int(rng.integers(1, 3))):
        drifters.append(_Drifter(shape=str(rng.choice(SHAPES)), size=_span(rng, 20, size / 2.5),
                                 x=float(rng.uniform(0, w)), y=float(rng.uniform(0, h)),
                                 vx=float(rng.uniform(-2, 2)), vy=float(rng.uniform(-1.5, 1.5)),
                                 colour=rng.uniform(0, 255, 3).astype(np.float32)))

    video_name = path.name
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a dataset file should be readable like any other
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream, codec = _open_stream(container, codecs, fps, w, h)
            for i in range(frames):
                canvas = bg.copy()
                for d in drifters:
                    pts = shape_polygon(d.shape, d.x + d.vx * i, d.y + d.vy * i, d.size)
                    m = _poly_mask(w, h, pts, outline=2)
                    if m is not None:
                        canvas[m.window][m.m] = d.colour
                image_id = i + 1
                images.append({"id": image_id, "frame_index": i, "file_name": f"{video_name}#{i}", "width": w,
                               "height": h})
                for o in objs:
                    # bounce: reflect the free trajectory into [margin, w - margin]
                    span = w - 2 * o.margin
                    u = (o.x - o.margin + o.vx * i) % (2 * span)
                    cx = o.margin + (u if u <= span else 2 * span - u)
                    cy = o.mid + o.wobble * math.sin(o.phase + 0.15 * i)
                    pts = shape_polygon(SHAPES[o.cls], cx, cy, o.size, angle=o.angle + o.spin * i)
                    m = _poly_mask(w, h, pts)
                    if m is None:
                        continue
                    canvas[m.window][m.m] = o.colour
                    ys, xs = np.nonzero(m.m)
                    x0, y0 = int(xs.min()) + m.x0, int(ys.min()) + m.y0
                    x1, y1 = int(xs.max()) + m.x0 + 1, int(ys.max()) + m.y0 + 1
                    anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": CATEGORIES[o.cls][0],
                                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": len(xs), "iscrowd": 0})
                canvas += rng.standard_normal(size=canvas.shape, dtype=np.float32) * np.float32(2.0)
                frame = av.VideoFrame.from_ndarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    gt = {"info": {"description": "retinaedge synthetic video ground truth", "video": video_name, "fps": fps,
                   "frames": frames, "codec": codec, "seed": seed},
          "licenses": [], "images": images, "annotations": anns, "categories": coco_categories()}
    atomic_write_text(gt_path, json.dumps(gt, separators=(",", ":")) + "\n")
    return {"path": str(path), "gt_path": str(gt_path), "frames": frames, "fps": fps, "width": w, "height": h,
            "codec": codec, "annotations": len(anns)}
