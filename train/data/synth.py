"""Synthetic shapes-on-clutter detection data in the COCO 2017 layout.

`write_synthetic_coco` writes::

    OUT/annotations/instances_train.json   OUT/train/000000.jpg ...
    OUT/annotations/instances_val.json     OUT/val/000000.jpg ...
    (with video=True) OUT/video.mp4 and OUT/annotations/video_gt.json   (see video_synth.py)

What an image holds, and why:

* **Objects** are *filled* shapes of five classes (`CATEGORIES`): circle, square, triangle, star, cross, with
  small random rotations and aspect changes. Sizes run from 8 px to half the image side, drawn from a mix
  (by default 25 % are 8..24 px, 50 % 24..S/4, 25 % S/4..S/2; `SynthConfig.size_mix`): most anchors see
  background, the foreground/background imbalance focal loss exists for.
* **Distractors** that are not objects: *hollow* outlines of the same five shapes, circle segments of at most
  half a circle, elongated ellipses and bars, irregular spiky blobs, lines, speckles and text-like
  scribbles. Objects and distractors share one colour palette, so colour is never the cue: shape and
  fill are.
* **Backgrounds** are solid, gradients, stripes or low-frequency colour noise, plus per-pixel noise; JPEG.
* **Occlusion**: objects and "over" distractors are painted in random order and may cover earlier
  objects, but a placement is rejected if it would leave any labelled object with less than
  `SynthConfig.min_visible` (60 %) of its pixels visible. Every painted object therefore stays labelled;
  the partial-shape distractors (≤ 50 % of a circle) stay below that threshold, so "part of a shape" and
  "an occluded shape" are not confusable by construction.
* **Boxes** are tight around the object's *visible* pixels (like COCO's boxes around the visible extent),
  in pixel-grid coordinates ``[x, y, w, h]`` (a pixel column ``c`` spans ``[c, c+1)``); ``area`` is the
  visible pixel count (COCO's segment area); ``iscrowd`` is 0.
* **Ids**: category ids are sparse (1, 3, 7, 12, 20) so every consumer exercises the id -> index map; image
  ids are not ``0..N-1`` either (``7 * i + 5``), so nothing can confuse an id with a list index.
* **Sizes**: each image side is drawn independently from ``[0.75, 1.25] x size``, so most images are
  non-square and letterboxing is exercised.

Determinism: every image draws from its own generator seeded by ``(seed, split, index)``, so the output
is byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.io import atomic_write_text, ensure_writable_dir

CATEGORIES: tuple[tuple[int, str], ...] = ((1, "circle"), (3, "square"), (7, "triangle"), (12, "star"), (20, "cross"))
"""``(category_id, name)`` of the object classes; ids are deliberately sparse."""

SHAPES: tuple[str, ...] = tuple(name for _, name in CATEGORIES)

_SPLIT_CODE = {"train": 0, "val": 1, "video": 2}


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the image generator (defaults give the `edge`-preset training set).

    Attributes:
        objects: inclusive range of objects attempted per image (placements that would hide an earlier
            object too much are dropped, so a few images get fewer).
        under_distractors: range of distractors painted first (they never hide objects).
        over_distractors: range of distractors painted in between objects (they may occlude them).
        min_visible: fraction of an object's pixels that must stay visible.
        size_jitter: each image side is ``size * U(size_jitter)``.
        min_object: smallest object side in pixels.
        size_mix: fractions of small (``min_object .. 3 min_object``), medium (``.. S/4``) and large
            (``.. S/2``) objects; sides are log-uniform within each band.
        jpeg_quality: JPEG quality of the written images.
        noise: range of the per-pixel Gaussian noise sigma (0..255 scale).
    """

    objects: tuple[int, int] = (3, 10)
    under_distractors: tuple[int, int] = (2, 6)
    over_distractors: tuple[int, int] = (0, 3)
    min_visible: float = 0.6
    size_jitter: tuple[float, float] = (0.75, 1.25)
    min_object: int = 8
    size_mix: tuple[float, float, float] = (0.25, 0.5, 0.25)
    jpeg_quality: int = 90
    noise: tuple[float, float] = (2.0, 8.0)

    def __post_init__(self) -> None:
        for name in ("objects", "under_distractors", "over_distractors"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise InputError(f"SynthConfig.{name}={(lo, hi)!r} must satisfy 0 <= lo <= hi")
        if not 0.5 < self.min_visible <= 1.0:
            raise InputError(
                f"SynthConfig.min_visible={self.min_visible!r} must be in (0.5, 1]; partial-shape distractors "
                "cover up to half a shape, so labelled objects must show more than that"
            )
        lo, hi = self.size_jitter
        if not 0 < lo <= hi:
            raise InputError(f"SynthConfig.size_jitter={self.size_jitter!r} must satisfy 0 < lo <= hi")
        if len(self.size_mix) != 3 or min(self.size_mix) < 0 or not math.isclose(sum(self.size_mix), 1.0):
            raise InputError(f"SynthConfig.size_mix={self.size_mix!r} must be 3 non-negative fractions summing to 1")
        if self.min_object < 4:
            raise InputError(f"SynthConfig.min_object={self.min_object!r} must be >= 4 pixels")
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"SynthConfig.jpeg_quality={self.jpeg_quality!r} must be in 1..100")


# ---------------------------------------------------------------------------------------------------------
# geometry


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def shape_polygon(shape: str, cx: float, cy: float, size: float, *, angle: float = 0.0, aspect: float = 1.0,
                  n_circle: int = 32) -> np.ndarray:
    """Outline of a class shape.

    Args:
        shape: one of `SHAPES`.
        cx, cy: centre in pixels.
        size: side of the unrotated shape's bounding square in pixels.
        angle: rotation in radians.
        aspect: height / width stretch of the unrotated shape.
        n_circle: vertices used for a circle.

    Returns:
        (P, 2) float64 ``(x, y)`` vertices in pixels.
    """
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, n_circle, endpoint=False)
        unit = np.stack([np.cos(t), np.sin(t)], axis=1) * 0.5
    elif shape == "square":
        unit = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    elif shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        unit = np.stack([np.cos(t), np.sin(t)], axis=1) * 0.5
        unit[:, 1] += 0.125  # centre the bounding box (the circumcentre sits above the box centre)
        unit *= 1.15
    elif shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 0.5, 0.21)
        unit = np.stack([np.cos(t) * r, np.sin(t) * r + 0.05], axis=1)
    elif shape == "cross":
        a = 0.18
        unit = np.array([[-a, -0.5], [a, -0.5], [a, -a], [0.5, -a], [0.5, a], [a, a], [a, 0.5], [-a, 0.5],
                         [-a, a], [-0.5, a], [-0.5, -a], [-a, -a]])
    else:
        raise InputError(f"shape {shape!r} is not one of {list(SHAPES)}")
    pts = unit * np.array([1.0, aspect]) * size
    return _rotate(pts, angle) + np.array([cx, cy])


class _Mask:
    """A binary mask drawn with PIL inside a local window ``[x0, x1) x [y0, y1)`` of the image."""

    __slots__ = ("m", "x0", "x1", "y0", "y1")

    def __init__(self, x0: int, y0: int, x1: int, y1: int, m: np.ndarray) -> None:
        self.x0, self.y0, self.x1, self.y1, self.m = x0, y0, x1, y1, m

    @property
    def window(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _draw_mask(width: int, height: int, bounds: np.ndarray, paint: Callable[[ImageDraw.ImageDraw, np.ndarray], None],
               pad: int = 3) -> _Mask | None:
    """Run ``paint(draw, offset)`` on a local 'L' canvas covering ``bounds`` (x0, y0, x1, y1) + pad."""
    x0 = max(0, math.floor(bounds[0]) - pad)
    y0 = max(0, math.floor(bounds[1]) - pad)
    x1 = min(width, math.ceil(bounds[2]) + pad + 1)
    y1 = min(height, math.ceil(bounds[3]) + pad + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    im = Image.new("L", (x1 - x0, y1 - y0), 0)
    paint(ImageDraw.Draw(im), np.array([x0, y0], dtype=np.float64))
    m = np.asarray(im) > 0
    if not m.any():
        return None
    return _Mask(x0, y0, x1, y1, m)


def _poly_mask(width: int, height: int, pts: np.ndarray, *, outline: int = 0) -> _Mask | None:
    bounds = np.concatenate([pts.min(0), pts.max(0)])

    def paint(d: ImageDraw.ImageDraw, off: np.ndarray) -> None:
        xy = [tuple(p) for p in (pts - off).tolist()]
        if outline:
            d.polygon(xy, outline=255, width=outline)
        else:
            d.polygon(xy, fill=255)

    return _draw_mask(width, height, bounds, paint)


# ---------------------------------------------------------------------------------------------------------
# backgrounds and colours


def _span(rng: np.random.Generator, lo: float, hi: float) -> float:
    """``U(lo, hi)``, collapsing to ``lo`` when a small image makes ``hi < lo``."""
    return float(rng.uniform(lo, max(lo, hi)))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W, 3) float32 textured background on the 0..255 scale."""
    kind = rng.choice(["solid", "gradient", "stripes", "noise"], p=[0.15, 0.3, 0.25, 0.3])
    c1, c2 = _random_colour(rng), _random_colour(rng)
    if kind == "solid":
        return np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    if kind == "noise":
        gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        small = rng.integers(0, 256, size=(gh, gw, 3)).astype(np.uint8)
        big = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        return np.asarray(big).astype(np.float32)
    a = rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xs * math.cos(a) + ys * math.sin(a)
    if kind == "gradient":
        t = (proj - proj.min()) / max(1e-6, float(proj.max() - proj.min()))
    else:
        period = rng.uniform(6, 40)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period + rng.uniform(0, 2 * np.pi))
        c2 = c1 + (c2 - c1) * rng.uniform(0.2, 0.6)  # stripes at moderate contrast
    return (c1 + (c2 - c1) * t[..., None]).astype(np.float32)


def _pick_colour(rng: np.random.Generator, canvas: np.ndarray, mask: _Mask, tries: int = 12) -> np.ndarray:
    """A random colour that stands out from the pixels it will cover (so every object is visible)."""
    under = canvas[mask.window][mask.m]
    best, best_score = _random_colour(rng), -1.0
    for _ in range(tries):
        c = _random_colour(rng)
        diff = np.abs(under - c).sum(axis=1)
        score = float(np.mean(diff >= 90))
        if score > best_score:
            best, best_score = c, score
        if score >= 0.97:
            break
    return best


# ---------------------------------------------------------------------------------------------------------
# one image


def _object_size(rng: np.random.Generator, side: int, cfg: SynthConfig) -> float:
    small, medium, big = float(cfg.min_object), max(cfg.min_object + 1.0, 3 * cfg.min_object), side / 4
    half = side / 2
    u = rng.random()
    p_small, p_medium, _ = cfg.size_mix
    if u < p_small:
        lo, hi = small, medium
    elif u < p_small + p_medium:
        lo, hi = medium, max(medium + 1.0, big)
    else:
        lo, hi = max(medium + 1.0, big), max(medium + 2.0, half)
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _distractor(rng: np.random.Generator, w: int, h: int, kind: str) -> _Mask | None:
    side = min(w, h)
    if kind == "hollow":
        size = _span(rng, 14, side / 2.5)
        pts = shape_polygon(str(rng.choice(SHAPES)), rng.uniform(0, w), rng.uniform(0, h), size,
                            angle=rng.uniform(-0.4, 0.4))
        return _poly_mask(w, h, pts, outline=int(rng.integers(1, max(2, int(size / 10)) + 1)))
    if kind == "segment":  # at most half a circle: never mistakable for an occluded (>= 60 % visible) circle
        r = _span(rng, 6, side / 4)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        start = rng.uniform(0, 360)
        extent = rng.uniform(90, 180)

        def paint_chord(d: ImageDraw.ImageDraw, off: np.ndarray) -> None:
            box = (cx - r - off[0], cy - r - off[1], cx + r - off[0], cy + r - off[1])
            d.chord(box, start, start + extent, fill=255)

        return _draw_mask(w, h, np.array([cx - r, cy - r, cx + r, cy + r]), paint_chord)
    if kind in ("ellipse", "bar"):
        length = _span(rng, 10, side / 2)
        aspect = rng.uniform(0.12, 0.4)
        shape = "circle" if kind == "ellipse" else "square"
        pts = shape_polygon(shape, rng.uniform(0, w), rng.uniform(0, h), length, angle=rng.uniform(0, np.pi),
                            aspect=aspect)
        return _poly_mask(w, h, pts)
    if kind == "blob":
        n = int(rng.integers(7, 14))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.25, 1.0, n) * _span(rng, 8, side / 5)
        pts = np.stack([np.cos(t) * radii, np.sin(t) * radii], 1) + np.array([rng.uniform(0, w), rng.uniform(0, h)])
        return _poly_mask(w, h, pts)
    if kind == "line":
        p = rng.uniform([-0.2 * w, -0.2 * h], [1.2 * w, 1.2 * h], size=(int(rng.integers(2, 4)), 2))
        width = int(rng.integers(1, 4))
        return _lines_mask(w, h, [p], width)
    if kind == "scribble":  # a few "words" of pen-like glyphs
        gh = rng.uniform(5, 12)
        x, y = rng.uniform(0, w * 0.7), rng.uniform(0, h - gh)
        strokes = []
        for _ in range(int(rng.integers(3, 10))):
            k = int(rng.integers(2, 5))
            strokes.append(np.stack([x + rng.uniform(0, gh * 0.7, k), y + rng.uniform(0, gh, k)], 1))
            x += gh * rng.uniform(0.7, 1.1) + (gh if rng.random() < 0.2 else 0.0)
        return _lines_mask(w, h, strokes, 1)
    if kind == "speckle":
        pts = rng.uniform([0, 0], [w, h], size=(int(rng.integers(5, 25)), 2))
        rad = rng.uniform(0.8, 1.8, len(pts))
        bounds = np.concatenate([pts.min(0) - 2, pts.max(0) + 2])

        def paint_dots(d: ImageDraw.ImageDraw, off: np.ndarray) -> None:
            for (px, py), rr in zip(pts - off, rad):
                d.ellipse((px - rr, py - rr, px + rr, py + rr), fill=255)

        return _draw_mask(w, h, bounds, paint_dots)
    raise InputError(f"distractor kind {kind!r} is not one of {list(_DISTRACTORS)}")


_DISTRACTORS = ("hollow", "segment", "ellipse", "bar", "blob", "line", "scribble", "speckle")
_DISTRACTOR_P = np.array([0.25, 0.12, 0.1, 0.1, 0.12, 0.12, 0.12, 0.07])
_OCCLUDERS = ("hollow", "segment", "ellipse", "bar", "blob", "line")
_OCCLUDER_P = np.array([0.2, 0.15, 0.15, 0.2, 0.15, 0.15])


def _lines_mask(w: int, h: int, polylines: list[np.ndarray], width: int) -> _Mask | None:
    allp = np.concatenate(polylines)
    bounds = np.concatenate([allp.min(0), allp.max(0)])

    def paint(d: ImageDraw.ImageDraw, off: np.ndarray) -> None:
        for pl in polylines:
            d.line([tuple(p) for p in (pl - off).tolist()], fill=255, width=width)

    return _draw_mask(w, h, bounds, paint, pad=width + 2)


def render_image(rng: np.random.Generator, width: int, height: int,
                 cfg: SynthConfig = SynthConfig()) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one synthetic image and its ground truth.

    Args:
        rng: the image's own generator (the only source of randomness).
        width, height: image size in pixels.
        cfg: generator knobs.

    Returns:
        ``(image, objects)``: image is (H, W, 3) uint8 RGB; each object is
        ``{"class": index into CATEGORIES, "bbox": [x, y, w, h] (visible extent, pixel grid), "area": visible
        pixel count, "visible": visible fraction of the painted shape}``.
    """
    w, h = width, height
    side = min(w, h)
    canvas = _background(rng, h, w)
    owner = np.zeros((h, w), dtype=np.int32)  # 1-based index of the object owning each pixel, 0 = none

    for kind in rng.choice(_DISTRACTORS, p=_DISTRACTOR_P, size=int(rng.integers(*cfg.under_distractors,
                                                                                  endpoint=True))):
        m = _distractor(rng, w, h, str(kind))
        if m is not None:
            canvas[m.window][m.m] = _pick_colour(rng, canvas, m, tries=3)

    n_obj = int(rng.integers(*cfg.objects, endpoint=True))
    n_occ = int(rng.integers(*cfg.over_distractors, endpoint=True))
    order = rng.permutation(np.array([1] * n_obj + [0] * n_occ, dtype=np.int64))
    objects: list[tuple[int, _Mask]] = []  # (class index, full mask)
    full: list[int] = []
    visible: list[int] = []

    def fits(m: _Mask) -> bool:
        if not objects:
            return True
        lost = np.bincount(owner[m.window][m.m], minlength=len(objects) + 1)[1:]
        vis = np.asarray(visible) - lost
        return bool(np.all(vis >= cfg.min_visible * np.asarray(full)))

    for is_obj in order:
        for _attempt in range(8):
            if is_obj:
                cls = int(rng.integers(len(SHAPES)))
                size = min(_object_size(rng, side, cfg), side / 2)
                aspect = rng.uniform(0.85, 1.18) if SHAPES[cls] != "circle" else rng.uniform(0.94, 1.06)
                angle = rng.uniform(-0.35, 0.35)
                margin = size * 0.65 + 1
                if 2 * margin >= side:
                    margin = side / 2 - 1
                cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
                m = _poly_mask(w, h, shape_polygon(SHAPES[cls], cx, cy, size, angle=angle, aspect=aspect))
            else:
                m = _distractor(rng, w, h, str(rng.choice(_OCCLUDERS, p=_OCCLUDER_P)))
            if m is None or not fits(m):
                continue
            region = owner[m.window]
            if objects:
                lost = np.bincount(region[m.m], minlength=len(objects) + 1)[1:]
                for j in np.nonzero(lost)[0]:
                    visible[j] -= int(lost[j])
            canvas[m.window][m.m] = _pick_colour(rng, canvas, m)
            if is_obj:
                objects.append((cls, m))
                full.append(int(m.m.sum()))
                visible.append(full[-1])
                region[m.m] = len(objects)
            else:
                region[m.m] = 0
            break

    out: list[dict[str, Any]] = []
    for k, (obj_cls, m) in enumerate(objects):
        vis = owner[m.window] == k + 1
        ys, xs = np.nonzero(vis)
        if len(xs) == 0:  # cannot happen with min_visible > 0; kept so the invariant is explicit
            continue
        x0, y0 = int(xs.min()) + m.x0, int(ys.min()) + m.y0
        x1, y1 = int(xs.max()) + m.x0 + 1, int(ys.max()) + m.y0 + 1
        out.append({"class": obj_cls, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": len(xs),
                    "visible": len(xs) / full[k]})

    sigma = rng.uniform(*cfg.noise)
    canvas += rng.standard_normal(size=canvas.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), out


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 RGB image (deterministic for a given libjpeg)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# a split


def image_id_for(index: int) -> int:
    """COCO image id of the ``index``-th image of a split (deliberately not equal to the index)."""
    return 7 * index + 5


def _render_chunk(job: tuple[str, int, int, int, int, str, SynthConfig]) -> list[tuple[dict[str, Any],
                                                                                     list[dict[str, Any]]]]:
    split, seed, start, stop, size, image_dir, cfg = job
    results = []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        lo, hi = cfg.size_jitter
        w = max(16, round(size * rng.uniform(lo, hi)))
        h = max(16, round(size * rng.uniform(lo, hi)))
        image, objs = render_image(rng, w, h, cfg)
        name = f"{i:06d}.jpg"
        with open(os.path.join(image_dir, name), "wb") as f:
            f.write(encode_jpeg(image, cfg.jpeg_quality))
        entry = {"id": image_id_for(i), "file_name": name, "width": w, "height": h}
        results.append((entry, objs))
    return results


def coco_categories() -> list[dict[str, Any]]:
    return [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CATEGORIES]


def _write_split(root: Path, split: str, n: int, *, size: int, seed: int, cfg: SynthConfig,
                 pool: ProcessPoolExecutor | None) -> dict[str, Any]:
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    chunk = 32
    jobs = [(split, seed, s, min(n, s + chunk), size, str(image_dir), cfg) for s in range(0, n, chunk)]
    results = pool.map(_render_chunk, jobs) if pool is not None else map(_render_chunk, jobs)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for part in results:
        for entry, objs in part:
            images.append(entry)
            for o in objs:
                anns.append({"id": len(anns) + 1, "image_id": entry["id"], "category_id": CATEGORIES[o["class"]][0],
                             "bbox": o["bbox"], "area": o["area"], "iscrowd": 0})
    data = {
        "info": {"description": "retinaedge synthetic shapes", "version": "1", "seed": seed, "size": size,
                 "split": split, "config": asdict(cfg)},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": coco_categories(),
    }
    ann_file = root / "annotations" / f"instances_{split}.json"
    # the JSON is written last and atomically: a half-finished run leaves no annotation file behind
    atomic_write_text(ann_file, json.dumps(data, separators=(",", ":")) + "\n")
    return {"images": len(images), "annotations": len(anns), "ann_file": str(ann_file), "image_dir": str(image_dir)}


def write_synthetic_coco(out: str | Path, *, train: int = 2400, val: int = 240, size: int = 256, seed: int = 0,
                         video: bool = False, video_frames: int = 90, config: SynthConfig | None = None,
                         workers: int | None = None) -> dict[str, Any]:
    """Write a synthetic COCO-format detection set (and optionally a test video) under ``out``.

    Args:
        out: dataset root; created if needed; existing files of the same names are overwritten.
        train: number of training images.
        val: number of validation images.
        size: nominal image side in pixels; each side is drawn from ``size * config.size_jitter``.
        seed: the whole output is a function of this seed (byte-identical JSON and images).
        video: also write ``video.mp4`` and ``annotations/video_gt.json`` (see `write_synthetic_video`).
        video_frames: frames of the video.
        config: generator knobs; defaults to `SynthConfig()`.
        workers: processes used for rendering; ``None`` picks ``min(4, cpu_count)``, ``0`` renders inline.
            The output does not depend on it.

    Returns:
        Summary: ``{"root", "seed", "size", "categories": [{"id", "name", "supercategory"}],
        "splits": {"train"|"val": {"images", "annotations", "ann_file", "image_dir"}}, "video": {...}|None}``.

    Raises:
        InputError: on a negative count, a size below 32, or an unwritable ``out``.
    """
    cfg = config or SynthConfig()
    for name, v in (("train", train), ("val", val)):
        if not isinstance(v, int) or v < 0:
            raise InputError(f"{name}={v!r} images is not allowed; give a count >= 0")
    if not isinstance(size, int) or size < 32:
        raise InputError(f"size={size!r} is too small; give an image side >= 32 pixels (default 256)")
    root = ensure_writable_dir(out)
    total = train + val
    n_workers = min(4, os.cpu_count() or 1) if workers is None else max(0, workers)
    if total < 64:
        n_workers = 0  # process start-up costs more than drawing a few images
    pool = None
    if n_workers > 1:
        # forkserver: never fork a parent that may hold torch/OpenMP threads
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context(method))
    try:
        splits = {name: _write_split(root, name, n, size=size, seed=seed, cfg=cfg, pool=pool)
                  for name, n in (("train", train), ("val", val))}
    finally:
        if pool is not None:
            pool.shutdown()
    video_summary = None
    if video:
        from retinaedge.train.data.video_synth import write_synthetic_video

        video_summary = write_synthetic_video(root / "video.mp4", root / "annotations" / "video_gt.json",
                                              frames=video_frames, size=size, seed=seed)
    return {"root": str(root), "seed": seed, "size": size, "categories": coco_categories(), "splits": splits,
            "video": video_summary}
