"""runtime/cocoeval.py against hand-computed COCO scores on hand-made ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retinaedge.runtime.cocoeval import STAT_NAMES, coco_evaluate, detections_to_coco, format_stats, image_file
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import DataError, InputError

CATEGORY_IDS = (3, 7)  # sparse, as in COCO
CLASS_NAMES = ("circle", "square")

# image 1: a 20x20 "circle" (small) and a 60x40 "square" (medium); image 5: one 200x100 "circle" (large)
GT = {
    1: [(3, [10, 10, 20, 20]), (7, [50, 60, 60, 40])],
    5: [(3, [0, 0, 200, 100])],
}


@pytest.fixture
def ann_file(tmp_path: Path) -> Path:
    anns = []
    for image_id, objs in GT.items():
        for cat, (x, y, w, h) in objs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 256, "height": 256} for i in GT],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES, strict=True)],
        "annotations": anns,
    }
    p = tmp_path / "instances_val.json"
    p.write_text(json.dumps(data))
    return p


def _det(boxes_xyxy: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(np.asarray(boxes_xyxy, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(classes, np.int64))


def _perfect() -> dict[int, Detections]:
    out = {}
    for image_id, objs in GT.items():
        boxes = [[x, y, x + w, y + h] for _, (x, y, w, h) in objs]
        classes = [CATEGORY_IDS.index(c) for c, _ in objs]
        out[image_id] = _det(boxes, [0.9] * len(boxes), classes)
    return out


def test_perfect_detections_score_one(ann_file: Path) -> None:
    m = coco_evaluate(ann_file, _perfect(), CATEGORY_IDS, CLASS_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert m[name] == pytest.approx(1.0), name
    assert m["AR1"] == pytest.approx(1.0)  # one object per class per image
    assert m["per_class_AP"] == {"circle": pytest.approx(1.0), "square": pytest.approx(1.0)}
    assert m["num_images"] == 2 and m["num_detections"] == 3
    assert set(STAT_NAMES) <= set(m)


def test_shifted_box_gives_hand_computed_ap(ann_file: Path) -> None:
    # only image 1, only the 20x20 circle, shifted 4 px right: IoU = (16*20) / (400+400-320) = 2/3.
    # A match at IoU thresholds 0.50, 0.55, 0.60, 0.65 (4 of 10) -> AP = 0.4, AP50 = 1, AP75 = 0; the
    # square is missed -> its AP is 0, so the mean over the two classes halves those numbers.
    dets = {1: _det([[14, 10, 34, 30]], [0.8], [0])}
    m = coco_evaluate(ann_file, dets, CATEGORY_IDS, CLASS_NAMES)
    assert m["per_class_AP"]["circle"] == pytest.approx(0.4)
    assert m["per_class_AP50"]["circle"] == pytest.approx(1.0)
    assert m["per_class_AP"]["square"] == pytest.approx(0.0)
    assert m["AP"] == pytest.approx(0.2)
    assert m["AP50"] == pytest.approx(0.5)
    assert m["AP75"] == pytest.approx(0.0)
    assert m["APs"] == pytest.approx(0.4)  # the circle is the only small object
    assert m["APm"] == pytest.approx(0.0)  # the missed square is medium
    assert m["APl"] == -1.0  # image 5 (the large circle) is not evaluated: pycocotools' "no ground truth"


def test_class_index_maps_to_sparse_category_id(ann_file: Path) -> None:
    perfect = _perfect()
    swapped = {i: Detections(d.boxes, d.scores, 1 - d.classes) for i, d in perfect.items()}
    assert coco_evaluate(ann_file, swapped, CATEGORY_IDS, CLASS_NAMES)["AP"] == pytest.approx(0.0)
    records = detections_to_coco({1: _det([[10, 10, 30, 30]], [0.5], [1])}, CATEGORY_IDS)
    assert records == [{"image_id": 1, "category_id": 7, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.5}]


def test_zero_detections_score_zero_without_crash(ann_file: Path) -> None:
    m = coco_evaluate(ann_file, {i: Detections.empty() for i in GT}, CATEGORY_IDS, CLASS_NAMES)
    for name in STAT_NAMES:
        assert m[name] == 0.0, name
    assert m["per_class_AP"] == {"circle": 0.0, "square": 0.0}
    assert m["num_detections"] == 0


def test_pr_curves(ann_file: Path) -> None:
    m = coco_evaluate(ann_file, _perfect(), CATEGORY_IDS, CLASS_NAMES, pr_curves=True)
    assert len(m["pr_curves"]["recall"]) == 101
    assert m["pr_curves"]["AP50"]["circle"] == [1.0] * 101


def test_errors_name_the_problem(ann_file: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"image ids \[99\]"):
        coco_evaluate(ann_file, {99: Detections.empty()}, CATEGORY_IDS, CLASS_NAMES)
    with pytest.raises(InputError, match="empty"):
        coco_evaluate(ann_file, {}, CATEGORY_IDS, CLASS_NAMES)
    with pytest.raises(InputError, match="class index 2"):
        coco_evaluate(ann_file, {1: _det([[0, 0, 1, 1]], [0.5], [2])}, CATEGORY_IDS, CLASS_NAMES)
    with pytest.raises(InputError, match=r"category ids \[4\]"):
        coco_evaluate(ann_file, _perfect(), (3, 4), CLASS_NAMES)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json"):
        coco_evaluate(bad, _perfect(), CATEGORY_IDS, CLASS_NAMES)
    with pytest.raises(DataError, match="does not exist"):
        coco_evaluate(tmp_path / "nope.json", _perfect(), CATEGORY_IDS, CLASS_NAMES)


def test_format_stats_lists_the_twelve(ann_file: Path) -> None:
    text = format_stats(coco_evaluate(ann_file, _perfect(), CATEGORY_IDS, CLASS_NAMES))
    assert [line.split()[0] for line in text.splitlines()] == list(STAT_NAMES)


def test_ground_truth_without_iscrowd_or_area_evaluates(ann_file: Path) -> None:
    # many exporters write neither; pycocotools' COCOeval raises KeyError on both (found with a real-format set)
    data = json.loads(ann_file.read_text())
    for a in data["annotations"]:
        del a["iscrowd"]
        del a["area"]
    ann_file.write_text(json.dumps(data))
    m = coco_evaluate(ann_file, _perfect(), CATEGORY_IDS, CLASS_NAMES)
    assert m["AP"] == pytest.approx(1.0)
    assert (m["APs"], m["APm"], m["APl"]) == (pytest.approx(1.0),) * 3  # area = w * h puts each box in its range


def test_per_class_ap_follows_the_class_order_when_ids_are_unsorted(ann_file: Path) -> None:
    # a spec listing ids (7, 3): COCOeval sorts catIds, so its column 0 is id 3; per-class AP was mislabelled
    only_circles = {1: _det([[10, 10, 30, 30]], [0.9], [1]), 5: _det([[0, 0, 200, 100]], [0.9], [1])}  # 1 = id 3
    m = coco_evaluate(ann_file, only_circles, (7, 3), ("square", "circle"), pr_curves=True)
    assert m["per_class_AP"] == {"square": 0.0, "circle": pytest.approx(1.0)}
    assert m["per_class_AP50"] == {"square": 0.0, "circle": pytest.approx(1.0)}
    assert m["pr_curves"]["AP50"]["circle"] == [1.0] * 101 and m["pr_curves"]["AP50"]["square"] == [0.0] * 101


def test_image_file_falls_back_to_the_base_name(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "x.jpg").write_bytes(b"")
    (tmp_path / "sub" / "y.jpg").write_bytes(b"")
    assert image_file(tmp_path, "images/x.jpg") == tmp_path / "x.jpg"
    assert image_file(tmp_path, "C:\\export\\x.jpg") == tmp_path / "x.jpg"
    assert image_file(tmp_path, "sub/y.jpg") == tmp_path / "sub" / "y.jpg"
    assert image_file(tmp_path, "other/y.jpg") == tmp_path / "other" / "y.jpg"  # not flat: the path as given


def test_ground_truth_with_a_utf8_byte_order_mark_and_non_ascii_names(ann_file: Path) -> None:
    # Windows tools write a BOM; pycocotools' own reader (locale text + json.load) rejected it
    data = json.loads(ann_file.read_text())
    data["categories"][0]["name"] = "café 猫"
    ann_file.write_bytes(b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=False).encode("utf-8"))
    m = coco_evaluate(ann_file, _perfect(), CATEGORY_IDS, ("café 猫", "square"))
    assert m["per_class_AP"] == {"café 猫": pytest.approx(1.0), "square": pytest.approx(1.0)}


def test_whole_float_image_sizes_load_as_ints(ann_file: Path, tmp_path: Path) -> None:
    from retinaedge.runtime.cocoeval import load_coco

    data = json.loads(ann_file.read_text())
    data["images"][0].update(width=64.0, height=48.0)  # as some exporters write them
    data["images"][1].update(width=64.5)  # not whole: left for the caller to refuse
    del data["images"][1]["height"]  # absent stays absent
    p = tmp_path / "float.json"
    p.write_text(json.dumps(data))
    imgs = load_coco(p).dataset["images"]
    assert (imgs[0]["width"], imgs[0]["height"]) == (64, 48) and isinstance(imgs[0]["width"], int)
    assert imgs[1]["width"] == 64.5 and "height" not in imgs[1]


def test_one_category_and_size_policy_for_both_coco_readers() -> None:
    from retinaedge.runtime.cocoeval import category_mismatch, image_size, missing_categories, whole_sizes

    file_cats = {1: " Fish", 3: "shark"}
    # case and spaces aside; a trainer-suffixed name (fish_1: the train split had two 'fish') matches the plain one
    assert category_mismatch(file_cats, (1, 3, 7), ("fish_1", "SHARK", "eel")) is None
    assert category_mismatch(file_cats, (1, 3), ("fish", "ray")) == (3, "shark", "ray")
    assert category_mismatch(file_cats, (1,), ("fish_2",)) == (1, " Fish", "fish_2")  # another id's suffix
    assert missing_categories(file_cats, (1, 3, 7), ("fish", "shark", "eel")) == [{"id": 7, "name": "eel"}]
    assert image_size(whole_sizes({"width": 640.0, "height": 480})) == (640, 480)
    assert image_size(whole_sizes({"width": 640.5, "height": 480})) is None
    assert whole_sizes({"width": 2.0}) == {"width": 2} and image_size({"width": 2}) is None
