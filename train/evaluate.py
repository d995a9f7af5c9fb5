"""COCO evaluation of the torch model, through exactly the runtime's preprocessing and coordinate mapping.

Each ORIGINAL val image is letterboxed by `retinaedge.runtime.preprocess.preprocess_batch` (the code every
backend and the calibrator use), run through the model and `retinaedge.train.postprocess.postprocess`,
mapped back with `Letterbox.to_original`, and scored by `retinaedge.runtime.cocoeval.coco_evaluate`. So the
torch FP32 number is comparable with the ORT and TensorRT rows of the validation report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinaedge.runtime.cocoeval import coco_evaluate, split_layout
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.preprocess import preprocess_batch
from retinaedge.runtime.spec import DetectorSpec

__all__ = ["detect_images", "evaluate", "split_paths"]


def split_paths(data: str | Path | None, split: str, *, ann: str | Path | None = None,
                images: str | Path | None = None) -> tuple[Path, Path]:
    """``(annotation json, image dir)`` of a split in the COCO layout, with explicit overrides.

    Layout: ``DATA/annotations/instances_<split>.json`` and ``DATA/<split>/``, or COCO's release names
    ``instances_<split>2017.json`` and ``<split>2017/`` (`retinaedge.runtime.cocoeval.split_layout`).

    Raises:
        InputError: naming the missing file or folder (and the flag that overrides it).
    """
    if data is None and (ann is None or images is None):
        raise InputError(f"no --data given and no --{split}-ann/--{split}-images; pass the dataset root")
    default_ann, default_images = split_layout(data if data is not None else ".", split)
    ann_p = Path(ann) if ann is not None else default_ann
    img_p = Path(images) if images is not None else default_images
    if not ann_p.is_file():
        raise InputError(f"{split} annotations {str(ann_p)!r} do not exist; expected the COCO layout "
                         f"DATA/annotations/instances_{split}.json (or instances_{split}2017.json) or pass "
                         f"--{split}-ann")
    if not img_p.is_dir():
        raise InputError(f"{split} image folder {str(img_p)!r} does not exist; expected DATA/{split}/ (or "
                         f"DATA/{split}2017/) or pass --{split}-images")
    return ann_p, img_p


@torch.no_grad()
def detect_images(model: torch.nn.Module, images: list[np.ndarray], spec: DetectorSpec, *,
                  device: str | torch.device = "cpu") -> list[Detections]:
    """Detections of RGB images in their own pixels, via the runtime letterbox and the torch post-process.

    Args:
        model: a `RetinaNet` (put in eval mode here).
        images: B arrays of (H_i, W_i, 3) uint8 RGB.
        spec: the model's spec.

    Returns:
        B `Detections` (xyxy in original-image pixels, contiguous class indices, descending score).
    """
    from retinaedge.train.anchors import anchors_for
    from retinaedge.train.postprocess import postprocess

    if not images:
        return []
    model.eval()
    batch, metas = preprocess_batch(images, spec)
    x = torch.from_numpy(batch).to(device)  # the model normalises and picks its memory format itself
    outputs = model(x)
    anchors = anchors_for(spec, device=x.device)
    results = postprocess({k: v.float() for k, v in outputs.items()}, anchors, spec)
    out = []
    for res, meta in zip(results, metas, strict=True):
        boxes = res["boxes"].detach().cpu().numpy().astype(np.float32)
        out.append(Detections(meta.to_original(boxes), res["scores"].detach().cpu().numpy().astype(np.float32),
                              res["labels"].detach().cpu().numpy().astype(np.int64)))
    return out


def evaluate(model: torch.nn.Module, dataset: Any, spec: DetectorSpec, *, batch_size: int = 8,
             device: str | torch.device = "cpu", progress: Callable[[int, int], None] | None = None,
             pr_curves: bool = False) -> dict[str, Any]:
    """COCO bbox metrics of ``model`` on every usable image of ``dataset``.

    Args:
        model: the `RetinaNet`; left in eval mode.
        dataset: a `retinaedge.train.data.coco.CocoDetection` (``image_ids``, ``load_original(i)``,
            ``ann_file`` or ``coco``).
        spec: the model's spec (letterbox, anchors, post-processing, category ids).
        batch_size: images per forward pass.
        device: where the model runs.
        progress: called as ``progress(done, total)`` after each batch.
        pr_curves: also return per-class precision/recall curves (see `coco_evaluate`).

    Returns:
        `coco_evaluate`'s dict: the 12 stats by name, ``per_class_AP``, ``per_class_AP50``, counts.
    """
    n = len(dataset.image_ids)
    if n == 0:
        raise InputError("the evaluation set has no usable images; check the val annotations and image folder")
    detections: dict[int, Detections] = {}
    was_training = model.training
    for start in range(0, n, batch_size):
        images, ids = [], []
        for i in range(start, min(start + batch_size, n)):
            img, image_id = dataset.load_original(i)
            images.append(img)
            ids.append(int(image_id))
        for image_id, det in zip(ids, detect_images(model, images, spec, device=device), strict=True):
            detections[image_id] = det
        if progress is not None:
            progress(min(start + batch_size, n), n)
    if was_training:
        model.train()
    gt = getattr(dataset, "coco", None) or dataset.ann_file
    return coco_evaluate(gt, detections, spec.category_ids, spec.class_names, pr_curves=pr_curves)
