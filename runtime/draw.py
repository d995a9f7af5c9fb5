"""Drawing detections on images, and contact sheets of annotated samples (PIL only).

Used by ``retinaedge infer`` (annotated video frames and images) and by ``retinaedge validate`` (a sheet of
sample images per model: the ground truth in white, the model's detections over it in class colours).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError


@cache
def class_color(index: int) -> tuple[int, int, int]:
    """A stable, well separated RGB colour for class ``index`` (golden-ratio hue walk)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


@cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default()


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"image of shape {image.shape} and dtype {image.dtype} cannot be drawn on; pass (H, W, 3) uint8 RGB"
        )


GT_COLOR: tuple[int, int, int] = (255, 255, 255)
"""Ground-truth boxes are drawn in white under the detections' class colours (validation sample sheets)."""


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    class_names: Sequence[str],
    *,
    min_score: float = 0.0,
    line_width: int = 2,
    show_labels: bool = True,
) -> np.ndarray:
    """Draw boxes with ``name score`` labels on a copy of an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        detections: boxes in the image's own pixels (xyxy).
        class_names: name of each contiguous class index.
        min_score: detections below this score are not drawn.
        line_width: box outline width in pixels.
        show_labels: draw the ``name score`` tag above each box.

    Returns:
        (H, W, 3) uint8 RGB, a new array; ``image`` is not modified.
    """
    keep = detections.scores >= min_score
    # draw low scores first so the confident boxes end on top
    order = np.argsort(detections.scores[keep], kind="stable")
    classes = detections.classes[keep][order].tolist()
    scores = detections.scores[keep][order].tolist()
    labels = [f"{_name(class_names, c)} {s:.2f}" for c, s in zip(classes, scores, strict=True)]
    return _draw_boxes(image, detections.boxes[keep][order], [class_color(int(c)) for c in classes],
                       labels if show_labels else None, line_width)


def draw_ground_truth(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    *,
    line_width: int = 1,
    show_labels: bool = False,
) -> np.ndarray:
    """Draw ground-truth boxes in `GT_COLOR` on a copy of an image (detections are then drawn over them).

    Args:
        image: (H, W, 3) uint8 RGB.
        boxes: (M, 4) xyxy in the image's own pixels.
        classes: (M,) contiguous class indices.
        class_names: name of each class index (used when ``show_labels``).
        line_width: box outline width in pixels.
        show_labels: draw the class name above each box.

    Returns:
        (H, W, 3) uint8 RGB, a new array.
    """
    labels = [_name(class_names, int(c)) for c in np.asarray(classes).tolist()] if show_labels else None
    return _draw_boxes(image, np.asarray(boxes, np.float32).reshape(-1, 4), [GT_COLOR] * len(classes), labels,
                       line_width)


def _name(class_names: Sequence[str], cls: int) -> str:
    return class_names[int(cls)] if 0 <= int(cls) < len(class_names) else str(int(cls))


def _draw_boxes(image: np.ndarray, boxes: np.ndarray, colors: Sequence[tuple[int, int, int]],
                labels: Sequence[str] | None, line_width: int) -> np.ndarray:
    """Outline ``boxes`` (N, 4) xyxy, clipped to the image, each in its colour, with an optional tag above it."""
    _check_rgb(image)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    h, w = image.shape[:2]
    for i, (box, color) in enumerate(zip(boxes.tolist(), colors, strict=True)):
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, x2 = sorted((min(max(x1, 0.0), w - 1.0), min(max(x2, 0.0), w - 1.0)))
        y1, y2 = sorted((min(max(y1, 0.0), h - 1.0), min(max(y2, 0.0), h - 1.0)))
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line_width)
        if labels is not None:
            text = labels[i]
            tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
            tw, th = tx1 - tx0 + 4, ty1 - ty0 + 4
            ty = y1 - th if y1 - th >= 0 else y1  # inside the box when there is no room above it
            tx = min(x1, max(0.0, w - tw))
            draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
            draw.text((tx + 2 - tx0, ty + 2 - ty0), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def contact_sheet(
    images: Sequence[np.ndarray],
    *,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    tile: int = 256,
    background: tuple[int, int, int] = (32, 32, 32),
) -> np.ndarray:
    """Tile images (each fitted into a ``tile x tile`` cell, aspect kept) into one sheet.

    Args:
        images: (H_i, W_i, 3) uint8 RGB images, e.g. outputs of `draw_detections`.
        titles: optional caption per image, written at the top of its cell.
        columns: cells per row.
        tile: cell side in pixels.
        background: RGB fill of empty space.

    Returns:
        (rows * tile, columns * tile, 3) uint8 RGB.
    """
    if not images:
        raise InputError("contact_sheet got 0 images; pass at least one")
    if columns <= 0 or tile <= 0:
        raise InputError(f"columns={columns} and tile={tile} must be positive")
    if titles is not None and len(titles) != len(images):
        raise InputError(f"{len(titles)} titles for {len(images)} images; give one title per image")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), background)
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        _check_rgb(image)
        im = Image.fromarray(image)
        scale = min(tile / im.width, tile / im.height)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.BILINEAR)
        x0 = (i % columns) * tile + (tile - size[0]) // 2
        y0 = (i // columns) * tile + (tile - size[1]) // 2
        sheet.paste(im, (x0, y0))
        if titles is not None:
            draw.text(((i % columns) * tile + 3, (i // columns) * tile + 2), titles[i], fill=(255, 255, 255),
                      font=_font())
    return np.asarray(sheet)
