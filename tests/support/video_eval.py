"""Scoring a video run against per-frame ground truth: only the tests (and the slow demo check) do it, so it lives
here rather than in the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinaedge.runtime.cocoeval import coco_evaluate
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError


def read_jsonl_detections(jsonl_path: str | Path) -> dict[int, Detections]:
    """Read ``detections.jsonl`` of `run_video` back: frame index -> `Detections` (frame pixels)."""
    out: dict[int, Detections] = {}
    with open(jsonl_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                dets = rec["detections"]
                out[int(rec["frame"])] = Detections(
                    np.asarray([d["bbox"] for d in dets], np.float32).reshape(-1, 4),
                    np.asarray([d["score"] for d in dets], np.float32),
                    np.asarray([d["class"] for d in dets], np.int64),
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise InputError(f"{str(jsonl_path)!r} line {n} is not a detections record ({e})") from None
    return out


def evaluate_video(jsonl_path: str | Path, ann_file: str | Path, *, category_ids: Sequence[int],
                   class_names: Sequence[str]) -> dict[str, Any]:
    """COCO-evaluate a video run against per-frame ground truth (AP50 over the clip, etc.).

    The ground truth is COCO JSON with one image per frame; each image's ``frame_index`` (or, failing that,
    its position in id order) ties it to a JSONL frame. Frames the run did not write are not scored.

    Returns:
        `retinaedge.runtime.cocoeval.coco_evaluate`'s dict.
    """
    gt = json.loads(Path(ann_file).read_text())
    images = sorted(gt.get("images", []), key=lambda im: im["id"])
    frame_to_id = {int(im.get("frame_index", pos)): int(im["id"]) for pos, im in enumerate(images)}
    dets = read_jsonl_detections(jsonl_path)
    unknown = sorted(set(dets) - set(frame_to_id))
    if unknown:
        raise InputError(f"frames {unknown[:5]} of {str(jsonl_path)!r} have no ground-truth image in {str(ann_file)!r}")
    return coco_evaluate(ann_file, {frame_to_id[k]: v for k, v in dets.items()}, category_ids, class_names)
