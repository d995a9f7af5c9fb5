"""Training augmentation: horizontal flip and photometric jitter, in numpy on uint8 RGB images.

The flip is applied to the *original* image before letterboxing (so it is exact for any padding); the
photometric jitter is applied to the resized image area of the letterboxed canvas only, so the letterbox
border keeps the spec's pad value that runtime and calibration will see.

Photometric jitter is one affine colour transform per image, ``out = clip(M @ rgb + b)``, composed of
(in this order) saturation, hue rotation, contrast and brightness, with the same definitions as
torchvision's ``adjust_saturation`` / ``adjust_contrast`` / ``adjust_brightness`` (grey = ITU-R 601 luma
``0.299 R + 0.587 G + 0.114 B``; contrast blends towards the image's mean luma). Hue is a rotation of the
chroma plane in YIQ space (luma-preserving; torchvision rotates in HSV instead, which is not affine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retinaedge.runtime.errors import InputError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation knobs.

    Attributes:
        hflip: probability of a horizontal flip.
        jitter: brightness, contrast and saturation factors are drawn from ``U(1 - jitter, 1 + jitter)``.
        hue: hue rotation drawn from ``U(-hue, hue)`` in turns (``0.5`` = 180 degrees).
        p_jitter: probability that an image is jittered at all.
    """

    hflip: float = 0.5
    jitter: float = 0.2
    hue: float = 0.02
    p_jitter: float = 0.8

    def __post_init__(self) -> None:
        for name in ("hflip", "p_jitter"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"augment.{name}={v!r} is a probability; give a value in [0, 1]")
        if not 0.0 <= self.jitter < 1.0:
            raise InputError(f"augment.jitter={self.jitter!r} must be in [0, 1); factors are U(1-j, 1+j)")
        if not 0.0 <= self.hue <= 0.5:
            raise InputError(f"augment.hue={self.hue!r} must be in [0, 0.5] turns")


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an image and its boxes left-right.

    Args:
        image: (H, W, 3) uint8.
        boxes: (M, 4) xyxy pixels in the same image.

    Returns:
        ``(image, boxes)``: a contiguous mirrored copy and ``(W - x2, y1, W - x1, y2)``.
    """
    w = image.shape[1]
    flipped = np.ascontiguousarray(image[:, ::-1])
    out = boxes.astype(np.float32, copy=True)
    out[:, 0] = w - boxes[:, 2]
    out[:, 2] = w - boxes[:, 0]
    return flipped, out


def jitter_matrix(*, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0, hue: float = 0.0,
                  mean_luma: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The affine colour transform ``rgb -> M @ rgb + b`` of one jitter draw.

    Args:
        brightness: multiply by this (torchvision ``adjust_brightness``).
        contrast: blend with the mean luma, ``mean + c * (x - mean)`` (``adjust_contrast``).
        saturation: blend with the pixel's luma, ``luma + s * (x - luma)`` (``adjust_saturation``).
        hue: rotation of the YIQ chroma plane in turns.
        mean_luma: the image's mean luma on the 0..255 scale (needed by contrast).

    Returns:
        ``(M, b)``: (3, 3) and (3,) float64.
    """
    eye = np.eye(3)
    sat = saturation * eye + (1.0 - saturation) * np.outer(np.ones(3), LUMA)
    a = 2 * math.pi * hue
    rot = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    hue_m = _YIQ2RGB @ rot @ _RGB2YIQ
    m = brightness * contrast * (hue_m @ sat)
    b = brightness * (1.0 - contrast) * mean_luma * np.ones(3)
    return m, b


def color_jitter(image: np.ndarray, *, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                 hue: float = 0.0) -> np.ndarray:
    """Apply one jitter draw to an RGB image.

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        (H, W, 3) uint8, rounded and clipped to 0..255.
    """
    x = image.reshape(-1, 3).astype(np.float32)
    mean_luma = float(x.mean(axis=0) @ LUMA) if x.size else 0.0
    m, b = jitter_matrix(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue,
                         mean_luma=mean_luma)
    out = x @ m.T.astype(np.float32) + b.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8).reshape(image.shape)


def random_jitter(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """`color_jitter` with factors drawn from ``cfg`` (returns ``image`` itself when not applied)."""
    if cfg.p_jitter <= 0 or (cfg.jitter == 0 and cfg.hue == 0) or rng.random() >= cfg.p_jitter:
        return image
    j = cfg.jitter
    b, c, s = rng.uniform(1 - j, 1 + j, size=3)
    return color_jitter(image, brightness=float(b), contrast=float(c), saturation=float(s),
                        hue=float(rng.uniform(-cfg.hue, cfg.hue)))
