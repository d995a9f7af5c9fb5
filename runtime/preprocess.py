"""Image loading and letterboxing: the one preprocessing shared by training, calibration, eval and runtime.

Pixels stay on the 0..255 scale here; mean/std normalisation lives inside the exported graph (and inside
the torch model), so no two stages can disagree about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import DetectorSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Letterbox:
    """How one image was mapped into the network input: ``net = orig * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float
    orig_height: int
    orig_width: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``xyxy`` boxes from network-input pixels back to the original image, clipped to it.

        Args:
            boxes: (K, 4) xyxy in network-input pixels.

        Returns:
            (K, 4) float32 xyxy in original-image pixels, clipped to ``[0, W] x [0, H]``.
        """
        out = boxes.astype(np.float32, copy=True)
        out[:, 0::2] = (out[:, 0::2] - self.pad_x) / self.scale
        out[:, 1::2] = (out[:, 1::2] - self.pad_y) / self.scale
        np.clip(out[:, 0::2], 0, self.orig_width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.orig_height, out=out[:, 1::2])
        return out

    def to_network(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``xyxy`` boxes from original-image pixels into network-input pixels. (K, 4) -> (K, 4)."""
        out = boxes.astype(np.float32, copy=True)
        out[:, 0::2] = out[:, 0::2] * self.scale + self.pad_x
        out[:, 1::2] = out[:, 1::2] * self.scale + self.pad_y
        return out


def letterbox_params(height: int, width: int, spec: DetectorSpec) -> tuple[Letterbox, tuple[int, int]]:
    """Scale and padding that fit a ``height x width`` image into the spec's input.

    Returns:
        The `Letterbox` and the resized ``(new_h, new_w)`` before padding.
    """
    if height <= 0 or width <= 0:
        raise InputError(f"image size {width}x{height} is empty; images need at least 1x1 pixels")
    scale = min(spec.input_height / height, spec.input_width / width)
    new_h = max(1, min(spec.input_height, round(height * scale)))
    new_w = max(1, min(spec.input_width, round(width * scale)))
    if spec.letterbox_center:
        pad_x = (spec.input_width - new_w) // 2
        pad_y = (spec.input_height - new_h) // 2
    else:
        pad_x = pad_y = 0
    # the exact per-axis scale after rounding keeps boxes aligned with the resized pixels
    return Letterbox(scale, float(pad_x), float(pad_y), height, width), (new_h, new_w)


def letterbox(image: np.ndarray, spec: DetectorSpec) -> tuple[np.ndarray, Letterbox]:
    """Resize (keeping aspect) and pad an RGB image into the spec's input size.

    Args:
        image: (H, W, 3) uint8 RGB.
        spec: the detector spec.

    Returns:
        ``(canvas, meta)``: canvas is (input_height, input_width, 3) uint8 RGB.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image shape {image.shape} is not (H, W, 3) RGB; convert it to RGB first")
    h, w = image.shape[:2]
    meta, (new_h, new_w) = letterbox_params(h, w, spec)
    if (new_h, new_w) != (h, w):
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    else:
        resized = image
    canvas = np.full((spec.input_height, spec.input_width, 3), spec.letterbox_pad, dtype=np.uint8)
    y0, x0 = int(meta.pad_y), int(meta.pad_x)
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return canvas, meta


def to_input(canvases: list[np.ndarray] | np.ndarray, spec: DetectorSpec) -> np.ndarray:
    """Stack letterboxed HWC canvases into the network input.

    Args:
        canvases: B arrays of (H, W, 3) uint8, or one (B, H, W, 3) array.

    Returns:
        (B, 3, H, W) in the spec's ``input_dtype`` (uint8, or float32 on the 0..255 scale), contiguous.
    """
    batch = np.stack(list(canvases)) if isinstance(canvases, list) else canvases
    chw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return chw if spec.input_dtype == "uint8" else chw.astype(np.float32)


def load_image(path: str | Path, *, size: tuple[int, int] | None = None, exif_transpose: bool = False,
               reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Any PIL mode is converted (grayscale, palette, RGBA with its alpha dropped, CMYK ...); 16-bit grayscale
    (modes ``I;16*`` and ``I``) keeps its top 8 bits, as OpenCV's ``imread`` does, where a plain
    ``convert("RGB")`` would clip it to white. EXIF orientation is ignored (COCO's convention) unless ``size``
    says the file was annotated turned (see ``size``) or ``exif_transpose`` asks for it.

    Args:
        path: the image file.
        size: ``(width, height)`` an annotation file gives for it. When the stored pixels do not have this
            size but the file's EXIF orientation turns them into it (a photo annotated the way viewers
            show it), the turned image is returned.
        exif_transpose: always apply the file's EXIF orientation: the image as viewers display it, as
            OpenCV's ``imread`` (``IMREAD_COLOR``) returns it. For loose photos without annotations
            (``retinaedge infer``); ``size`` is not consulted then.
        reduce_to: ``(width, height)`` (of the image as returned) the caller resizes it down to next. A JPEG
            at least twice that size in both sides is then decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
            scaling), keeping at least twice ``reduce_to`` so the caller's resize stays an antialiased
            downscale: a 4000x3000 photo letterboxed to 256 px decodes at 1000x750 in ~1/8 of the time. The
            result is then smaller than the file by that factor: ``ceil(W / s) x ceil(H / s)``. For training
            batches, not for evaluation (the pixels differ slightly from a full decode).

    Raises:
        InputError: naming the file when it is missing or cannot be decoded.
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            shown = _shown_size(im)
            turn = exif_transpose or (size is not None and im.size != tuple(size) and shown == tuple(size))
            if reduce_to is not None and im.format == "JPEG":
                rw, rh = reduce_to
                if turn and shown != im.size:
                    rw, rh = rh, rw  # draft sizes are in the stored orientation
                im.draft(im.mode, (2 * rw, 2 * rh))
            return _to_rgb(ImageOps.exif_transpose(im) if turn else im)
    except FileNotFoundError:
        raise InputError(f"image {str(p)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"image {str(p)!r} cannot be decoded ({e}); remove or replace the file") from None


def _shown_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as viewers show the image: swapped by EXIF orientations 5-8 (a quarter turn)."""
    orientation = im.getexif().get(0x0112, 1)
    return (im.size[1], im.size[0]) if orientation in (5, 6, 7, 8) else im.size


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I;16") or im.mode == "I":
        gray = (np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted), by suffix.

    Raises:
        InputError: if the folder does not exist or holds no images.
    """
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"image folder {str(d)!r} does not exist")
    files = sorted(p for p in d.iterdir() if is_image_file(p))
    if not files:
        raise InputError(
            f"image folder {str(d)!r} holds no images with suffix in {list(IMAGE_SUFFIXES)}"
        )
    return files


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` is a file with an image suffix (`IMAGE_SUFFIXES`, any case)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def image_files(source: str | Path) -> list[Path]:
    """The images ``source`` names: one image file, or those directly in a folder (`list_images`).

    Raises:
        InputError: if ``source`` is neither an image file nor a folder holding images.
    """
    return [Path(source)] if is_image_file(source) else list_images(source)


def preprocess_batch(images: list[np.ndarray], spec: DetectorSpec) -> tuple[np.ndarray, list[Letterbox]]:
    """Letterbox and stack RGB images: the exact preprocessing of every backend and of calibration.

    Args:
        images: B arrays of (H_i, W_i, 3) uint8 RGB.

    Returns:
        ``(batch, metas)``: batch is (B, 3, H, W) in the spec's input dtype.
    """
    canvases, metas = zip(*(letterbox(im, spec) for im in images), strict=True)
    return to_input(list(canvases), spec), list(metas)
