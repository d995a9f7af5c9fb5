"""Small random-noise PNG folders for the calibration tests (sizes 50 wide, 30 + i high: letterboxing pads them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``folder/img_<i>.png`` for i < n, (30 + i) x 50 RGB noise; returns the paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (30 + i, 50, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out
