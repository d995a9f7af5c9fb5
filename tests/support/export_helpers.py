"""Helpers shared by the export tests: a tiny torch RetinaNet, a tiny dataset, reference heads in torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinaedge.runtime.spec import AnchorSpec, DetectorSpec


class TinyRetina(torch.nn.Module):
    """Same output contract as train/model.py: ``{"cls_logits": (B, N, K), "box_deltas": (B, N, 4)}``,
    anchors order y, x, a; normalisation inside. `levels` gives the per-level tensors before the concat."""

    def __init__(self, spec: DetectorSpec, channels: int = 8) -> None:
        super().__init__()
        self.k, self.a = spec.num_classes, spec.num_anchors_per_cell
        self.register_buffer("mean", torch.tensor(spec.pixel_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.pixel_std).view(1, 3, 1, 1))
        c = channels
        self.p3 = torch.nn.Sequential(torch.nn.Conv2d(3, c, 3, 4, 1), torch.nn.ReLU(),
                                      torch.nn.Conv2d(c, c, 3, 2, 1), torch.nn.ReLU())
        self.p4 = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, 2, 1), torch.nn.ReLU())
        self.cls = torch.nn.Conv2d(c, self.a * self.k, 3, 1, 1)
        self.box = torch.nn.Conv2d(c, self.a * 4, 3, 1, 1)
        with torch.no_grad():
            self.cls.bias.fill_(-3.0)
            self.cls.weight.mul_(12.0)
            self.box.weight.mul_(0.3)

    def levels(self, images: Any) -> tuple[list[Any], list[Any]]:
        x = (images.float() - self.mean) / self.std
        f3 = self.p3(x)
        f4 = self.p4(f3)
        cls, box = [], []
        for f in (f3, f4):
            b = f.shape[0]
            cls.append(self.cls(f).permute(0, 2, 3, 1).reshape(b, -1, self.k))
            box.append(self.box(f).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return cls, box

    def forward(self, images: Any) -> dict[str, Any]:
        cls, box = self.levels(images)
        return {"cls_logits": torch.cat(cls, 1), "box_deltas": torch.cat(box, 1)}


def make_spec(**changes: Any) -> DetectorSpec:
    spec = DetectorSpec(class_names=("circle", "square", "star"), category_ids=(1, 3, 7), input_height=64,
                        input_width=64, anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0)))
    return spec.replace(**changes) if changes else spec


def torch_heads(model: Any, batch: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(batch))
    return {k: v.numpy() for k, v in out.items()}


@dataclass(frozen=True)
class TinyData:
    root: Path
    val_files: list[Path]
    val_ids: list[int]
    ann_file: Path


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blobs on a gradient: structured enough that a random conv net gives varied, confident outputs."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * rng.uniform(60, 200, 3)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 14)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)
