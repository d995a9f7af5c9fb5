"""`Detections`: what every backend returns for one image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one image, sorted by descending score.

    Attributes:
        boxes: (K, 4) float32 xyxy in original-image pixels, clipped to the image.
        scores: (K,) float32 in [0, 1].
        classes: (K,) int64 contiguous class indices ``0..num_classes-1``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.classes.shape != (n,):
            raise ValueError(
                f"Detections shapes disagree: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"classes {self.classes.shape}; expected (K, 4), (K,), (K,)"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))

    def to_json(self, class_names: Sequence[str] | None = None,
                category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One dict per detection: ``bbox`` (xyxy), ``score``, ``class``; names and category ids if given."""
        out = []
        for b, s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.classes.tolist(), strict=True):
            d: dict[str, Any] = {"bbox": [round(v, 2) for v in b], "score": round(s, 5), "class": int(c)}
            if class_names is not None:
                d["name"] = class_names[c]
            if category_ids is not None:
                d["category_id"] = category_ids[c]
            out.append(d)
        return out
