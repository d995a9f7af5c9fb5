"""runtime/images.py: image-folder runs (JSONL, annotated copies and their names)."""

import json
from pathlib import Path

import numpy as np
import pytest

from retinaedge.runtime.detections import Detections
from retinaedge.runtime.images import annotated_names, run_images
from retinaedge.runtime.runner import Detector


def jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_image_folder_jsonl_and_annotated_images(square_data, squares, tmp_path):
    from retinaedge.runtime.cocoeval import coco_evaluate

    runner = squares.OracleRunner()
    stats = run_images(detector=Detector(runner=runner), source_dir=square_data / "val", out_dir=tmp_path, batch=3)
    records = jsonl(stats.jsonl_path)
    gt = json.loads((square_data / "annotations" / "instances_val.json").read_text())
    assert stats.images == len(records) == len(gt["images"])
    assert sorted(p.name for p in (tmp_path / "annotated").iterdir()) == [
        Path(im["file_name"]).stem + ".jpg" for im in gt["images"]]
    by_file = {r["file"]: r for r in records}
    dets = {}
    for im in gt["images"]:
        rec = by_file[im["file_name"]]
        assert (rec["width"], rec["height"]) == (im["width"], im["height"])
        dets[im["id"]] = Detections(np.asarray([d["bbox"] for d in rec["detections"]], np.float32).reshape(-1, 4),
                                    np.asarray([d["score"] for d in rec["detections"]], np.float32),
                                    np.asarray([d["class"] for d in rec["detections"]], np.int64))
    metrics = coco_evaluate(square_data / "annotations" / "instances_val.json", dets, (3, 7), squares.CLASS_NAMES)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert not runner.is_active


def test_annotated_names_keep_the_stem_unless_it_is_shared():
    names = ["a.jpg", "a.png", "b.png", "c.png", "c.png.jpg", "D.jpg", "d.webp", "e.JPG"]
    assert annotated_names([Path("dir", n) for n in names]) == [
        "a.jpg.jpg", "a.png.jpg",  # a.png overwrote a.jpg's copy: both were a.jpg
        "b.jpg",  # no collision: the name it always had
        "c.jpg", "c.png.jpg.jpg",  # c.png.jpg's stem is a file's name (c.png), whose copy may be c.png.jpg
        "D.jpg.jpg", "d.webp.jpg",  # D.jpg and d.jpg are one file on case-insensitive file systems
        "e.jpg",
    ]
