"""COCO-format detection data for training and evaluation, through pycocotools.

`CocoDetection` reads any dataset in the COCO 2017 layout (docs/ARCHITECTURE.md), maps its (possibly sparse)
category ids to the spec's contiguous class indices, letterboxes every image into the spec's input with
`retinaedge.runtime.preprocess.letterbox` (the same function runtime and calibration use) and maps the
boxes with `Letterbox.to_network`.

What happens to bad input (each case is tested):

=============================================  ==========================================================
case                                           handling
=============================================  ==========================================================
annotation file missing                        `DataError` naming the file
malformed JSON                                 `DataError` naming the file and the JSON error position
top level not an object; "images",             `DataError` naming the file and the missing keys
"annotations" or "categories" missing
no images at all / no categories               `DataError` naming the file
an image entry without id/file_name/           `DataError` naming the file and the image id (or index)
width/height, or a duplicate image id
an annotation without id/image_id/             `DataError` naming the file and the annotation id
category_id/bbox, a bbox that is not 4 finite
numbers, or a duplicate annotation id
annotation for an image id not in "images"     `DataError` naming the file, annotation id and image id
unknown category id (not in the file's         `DataError` naming the file, annotation id and category
"categories", or not in ``spec.category_ids``) id: silently dropping labels would hide a class-map bug
crowd annotation (``iscrowd=1``)               dropped from training targets (neither positive nor
                                               ignored); kept in `coco` so COCOeval treats it as ignore
bbox partly outside the image                  clipped to the image; counted ``bbox_clipped``
bbox entirely outside the image                skipped; counted ``bbox_outside``
bbox with zero/negative width or height,       skipped; counted ``zero_area``
or an "area" field <= 0
a ``file_name`` with folders not in the        the file of that base name in the image folder is
image folder (``images/x.jpg``, absolute       used (`retinaedge.runtime.cocoeval.image_file`)
or Windows paths)
image file missing (checked up front)          image skipped; counted ``missing_image``; a
                                               `DataError` if *no* listed image exists (wrong folder)
image file corrupt (found when decoding,       image skipped and another sample returned; counted
possibly inside a DataLoader worker)           ``corrupt_image`` (shared across workers); a warning
                                               is logged by the worker; `load_original` raises
                                               `DataError` naming the file and the id instead
stored size is the JSON's width/height         the image is turned by its EXIF orientation
turned by the file's EXIF orientation          (annotated as viewers show it); not counted
decoded size differs from the JSON's           boxes rescaled to the decoded size; counted
width/height otherwise                         ``size_mismatch``
image without annotations                      a valid negative sample (M = 0)
two categories with the same name              `read_categories` appends the id to each (``fish_0``)
a category id named differently from the       `DataError` naming the file, the id and both names: the
spec's class (case and spaces aside)           splits number their categories differently
a spec category missing from the file's        added to `coco` without ground truth (its AP is None): a
"categories"                                   split may list only the categories it uses
=============================================  ==========================================================

The up-front counts are logged as one summary line through ``log`` when the dataset is built;
`CocoDetection.log_skips` logs the current counts (including corrupt images found by workers) again.
``skip_counts`` always holds the current numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from retinaedge.runtime._lazy import require
from retinaedge.runtime.cocoeval import category_mismatch, image_file, image_size, missing_categories, whole_sizes
from retinaedge.runtime.errors import DataError, InputError
from retinaedge.runtime.preprocess import letterbox, letterbox_params, load_image
from retinaedge.runtime.spec import DetectorSpec
from retinaedge.train.data.transforms import AugmentConfig, hflip, random_jitter

_LOG = logging.getLogger("retinaedge.train.data")

SKIP_KEYS: tuple[str, ...] = ("bbox_clipped", "bbox_outside", "zero_area", "missing_image", "corrupt_image",
                              "size_mismatch", "crowd")
"""Keys of `CocoDetection.skip_counts` (``crowd`` counts dropped crowd annotations)."""

LogFn = Callable[[str], Any]
_CORRUPT, _RESIZED = 1, 2


def _as_log_fn(log: LogFn | logging.Logger | None) -> LogFn:
    if log is None:
        return _LOG.info
    if isinstance(log, logging.Logger):
        return log.info
    return log


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read and structurally validate a COCO detection annotation file.

    Returns:
        The parsed JSON object (unchanged).

    Raises:
        DataError: missing file, malformed JSON (with its position), a non-object top level, missing
            "images"/"annotations"/"categories", or non-list values for them.
    """
    p = Path(ann_file)
    if not p.is_file():
        raise DataError(f"annotation file {str(p)!r} does not exist; check --data or the *-ann paths")
    try:
        data = json.loads(p.read_bytes())
    except json.JSONDecodeError as e:
        raise DataError(f"annotation file {str(p)!r} is not valid JSON: {e.msg} at line {e.lineno} column "
                        f"{e.colno} (char {e.pos}); fix or regenerate it") from None
    except UnicodeDecodeError as e:
        raise DataError(f"annotation file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                        "is it really a COCO JSON file?") from None
    if not isinstance(data, dict):
        raise DataError(f"annotation file {str(p)!r} holds a JSON {type(data).__name__}; a COCO file is an object "
                        "with 'images', 'annotations' and 'categories'")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(f"annotation file {str(p)!r} lacks key(s) {missing}; a COCO detection file needs "
                        "'images', 'annotations' and 'categories' (an empty 'annotations' list is fine)")
    for k in ("images", "annotations", "categories"):
        if not isinstance(data[k], list):
            raise DataError(f"annotation file {str(p)!r}: '{k}' is a {type(data[k]).__name__}, expected a list")
    return data


def _categories(data: dict[str, Any], path: Path) -> list[tuple[int, str]]:
    cats: list[tuple[int, str]] = []
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise DataError(f"annotation file {str(path)!r}: categories[{i}]={c!r} needs an int 'id' and a str "
                            "'name'")
        cats.append((c["id"], c["name"]))
    if not cats:
        raise DataError(f"annotation file {str(path)!r} has no categories; a detector needs at least one class")
    ids = [c for c, _ in cats]
    dup = sorted({c for c in ids if ids.count(c) > 1})
    if dup:
        raise DataError(f"annotation file {str(path)!r}: category ids {dup} appear more than once")
    return sorted(cats)


def read_categories(ann_file: str | Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names and category ids of a COCO file, sorted by id (the spec's class order).

    A name that several categories share gets each one's id appended (``fish_0``, ``fish_1``): the spec needs
    unique class names, and exporters repeat one, e.g. for a placeholder parent category named like its class.

    Returns:
        ``(names, ids)``; ``ids`` may be sparse, e.g. ``(1, 3, 7)``.

    Raises:
        DataError: see `load_coco_json`, plus malformed or duplicate categories.
    """
    p = Path(ann_file)
    cats = _categories(load_coco_json(p), p)
    return _class_names(cats), tuple(c for c, _ in cats)


def _class_names(cats: list[tuple[int, str]]) -> tuple[str, ...]:
    names = [n for _, n in cats]
    return tuple(f"{n}_{c}" if names.count(n) > 1 else n for c, n in cats)


def _finite_bbox(b: Any) -> bool:
    return (isinstance(b, list | tuple) and len(b) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in b))


@dataclass(frozen=True)
class _Record:
    path: str
    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # (M, 4) float32 xyxy original pixels
    labels: np.ndarray  # (M,) int64 contiguous class indices


class CocoDetection(Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """A COCO-format detection dataset letterboxed to a `DetectorSpec`'s input.

    Items are ``(image, target)``:

    * ``image``: (3, H, W) uint8 RGB tensor, ``H, W = spec.input_height, spec.input_width``;
    * ``target``: ``{"boxes": (M, 4) float32 xyxy network-input pixels, "labels": (M,) int64 class
      indices 0..K-1, "image_id": int}``. ``M`` may be 0 (a negative image).

    Attributes:
        spec: the detector spec.
        coco: a pycocotools ``COCO`` over the *cleaned* annotations (clipped boxes, skipped ones removed,
            crowd kept, only images that exist): the ground truth evaluation should use.
        image_ids: COCO image ids, in item order.
        skip_counts: counts of the documented skips (keys `SKIP_KEYS`).
    """

    def __init__(self, *, ann_file: str | Path, image_dir: str | Path, spec: DetectorSpec, train: bool,
                 augment: AugmentConfig | None = None, log: LogFn | logging.Logger | None = None) -> None:
        """Read and validate the annotations and check that the images exist.

        Args:
            ann_file: COCO ``instances_*.json``.
            image_dir: folder the ``file_name`` entries are relative to.
            spec: maps category ids to class indices (``spec.category_ids``) and gives the input size.
            train: apply augmentation (``augment`` or `AugmentConfig()` defaults) when True.
            augment: augmentation knobs; ignored when ``train`` is False.
            log: a callable taking one line, or a logger; defaults to the ``retinaedge.train.data`` logger.

        Raises:
            DataError: for the cases in the module docstring's table.
        """
        self.spec = spec
        self.train = train
        self.augment = (augment or AugmentConfig()) if train else None
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self._log = _as_log_fn(log)
        self._rng = np.random.default_rng(0)
        counts = dict.fromkeys(SKIP_KEYS, 0)

        data = load_coco_json(self.ann_file)
        path = self.ann_file
        cat_index = {cid: i for i, cid in enumerate(spec.category_ids)}
        cats = _categories(data, path)
        file_cats = dict(cats)
        mismatch = category_mismatch(file_cats, spec.category_ids, spec.class_names)  # validate's policy too
        if mismatch is not None:
            cid, raw, want = mismatch
            raise DataError(f"annotation file {str(path)!r}: category id {cid} is {raw!r} here but {want!r} in "
                            "the spec; the splits number their categories differently (export every split "
                            "with the same category list) or the model was trained on another dataset")
        if not data["images"]:
            raise DataError(f"annotation file {str(path)!r} lists no images; nothing to train or evaluate on")

        images: dict[int, dict[str, Any]] = {}
        for i, im in enumerate(data["images"]):
            iid = im.get("id") if isinstance(im, dict) else None
            if not isinstance(iid, int):
                raise DataError(f"annotation file {str(path)!r}: images[{i}] has no int 'id' ({im!r:.80}); every "
                                "image entry needs id, file_name, width and height")
            if iid in images:
                raise DataError(f"annotation file {str(path)!r}: image id {iid} appears more than once")
            bad = [k for k in ("file_name", "width", "height") if k not in im]
            if bad or not isinstance(im["file_name"], str):
                raise DataError(f"annotation file {str(path)!r}: image id {iid} lacks {bad or ['file_name (str)']}; "
                                "every image entry needs id, file_name, width and height")
            size = image_size(whole_sizes(im))  # 640.0 is 640, as load_coco reads it
            if size is None or min(size) <= 0:
                raise DataError(f"annotation file {str(path)!r}: image id {iid} has size "
                                f"{im['width']!r}x{im['height']!r}; width and height must be positive ints")
            images[iid] = im

        kept_anns: list[dict[str, Any]] = []
        per_image: dict[int, list[tuple[list[float], int]]] = {iid: [] for iid in images}
        seen_ann: set[int] = set()
        for i, a in enumerate(data["annotations"]):
            aid = a.get("id") if isinstance(a, dict) else None
            if not isinstance(aid, int):
                raise DataError(f"annotation file {str(path)!r}: annotations[{i}] has no int 'id' ({a!r:.80})")
            if aid in seen_ann:
                raise DataError(f"annotation file {str(path)!r}: annotation id {aid} appears more than once")
            seen_ann.add(aid)
            bad = [k for k in ("image_id", "category_id", "bbox") if k not in a]
            if bad:
                raise DataError(f"annotation file {str(path)!r}: annotation id {aid} lacks {bad}")
            if not _finite_bbox(a["bbox"]):
                raise DataError(f"annotation file {str(path)!r}: annotation id {aid} has bbox {a['bbox']!r}; "
                                "expected [x, y, w, h] of 4 finite numbers")
            im = images.get(a["image_id"])
            if im is None:
                raise DataError(f"annotation file {str(path)!r}: annotation id {aid} refers to image id "
                                f"{a['image_id']!r}, which is not in 'images'")
            cid = a["category_id"]
            if cid not in file_cats or cid not in cat_index:
                where = "the file's 'categories'" if cid not in file_cats else "the spec's category_ids"
                allowed = sorted(file_cats) if cid not in file_cats else list(spec.category_ids)
                raise DataError(f"annotation file {str(path)!r}: annotation id {aid} has category_id {cid!r}, "
                                f"which is not in {where} {allowed}; fix the annotation or rebuild the spec "
                                "from this file's categories")
            x, y, w, h = (float(v) for v in a["bbox"])
            area = a.get("area")
            if w <= 0 or h <= 0 or (isinstance(area, int | float) and area <= 0):
                counts["zero_area"] += 1
                continue
            x1, y1 = min(max(x, 0.0), im["width"]), min(max(y, 0.0), im["height"])
            x2, y2 = min(max(x + w, 0.0), im["width"]), min(max(y + h, 0.0), im["height"])
            if x2 <= x1 or y2 <= y1:
                counts["bbox_outside"] += 1
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                counts["bbox_clipped"] += 1
            clean = dict(a)
            clean["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            if not isinstance(area, int | float):
                clean["area"] = (x2 - x1) * (y2 - y1)
            clean.setdefault("iscrowd", 0)
            kept_anns.append(clean)
            if clean["iscrowd"]:
                counts["crowd"] += 1  # ignore region for COCOeval; neither positive nor negative in training
                continue
            per_image[a["image_id"]].append(([x1, y1, x2, y2], cat_index[cid]))

        records: list[_Record] = []
        first_missing: tuple[str, int] | None = None
        for iid, im in images.items():
            fpath = image_file(self.image_dir, im["file_name"])
            if not fpath.is_file():
                counts["missing_image"] += 1
                first_missing = first_missing or (str(fpath), iid)
                continue
            anns = per_image[iid]
            boxes = np.asarray([b for b, _ in anns], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray([c for _, c in anns], dtype=np.int64).reshape(-1)
            records.append(_Record(str(fpath), iid, im["width"], im["height"], boxes, labels))
        if not records:
            f, iid = first_missing or ("?", -1)
            raise DataError(f"none of the {len(images)} images listed in {str(path)!r} exists under "
                            f"{str(self.image_dir)!r} (first: {f!r}, image id {iid}); check the image folder")
        self._records = records
        self.image_ids: list[int] = [r.image_id for r in records]
        self._counts = counts
        # one flag byte per image (_CORRUPT | _RESIZED), shared with DataLoader workers (fork or spawn), so a
        # corrupt file is counted once and skipped by every worker, and the main process sees the counts
        self._flags = multiprocessing.get_context().RawArray("b", len(records))

        kept_ids = set(self.image_ids)
        clean_data = {k: v for k, v in data.items() if k not in ("images", "annotations")}
        clean_data["categories"] = [*data["categories"],
                                    *missing_categories(file_cats, spec.category_ids, spec.class_names)]
        clean_data["images"] = [images[i] for i in self.image_ids]
        clean_data["annotations"] = [a for a in kept_anns if a["image_id"] in kept_ids]
        self._clean_data = clean_data
        self._coco: Any = None
        self.class_names = spec.class_names
        self._log(self._summary())

    # ---- bookkeeping --------------------------------------------------------------------------------
    @property
    def skip_counts(self) -> dict[str, int]:
        """Current counts of the documented skips, including corrupt images found in any worker."""
        out = dict(self._counts)
        flags = np.frombuffer(self._flags, dtype=np.int8)
        out["corrupt_image"] = int(np.count_nonzero(flags & _CORRUPT))
        out["size_mismatch"] = int(np.count_nonzero(flags & _RESIZED))
        return out

    def _summary(self) -> str:
        c = self.skip_counts
        n_boxes = sum(len(r.labels) for r in self._records)
        skips = ", ".join(f"{k}={v}" for k, v in c.items() if v) or "none"
        return (f"{self.ann_file.name}: {len(self._records)} images, {n_boxes} boxes, "
                f"{len(self.spec.class_names)} classes; skipped/fixed: {skips}")

    def log_skips(self) -> None:
        """Log the summary line again with the current counts (e.g. after an epoch found corrupt images)."""
        self._log(self._summary())

    @property
    def coco(self) -> Any:
        """pycocotools ``COCO`` of the cleaned ground truth (built on first use)."""
        if self._coco is None:
            coco_mod = require("pycocotools.coco", purpose="COCO ground truth")
            gt = coco_mod.COCO()
            gt.dataset = self._clean_data
            with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
                gt.createIndex()
            self._coco = gt
        return self._coco

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a pickled copy: drop the log callable (may not pickle) and the COCO index
        state = self.__dict__.copy()
        state["_log"] = _LOG.info
        state["_coco"] = None
        return state

    def reseed(self, seed: int) -> None:
        """Seed the augmentation generator of this process (workers are seeded by `make_loader`)."""
        self._rng = np.random.default_rng(seed)

    # ---- items --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def _decode(self, i: int, *, reduce: bool = False) -> np.ndarray | None:
        if self._flags[i] & _CORRUPT:
            return None
        rec = self._records[i]
        reduce_to = None
        if reduce:  # a large JPEG decodes at 1/2..1/8 scale, still >= 2x the letterboxed size (see load_image)
            _, (nh, nw) = letterbox_params(rec.height, rec.width, self.spec)
            reduce_to = (nw, nh)
        try:
            return load_image(rec.path, size=(rec.width, rec.height), reduce_to=reduce_to)
        except InputError as e:
            self._flags[i] |= _CORRUPT
            _LOG.warning("skipping image id %d: %s", rec.image_id, e)
            return None

    def load_original(self, i: int) -> tuple[np.ndarray, int]:
        """The ``i``-th image as stored, for evaluating any runner on original images.

        Returns:
            ``(image (H, W, 3) uint8 RGB, image_id)``.

        Raises:
            DataError: naming the file and the image id when it cannot be decoded.
        """
        rec = self._records[i]
        try:
            return load_image(rec.path, size=(rec.width, rec.height)), rec.image_id
        except InputError as e:
            raise DataError(f"image id {rec.image_id}: {e}") from None

    def _boxes_for(self, i: int, image: np.ndarray) -> np.ndarray:
        rec = self._records[i]
        h, w = image.shape[:2]
        boxes = rec.boxes
        if (h, w) == (rec.height, rec.width):
            return boxes
        for s in (2, 4, 8):  # a JPEG decoded at 1/s scale (load_image's reduce_to): pixel x maps to x / s
            if (h, w) == (-(-rec.height // s), -(-rec.width // s)):
                return boxes / np.float32(s)
        self._flags[i] |= _RESIZED
        return boxes * np.array([w / rec.width, h / rec.height] * 2, dtype=np.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        n = len(self._records)
        for k in range(n):
            i = (index + k) % n
            image = self._decode(i, reduce=self.augment is not None)
            if image is not None:
                return self._make_item(i, image)
        raise DataError(f"no image listed in {str(self.ann_file)!r} could be decoded (all {n} are corrupt)")

    def _make_item(self, i: int, image: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self._records[i]
        boxes = self._boxes_for(i, image)
        aug = self.augment
        if aug is not None and aug.hflip > 0 and self._rng.random() < aug.hflip:
            image, boxes = hflip(image, boxes)
        canvas, meta = letterbox(image, self.spec)
        net = meta.to_network(boxes)
        if aug is not None:
            _, (nh, nw) = letterbox_params(image.shape[0], image.shape[1], self.spec)
            y0, x0 = int(meta.pad_y), int(meta.pad_x)
            region = canvas[y0:y0 + nh, x0:x0 + nw]
            region[...] = random_jitter(region, aug, self._rng)
        np.clip(net[:, 0::2], 0, self.spec.input_width, out=net[:, 0::2])
        np.clip(net[:, 1::2], 0, self.spec.input_height, out=net[:, 1::2])
        keep = (net[:, 2] > net[:, 0]) & (net[:, 3] > net[:, 1])
        image_t = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))
        target = {"boxes": torch.from_numpy(np.ascontiguousarray(net[keep])),
                  "labels": torch.from_numpy(rec.labels[keep].copy()), "image_id": rec.image_id}
        return image_t, target


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stack items into a padded batch.

    Args:
        batch: B items of `CocoDetection`.

    Returns:
        ``(images, targets)``: images (B, 3, H, W) uint8; targets ``{"boxes": (B, Mmax, 4) float32 xyxy,
        "labels": (B, Mmax) int64, "image_ids": (B,) int64}`` with ``Mmax = max(1, max M)``. Padding rows have
        label -1 and box zeros, so a batch of negatives still has shape (B, 1, 4) and every consumer can
        select real boxes with ``labels >= 0``.
    """
    images = torch.stack([im for im, _ in batch])
    m = max([1] + [int(t["labels"].shape[0]) for _, t in batch])
    b = len(batch)
    boxes = torch.zeros((b, m, 4), dtype=torch.float32)
    labels = torch.full((b, m), -1, dtype=torch.int64)
    for j, (_, t) in enumerate(batch):
        k = int(t["labels"].shape[0])
        boxes[j, :k] = t["boxes"]
        labels[j, :k] = t["labels"]
    ids = torch.tensor([int(t["image_id"]) for _, t in batch], dtype=torch.int64)
    return images, {"boxes": boxes, "labels": labels, "image_ids": ids}


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id (base_seed from the loader's generator)
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(info.seed % (2**63))


def make_loader(dataset: Dataset[Any], *, batch_size: int, shuffle: bool, workers: int, seed: int,
                drop_last: bool = False, sampler: Sampler[Any] | None = None) -> DataLoader[Any]:
    """A seeded DataLoader with `collate`.

    Args:
        dataset: usually a `CocoDetection`.
        batch_size: images per batch.
        shuffle: reshuffle every epoch (from a generator seeded with ``seed``).
        workers: worker processes; ``0`` loads in the main process. Workers are persistent (they keep
            their augmentation streams and the corrupt-image flags across epochs) and use one thread each.
        seed: seeds the shuffle order and each worker's augmentation generator (``seed``-derived per
            worker), and the in-process generator when ``workers == 0``.
        drop_last: drop the last incomplete batch.
        sampler: draws the order instead of ``shuffle`` (which must then be False), e.g. a
            ``DistributedSampler``; ``seed`` still seeds the augmentation.

    Returns:
        A ``torch.utils.data.DataLoader`` yielding `collate` batches; pinned memory only with CUDA.
    """
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be >= 1")
    if workers < 0:
        raise InputError(f"workers={workers!r} must be >= 0 (0 loads in the main process)")
    gen = torch.Generator()
    gen.manual_seed(seed)
    if workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
                      collate_fn=collate,
                      worker_init_fn=_worker_init if workers > 0 else None, generator=gen,
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), drop_last=drop_last)
