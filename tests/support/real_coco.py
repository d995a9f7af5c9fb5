"""A tiny COCO-format dataset written the way real exports are, not the way `train/data/synth.py` writes one.

What differs from the synthetic generator (each is something real COCO files or exporting tools do):

* categories: sparse, unsorted ids (90, 1, 3, 44) with a ``supercategory``; id 44 has no annotation;
* images: several sizes and aspect ratios; an RGB JPEG, a grayscale (mode L) JPEG, an RGBA PNG, a palette
  (mode P) PNG, a CMYK JPEG, an uppercase ``.JPG``, a ``file_name`` inside a sub-folder and one written as the
  annotating machine's Windows path (the file itself lies flat in the split folder); an image smaller than the
  network input; images without annotations; large, non-contiguous image ids (139, 285, 632 ... as in COCO);
* annotations: float boxes, polygon ``segmentation``, an RLE crowd annotation (``iscrowd=1``), a missing
  ``area``, a missing ``iscrowd``, unknown keys (``attributes``, ``score``), non-contiguous ids;
* the train file has ``info`` and ``licenses``, the val file has neither.

`write_real_coco` returns everything a test needs to check hand-computed results against it.
"""

from __future__ import annotations

import json
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

CATEGORIES = [  # unsorted and sparse, as exporters write them; 44 is never annotated
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 44, "name": "bottle", "supercategory": "kitchen"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]
COLOURS = {90: (230, 40, 40), 1: (40, 200, 60), 3: (50, 80, 230)}
"""Fill colour of each annotated category's boxes (on a grey background)."""

INFO = {"description": "retinaedge real-format fixture", "version": "1.0", "year": 2017,
        "date_created": "2017/09/01"}
LICENSES = [{"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/2.0/"}]

# (image id, file name, width, height, PIL mode, format, [(ann id, category id, [x, y, w, h], extras)])
# extras: "crowd" (RLE, iscrowd=1), "no_area", "no_iscrowd", "extra_keys"
TRAIN = [
    (139, "000000000139.jpg", 96, 64, "RGB", "JPEG",
     [(900100, 90, [10.5, 8.25, 30.0, 20.5], ()), (42, 1, [55.0, 30.0, 28.75, 26.0], ("extra_keys",))]),
    (285, "gray/000000000285.jpg", 64, 112, "L", "JPEG",
     [(7, 3, [8.0, 20.0, 40.0, 30.0], ()), (8, 1, [12.0, 70.0, 30.0, 28.0], ("no_area",))]),
    (632, "000000000632.png", 80, 80, "RGBA", "PNG",
     [(1234567, 3, [20.0, 20.0, 36.0, 24.0], ()), (55, 1, [0.0, 0.0, 20.0, 20.0], ("crowd",))]),
    (724, "000000000724.png", 100, 60, "P", "PNG", [(61, 90, [40.0, 10.0, 30.0, 40.0], ("no_iscrowd",))]),
    (776, "000000000776.JPG", 72, 96, "CMYK", "JPEG", [(62, 1, [10.0, 10.0, 40.0, 60.0], ())]),
    (785, "000000000785.jpg", 64, 64, "RGB", "JPEG", []),  # a negative image
    (790, "C:\\Users\\annotator\\export\\000000000790.jpg", 40, 30, "RGB", "JPEG",  # stored flat
     [(63, 3, [5.0, 5.0, 20.0, 15.0], ())]),
]
VAL = [
    (397133, "000000397133.jpg", 96, 64, "RGB", "JPEG",
     [(2001, 90, [12.0, 10.0, 28.0, 22.0], ("extra_keys",)), (2010, 3, [50.0, 20.0, 38.5, 30.0], ())]),
    (37777, "000000037777.png", 64, 112, "L", "PNG",
     [(2003, 1, [10.0, 30.0, 36.0, 50.0], ("no_area", "no_iscrowd"))]),
    (252219, "000000252219.png", 80, 80, "RGBA", "PNG",
     [(2100, 3, [30.0, 30.0, 30.0, 30.0], ()), (2101, 1, [0.0, 0.0, 16.0, 16.0], ("crowd",))]),
    (87038, "000000087038.png", 100, 60, "P", "PNG", [(2200, 90, [5.0, 5.0, 30.0, 40.0], ())]),
    (174482, "000000174482.JPG", 72, 96, "CMYK", "JPEG", [(2300, 1, [20.0, 30.0, 30.0, 40.0], ())]),
    (403385, "000000403385.jpg", 64, 64, "RGB", "JPEG", []),
]


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(v), 1
    counts.append(run)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _render(w: int, h: int, anns: list[tuple[int, int, list[float], tuple[str, ...]]], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 120, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    for _, cid, (x, y, bw, bh), _ in anns:
        img[round(y):round(y + bh), round(x):round(x + bw)] = COLOURS[cid]
    return img


def _save(rgb: np.ndarray, path: Path, mode: str, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(rgb)
    if mode == "RGBA":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[:4, :4] = 0  # some transparent pixels, as cut-outs have
        im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "P":
        im = im.quantize(colors=16)
    else:
        im = im.convert(mode)
    im.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def stored_name(file_name: str) -> str:
    """Where the fixture stores an image: Windows paths flat in the split folder, other names as given."""
    return PureWindowsPath(file_name).name if "\\" in file_name else file_name


def _split(root: Path, folder: str, rows: list[Any], *, with_info: bool) -> dict[str, Any]:
    images, annotations = [], []
    for k, (iid, name, w, h, mode, fmt, anns) in enumerate(rows):
        _save(_render(w, h, anns, seed=k), root / folder / stored_name(name), mode, fmt)
        images.append({"id": iid, "file_name": name, "width": w, "height": h, "license": 1,
                       "coco_url": f"http://images.cocodataset.org/{folder}/{Path(name).name}",
                       "date_captured": "2013-11-14 17:02:52"})
        for aid, cid, (x, y, bw, bh), extras in anns:
            a: dict[str, Any] = {"id": aid, "image_id": iid, "category_id": cid, "bbox": [x, y, bw, bh],
                                 "area": bw * bh * 0.9, "iscrowd": 0,
                                 "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]}
            if "crowd" in extras:
                mask = np.zeros((h, w), np.uint8)
                mask[int(y):int(y + bh), int(x):int(x + bw)] = 1
                a.update(iscrowd=1, segmentation=_rle(mask), area=float(mask.sum()))
            if "no_area" in extras:
                del a["area"]
            if "no_iscrowd" in extras:
                del a["iscrowd"]
            if "extra_keys" in extras:
                a.update(attributes={"occluded": False, "track_id": 3}, score=1.0)
            annotations.append(a)
    data: dict[str, Any] = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    if with_info:
        data = {"info": INFO, "licenses": LICENSES, **data}
    return data


def write_real_coco(root: str | Path, *, year: str = "") -> dict[str, Any]:
    """Write the fixture under ``root``.

    Args:
        root: dataset root (created).
        year: ``""`` writes the documented layout (``annotations/instances_train.json``, ``train/``);
            ``"2017"`` writes COCO's own names (``instances_train2017.json``, ``train2017/``).

    Returns:
        ``{"root", "train", "val"}``; each split is ``{"ann": path, "images": dir, "json": the data written,
        "rows": the table above}``.
    """
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"root": root}
    for split, rows, with_info in (("train", TRAIN, True), ("val", VAL, False)):
        name = f"{split}{year}"
        data = _split(root, name, rows, with_info=with_info)
        ann = root / "annotations" / f"instances_{name}.json"
        ann.write_text(json.dumps(data))
        out[split] = {"ann": ann, "images": root / name, "json": data, "rows": rows}
    return out
