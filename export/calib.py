"""Calibration images, the calibration cache, and process isolation for the tools that calibrate.

* Images go through the runtime's own preprocessing (`retinaedge.runtime.preprocess.preprocess_batch`:
  letterbox, the spec's pad value and input dtype), so calibration sees exactly what inference sees.
* Corrupt files are **skipped and counted** (``CalibrationSet.skipped`` names each with the reason; the
  pipeline prints the count); an error is raised only when no usable image is left. A calibration folder is
  often a copy of a dataset split where one bad file should not stop an export, but silently calibrating on
  fewer images than asked would hide it, hence the count in the log and in ``export.json``.
* Which folder calibrates and the cache key are `retinaedge.runtime.calibration`'s (the same rule and key as
  the TensorRT calibrator's); the cache directory is named by the key, so a stale entry is never read, and
  entries for other keys are pruned when a new one is written.
* ModelOpt patches ONNX Runtime's quantization classes in place when it runs (docs/TENSORRT.md, "process trap");
  `run_isolated` runs a tool in a fresh ``spawn`` process so neither quantizer ever sees the other's patches.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.io import atomic_write_bytes, atomic_write_text, sha256_file
from retinaedge.runtime.preprocess import Letterbox, load_image, preprocess_batch
from retinaedge.runtime.spec import DetectorSpec

T = TypeVar("T")

CACHE_FORMAT = 1


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration images.

    Attributes:
        files: the images used, in order.
        batch: (N, 3, H, W) in the spec's input dtype, letterboxed like at runtime.
        metas: one `Letterbox` per image (maps network boxes back to the original image).
        skipped: ``(file, reason)`` for each corrupt file that was skipped.
    """

    files: tuple[Path, ...]
    batch: np.ndarray
    metas: tuple[Letterbox, ...]
    skipped: tuple[tuple[Path, str], ...] = ()


def load_calibration_set(
    files: Sequence[Path], spec: DetectorSpec, *, limit: int | None = None
) -> CalibrationSet:
    """Load and preprocess up to ``limit`` images, skipping corrupt ones.

    Raises:
        InputError: when no file in ``files`` can be decoded (names the first failure).
    """
    images: list[np.ndarray] = []
    used: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for f in files:
        if limit is not None and len(used) >= limit:
            break
        try:
            images.append(load_image(f))
        except InputError as e:
            skipped.append((Path(f), str(e)))
            continue
        used.append(Path(f))
    if not used:
        first = f" (first: {skipped[0][1]})" if skipped else ""
        raise InputError(
            f"no usable calibration image among {len(files)} files, {len(skipped)} corrupt{first}; "
            "pass a folder with decodable images"
        )
    batch, metas = preprocess_batch(images, spec)
    return CalibrationSet(tuple(used), batch, tuple(metas), tuple(skipped))


class CalibrationCache:
    """Quantized pre-NMS graphs and calibration records, one directory per key under ``root`` (``DIR/calib``).

    Args:
        root: the cache directory.
        key: `calibration_key` of the current inputs.
    """

    def __init__(self, *, root: str | Path, key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.dir = self.root / key[:16]

    def _manifest(self) -> dict[str, Any]:
        p = self.dir / "manifest.json"
        if not p.is_file():
            return {}
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) and data.get("key") == self.key else {}

    def get(self, name: str) -> bytes | None:
        """Cached bytes for ``name`` under the current key, or None (never another key's entry)."""
        entry = self._manifest().get("entries", {}).get(name)
        p = self.dir / name
        if not entry or not p.is_file() or sha256_file(p) != entry:
            return None
        return p.read_bytes()

    def put(self, name: str, data: bytes, *, record: dict[str, Any] | None = None) -> None:
        """Store ``data`` as ``name`` (atomically) and prune entries of other keys."""
        if self.root.is_dir():
            for other in self.root.iterdir():
                if other.is_dir() and other.name != self.dir.name:
                    shutil.rmtree(other, ignore_errors=True)
        manifest = self._manifest() or {"key": self.key, "format": CACHE_FORMAT, "entries": {}, "records": {}}
        atomic_write_bytes(self.dir / name, data)
        manifest["entries"][name] = hashlib.sha256(data).hexdigest()
        if record is not None:
            manifest["records"][name] = record
        atomic_write_text(self.dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def record(self, name: str) -> dict[str, Any] | None:
        rec = self._manifest().get("records", {}).get(name)
        return rec if isinstance(rec, dict) else None


def run_isolated(target: Callable[..., T], /, **kwargs: Any) -> T:
    """Run ``target(**kwargs)`` in a fresh ``spawn`` process and return its result (exceptions re-raised).

    ``target`` must be a module-level function; arguments and result must pickle (pass file paths, not models).
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(target, **kwargs).result()
