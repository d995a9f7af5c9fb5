"""Detections over a folder of images (or one image file): ``detections.jsonl``, annotated JPEG copies and
``stats.json``.

Split from the video pipeline: an image run is a plain loop (read, batch, detect, draw) with no threads, queues,
drop policy or encoder, and it has its own naming problem (`annotated_names`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaedge.runtime.draw import draw_detections
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.io import atomic_write_text, ensure_writable_dir
from retinaedge.runtime.outputs import DRAW_MIN_SCORE, JSONL_NAME, STATS_NAME, image_record
from retinaedge.runtime.preprocess import image_files, load_image
from retinaedge.runtime.runner import Detector


@dataclass(frozen=True)
class ImageStats:
    """What an image-folder run did.

    Attributes:
        images: images processed.
        wall_s: total seconds (loading, inference, drawing, writing).
        fps: images per second over ``wall_s``.
        latency_ms_p50: median per-image time of preprocess + model + post-process (batch time / batch size).
        latency_ms_p99: 99th percentile of the same.
        jsonl_path: one line per image: ``{"file", "width", "height", "detections"}``, plus ``"annotated"`` (the
            annotated copy, relative to the output folder) when those are written.
        annotated_dir: annotated JPEGs (names: `annotated_names`), or None when not written.
    """

    images: int
    wall_s: float
    fps: float
    latency_ms_p50: float
    latency_ms_p99: float
    jsonl_path: str
    annotated_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.images} images in {self.wall_s:.2f} s ({self.fps:.1f} img/s), latency p50 "
                f"{self.latency_ms_p50:.1f} ms p99 {self.latency_ms_p99:.1f} ms")


def annotated_names(files: Sequence[Path]) -> list[str]:
    """File names of the annotated JPEG copies of ``files`` (one folder's images), unique and stable.

    ``a.png`` -> ``a.jpg`` when no other file shares its stem; ``a.png`` -> ``a.png.jpg`` (the source name kept)
    when another does (``a.jpg`` next to ``a.png``) or when another file is named like its stem (``a.png.jpg``
    next to ``a.png``), so no copy overwrites another. Stems and names compare case-folded: the outputs stay
    distinct on case-insensitive file systems too.

    Args:
        files: image files with distinct names (`retinaedge.runtime.preprocess.list_images`).

    Returns:
        One name per file, in the same order.
    """
    stems = Counter(p.stem.casefold() for p in files)
    taken = {p.name.casefold() for p in files}
    return [f"{p.stem}.jpg" if stems[p.stem.casefold()] == 1 and p.stem.casefold() not in taken else f"{p.name}.jpg"
            for p in files]


def run_images(
    *,
    detector: Detector,
    source_dir: str | Path,
    out_dir: str | Path,
    batch: int = 1,
    write_images: bool = True,
    min_score: float = DRAW_MIN_SCORE,
    progress: Callable[[int], None] | None = None,
) -> ImageStats:
    """Run a detector over every image of a folder.

    Images are read as viewers display them: the file's EXIF orientation is applied (as OpenCV's ``imread``
    and Ultralytics do), so the model sees the turned photo and boxes, ``width``/``height`` and the annotated
    copies are all in the displayed frame. (Datasets keep COCO's stored-pixel convention: see
    `retinaedge.runtime.preprocess.load_image`.)

    Args:
        detector: runner + spec (activated here, deactivated at the end).
        source_dir: folder of images, or one image file (`retinaedge.runtime.preprocess.image_files`).
        out_dir: where ``detections.jsonl`` and ``annotated/*.jpg`` (named by `annotated_names`) go.
        batch: images per inference call.
        write_images: also write annotated copies.
        min_score: detections below it are not drawn (all are written to the JSONL).
        progress: called with the number of images done so far.

    Returns:
        `ImageStats`, also written to ``out_dir/stats.json``.
    """
    from PIL import Image

    if batch <= 0:
        raise InputError(f"batch={batch} must be a positive integer")
    files = image_files(source_dir)
    out_names = annotated_names(files)
    out = ensure_writable_dir(out_dir)
    ann_dir = out / "annotated"
    if write_images:
        ann_dir.mkdir(exist_ok=True)
    start = time.perf_counter()
    latencies: list[float] = []
    jsonl_path = out / JSONL_NAME
    names = detector.spec.class_names
    detector.runner.activate()
    try:
        with open(jsonl_path, "w", encoding="utf-8") as f:
            for i in range(0, len(files), batch):
                chunk, chunk_names = files[i:i + batch], out_names[i:i + batch]
                images = [load_image(p, exif_transpose=True) for p in chunk]
                t0 = time.perf_counter()
                dets = detector(images)
                dt = (time.perf_counter() - t0) / len(chunk)
                latencies.extend([dt] * len(chunk))
                for path, out_name, image, d in zip(chunk, chunk_names, images, dets, strict=True):
                    line = image_record(path, image, d, names, detector.spec.category_ids)
                    if write_images:
                        line["annotated"] = f"{ann_dir.name}/{out_name}"
                        drawn = draw_detections(image, d, names, min_score=min_score)
                        Image.fromarray(drawn).save(ann_dir / out_name, quality=90)
                    f.write(json.dumps(line) + "\n")
                if progress is not None:
                    progress(min(i + batch, len(files)))
    finally:
        detector.runner.deactivate()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000.0
    stats = ImageStats(
        images=len(files), wall_s=wall, fps=len(files) / wall if wall > 0 else 0.0,
        latency_ms_p50=float(np.percentile(lat, 50)), latency_ms_p99=float(np.percentile(lat, 99)),
        jsonl_path=str(jsonl_path), annotated_dir=str(ann_dir) if write_images else None,
    )
    atomic_write_text(out / STATS_NAME, json.dumps(stats.to_dict(), indent=2) + "\n")
    return stats
