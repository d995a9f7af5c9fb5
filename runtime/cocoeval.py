"""COCO box evaluation through pycocotools, shared by training, ``retinaedge eval`` and validation.

numpy + lazily imported pycocotools only (no torch: the runtime rule), so a Jetson can score engines too.
pycocotools' own prints are captured and kept out of the way.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from retinaedge.runtime._lazy import require
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import DataError, InputError

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of pycocotools' 12 ``COCOeval.stats``, in its order."""


def split_layout(data: str | Path, split: str) -> tuple[Path, Path]:
    """Default ``(annotation json, image dir)`` of a split under a dataset root (existence not checked).

    The documented layout, ``DATA/annotations/instances_<split>.json`` and ``DATA/<split>/``; when neither
    exists but COCO's release names do (``instances_<split>2017.json``, ``<split>2017/``, as unpacked from
    cocodataset.org), those, so ``--data /path/to/coco`` works as downloaded.

    Args:
        data: the dataset root.
        split: ``"train"`` or ``"val"`` (or any split name).

    Returns:
        ``(annotation file, image folder)``; callers name whichever is missing.
    """
    root = Path(data)
    ann, images = root / "annotations" / f"instances_{split}.json", root / split
    if not ann.is_file() and not images.is_dir():
        ann17, images17 = root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"
        if ann17.is_file() or images17.is_dir():
            return ann17, images17
    return ann, images


def image_file(image_dir: str | Path, file_name: str) -> Path:
    """Where an annotation's ``file_name`` is under ``image_dir``.

    ``image_dir / file_name`` when that file exists; else the file of the same base name directly in
    ``image_dir`` when there is one: exporters write ``images/x.jpg``, the annotating machine's absolute path or
    Windows separators (``images\\x.jpg``) for sets that ship their images flat in ``DATA/<split>/``.

    Returns:
        The file to read; ``image_dir / file_name`` when neither exists (for the caller's message).
    """
    direct = Path(image_dir) / file_name
    if direct.is_file():
        return direct
    flat = Path(image_dir) / PureWindowsPath(file_name).name  # splits on both / and \\
    return flat if flat.is_file() else direct


def whole_int(value: Any) -> Any:
    """``value`` as an int when it is a whole float (``640.0`` -> ``640``: exporters' sizes); else as it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def whole_sizes(image: dict[str, Any]) -> dict[str, Any]:
    """An ``images`` entry with whole-float ``width``/``height`` made ints, in place (absent keys stay absent).

    The one size policy of both COCO readers (`load_coco` and the training loader): some exporters write
    ``640.0``, which is the size 640; a fractional size is left as it is for the caller to refuse or ignore.
    """
    for key in ("width", "height"):
        if key in image:
            image[key] = whole_int(image[key])
    return image


def image_size(image: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(width, height)`` of an ``images`` entry after `whole_sizes`, or None when either is not an int."""
    w, h = image.get("width"), image.get("height")
    return (w, h) if isinstance(w, int) and isinstance(h, int) else None


def category_mismatch(file_categories: Mapping[int, str], category_ids: Sequence[int],
                      class_names: Sequence[str]) -> tuple[int, str, str] | None:
    """The first spec category that a COCO file names otherwise, as ``(id, file's name, spec's name)``.

    The one category policy of both COCO readers: names compare case-folded and stripped, and a spec name the
    trainer suffixed with ``_<id>`` (categories sharing a name, `retinaedge.train.data.coco.read_categories`)
    matches the plain name. Ids the file lacks are not a mismatch (see `missing_categories`).
    """
    for cid, want in zip(category_ids, class_names, strict=True):
        have = file_categories.get(int(cid))
        if have is None:
            continue
        name = have.strip().casefold()
        if want.strip().casefold() not in (name, f"{name}_{int(cid)}"):
            return int(cid), have, want
    return None


def missing_categories(file_categories: Mapping[int, str], category_ids: Sequence[int],
                       class_names: Sequence[str]) -> list[dict[str, Any]]:
    """``categories`` entries (``{"id", "name"}``) for the spec's ids the file lacks: added without boxes.

    Exporters often write a split with only the categories its images use; the model's others then join the
    ground truth with no boxes (their AP is None, not an error).
    """
    return [{"id": int(c), "name": n} for c, n in zip(category_ids, class_names, strict=True)
            if int(c) not in file_categories]


def load_coco(ann_file: str | Path) -> Any:
    """Load a COCO annotation file with pycocotools, quietly.

    The file is read as bytes, so a UTF-8 byte-order mark (Windows tools write one) or UTF-16 is fine, whatever
    the locale (pycocotools' own reader opens it as locale text). Annotations without ``iscrowd`` get ``0`` and
    those without ``area`` get their box's ``w * h`` (``COCOeval`` needs both and raises ``KeyError``
    otherwise; many non-COCO exporters omit them). Whole-float image sizes (``640.0``) become ints.

    Returns:
        A ``pycocotools.coco.COCO``.

    Raises:
        DataError: naming the file when it is missing or not valid COCO JSON.
    """
    coco_mod = require("pycocotools.coco", purpose="COCO evaluation")
    p = Path(ann_file)
    if not p.is_file():
        raise DataError(f"annotation file {str(p)!r} does not exist; pass the val instances_*.json")
    try:
        data = json.loads(p.read_bytes())
        if not isinstance(data, dict):
            raise TypeError(f"the top level is a JSON {type(data).__name__}, not an object")
        for img in data.get("images", []):
            whole_sizes(img)
        for ann in data.get("annotations", []):
            ann.setdefault("iscrowd", 0)
            bbox = ann.get("bbox")
            if "area" not in ann and isinstance(bbox, list | tuple) and len(bbox) == 4:
                ann["area"] = float(bbox[2]) * float(bbox[3])
        gt = coco_mod.COCO()
        gt.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, AssertionError) as e:
        raise DataError(f"annotation file {str(p)!r} is not valid COCO JSON ({type(e).__name__}: {e})") from None
    return gt


def align_categories(gt: Any, category_ids: Sequence[int], class_names: Sequence[str]) -> None:
    """Make a loaded ground truth list every category of a model, as the training loader does.

    Exporters often write a val file with only the categories its images use. The model's other categories are
    added without boxes (their AP is then None, not an error); a category id named otherwise in the file
    (another numbering of the classes) is refused rather than silently compared.

    Args:
        gt: a ``pycocotools.coco.COCO`` (from `load_coco`); re-indexed in place when categories are added.
        category_ids: the spec's category ids.
        class_names: the spec's class names (a name the trainer suffixed with ``_<id>`` to tell apart
            categories sharing a name matches the plain name).

    Raises:
        InputError: an id named differently, or none of the model's ids in the file.
    """
    have = {int(c["id"]): str(c.get("name", "")) for c in gt.dataset.get("categories", [])}
    if not set(have) & set(int(c) for c in category_ids):
        raise InputError(f"none of the model's category ids {list(category_ids)} is in the annotation file (it has "
                         f"{sorted(have)}); the model was trained on another dataset")
    mismatch = category_mismatch(have, category_ids, class_names)
    if mismatch is not None:
        cid, name, want = mismatch
        raise InputError(f"category id {cid} is {name!r} in the annotation file but {want!r} in the model; "
                         "the splits number their categories differently or the model was trained on another "
                         "dataset")
    added = missing_categories(have, category_ids, class_names)
    if added:
        gt.dataset.setdefault("categories", []).extend(added)
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()


def detections_to_coco(
    detections: Mapping[int, Detections], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO result records: ``bbox`` as ``[x, y, w, h]`` (original pixels), class index -> category id.

    Args:
        detections: image id -> `Detections` (xyxy in original-image pixels, contiguous class indices).
        category_ids: category id of each class index.

    Raises:
        InputError: a class index outside ``0..len(category_ids)-1``.
    """
    cats = np.asarray(category_ids, dtype=np.int64)
    out: list[dict[str, Any]] = []
    for image_id, det in detections.items():
        if len(det) == 0:
            continue
        cls = np.asarray(det.classes, dtype=np.int64)
        bad = cls[(cls < 0) | (cls >= len(cats))]
        if bad.size:
            raise InputError(
                f"image {image_id}: class index {int(bad[0])} is outside 0..{len(cats) - 1}; "
                "detections must use the spec's contiguous class indices"
            )
        boxes = np.asarray(det.boxes, dtype=np.float64)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for b, s, c in zip(xywh.tolist(), np.asarray(det.scores, np.float64).tolist(), cats[cls].tolist(),
                           strict=True):
            out.append({"image_id": int(image_id), "category_id": int(c), "bbox": b, "score": s})
    return out


def coco_evaluate(
    ann_file: str | Path | Any,
    detections: Mapping[int, Detections],
    category_ids: Sequence[int],
    class_names: Sequence[str],
    *,
    pr_curves: bool = False,
) -> dict[str, Any]:
    """Score detections against COCO ground truth with pycocotools (bbox, maxDets 1/10/100).

    The images evaluated are exactly the keys of ``detections`` (an image with an empty `Detections`
    counts, with no detections); with no detections at all every stat is 0 where ground truth exists.

    Args:
        ann_file: the ground-truth COCO json, or an already loaded ``pycocotools.coco.COCO``.
        detections: image id -> `Detections` in ORIGINAL image pixels, xyxy, contiguous class indices.
        category_ids: the dataset category id of each class index (``spec.category_ids``).
        class_names: the name of each class index (``spec.class_names``).
        pr_curves: also return ``"pr_curves"``: ``{"recall": [101], "AP50": {name: [101]},
            "AP": {name: [101]}}`` precision at the 101 COCO recall points (IoU 0.5, and averaged over
            IoU 0.5:0.95), -1 where a class has no ground truth.

    Returns:
        The 12 stats by name (`STAT_NAMES`; pycocotools' -1 where an area range has no ground truth),
        ``"per_class_AP"``: {name: AP or None when the class has no ground truth in these images},
        ``"per_class_AP50"`` likewise, ``"num_images"`` and ``"num_detections"``.

    Raises:
        InputError: no images, image ids not in the annotation file, or mismatched class lists.
    """
    eval_mod = require("pycocotools.cocoeval", purpose="COCO evaluation")
    if len(category_ids) != len(class_names):
        raise InputError(
            f"{len(category_ids)} category ids but {len(class_names)} class names; pass the spec's lists"
        )
    if not detections:
        raise InputError("no images to evaluate: the detections mapping is empty; run the model on the val set")
    gt: Any = ann_file if hasattr(ann_file, "getImgIds") else load_coco(ann_file)
    known = set(gt.getImgIds())
    unknown = sorted(set(int(i) for i in detections) - known)
    if unknown:
        raise InputError(
            f"image ids {unknown[:5]}{'...' if len(unknown) > 5 else ''} are not in the annotation file; "
            "evaluate against the annotations the images came from"
        )
    missing_cats = sorted(set(int(c) for c in category_ids) - set(gt.getCatIds()))
    if missing_cats:
        raise InputError(
            f"category ids {missing_cats} are not in the annotation file (it has {sorted(gt.getCatIds())}); "
            "the model was trained on another dataset, or this file lists only the categories it uses (add the "
            "others to its 'categories')"
        )
    records = detections_to_coco(detections, category_ids)
    image_ids = sorted(int(i) for i in detections)
    cat_ids = [int(c) for c in category_ids]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(records) if records else _empty_results(gt)
        ev = eval_mod.COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = image_ids
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats]
    result: dict[str, Any] = dict(zip(STAT_NAMES, stats, strict=True))
    # precision: (T iou thresholds, R=101 recall points, K classes, A area ranges, M maxDets)
    precision = np.asarray(ev.eval["precision"])
    all_area = list(ev.params.areaRngLbl).index("all")
    max_dets = len(ev.params.maxDets) - 1
    # COCOeval sorts params.catIds (np.unique): column k belongs to the k-th smallest id, not to class k
    column = {int(c): k for k, c in enumerate(ev.params.catIds)}
    pc = precision[:, :, [column[c] for c in cat_ids], all_area, max_dets]  # (T, R, K) in class-index order
    per_ap: dict[str, float | None] = {}
    per_ap50: dict[str, float | None] = {}
    for k, name in enumerate(class_names):
        per_ap[name] = _mean_valid(pc[:, :, k])
        per_ap50[name] = _mean_valid(pc[0, :, k])
    result["per_class_AP"] = per_ap
    result["per_class_AP50"] = per_ap50
    result["num_images"] = len(image_ids)
    result["num_detections"] = len(records)
    if pr_curves:
        valid = pc > -1
        mean_iou = np.where(valid.all(axis=0), np.where(valid, pc, 0).mean(axis=0), -1.0)  # (R, K)
        result["pr_curves"] = {
            "recall": [float(r) for r in ev.params.recThrs],
            "AP50": {name: [float(v) for v in pc[0, :, k]] for k, name in enumerate(class_names)},
            "AP": {name: [float(v) for v in mean_iou[:, k]] for k, name in enumerate(class_names)},
        }
    return result


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _empty_results(gt: Any) -> Any:
    """A results COCO with no annotations (``COCO.loadRes`` cannot take an empty list)."""
    coco_mod = require("pycocotools.coco", purpose="COCO evaluation")
    res = coco_mod.COCO()
    res.dataset = {
        "images": list(gt.dataset.get("images", [])),
        "categories": list(gt.dataset.get("categories", [])),
        "annotations": [],
    }
    res.createIndex()
    return res


def format_stats(metrics: Mapping[str, Any]) -> str:
    """The 12 stats as an aligned two-column text table (for logs and the CLI)."""
    return "\n".join(f"{name:<6} {float(metrics[name]):7.4f}" for name in STAT_NAMES if name in metrics)
