"""The CLI end to end on a COCO-format set written the way real exports are (tests/support/real_coco.py):
sparse unsorted category ids, COCO-like image ids, grayscale/RGBA/palette/CMYK files, sub-folders, uppercase
suffixes, crowd RLE, missing area/iscrowd, extra keys, with and without info/licenses, and COCO's own
``*2017`` names. train -> eval -> export -> validate -> infer, as a user runs them; ~20 s on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaedge.cli import main
from retinaedge.runtime.preprocess import letterbox_params, load_image
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from tests.support import scenes
from tests.support.real_coco import COLOURS, stored_name, write_real_coco

pytest.importorskip("pycocotools")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

NAMES = {1: "person", 3: "car", 44: "bottle", 90: "toothbrush"}
TINY = [  # 64 px, 2 FPN levels, 8 channels, frozen backbone, 1 epoch of 3 steps; a low score threshold so an
    # untrained model still writes detections to check
    "num_threads=1", "eval_batch_size=4", "log_every=1", "eval_every=1",
    "model.fpn_channels=8", "model.head_channels=8", "model.head_depth=1", "model.gn_groups=4",
    "model.channels_last=false", "model.trainable_layers=0",
    "data.input_size=64", "data.progressive_size=0", "data.batch_size=2", "data.workers=0",
    "anchors.strides=[8, 16]", "anchors.sizes=[12, 24]", "optim.warmup_iters=2",
    "postprocess.score_threshold=0.001",
]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_real_coco(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module")
def run(real: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    sets = [a for s in TINY for a in ("--set", s)]
    assert main(["train", "--data", str(real["root"]), "--out", str(out), "--epochs", "1", *sets]) == 0
    return out


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colour oracle as ONNX: red -> toothbrush (id 90), green -> person (id 1), so boxes are known."""
    spec = scenes.tiny_spec(class_names=("toothbrush", "person"), category_ids=(90, 1))
    return scenes.oracle_onnx(tmp_path_factory.mktemp("oracle") / "model.fp32.onnx", spec)


def _rows(real: dict) -> list[tuple]:
    return [(split, *row) for split in ("train", "val") for row in real[split]["rows"]]


def test_every_image_decodes_to_rgb_at_its_annotated_size(real: dict) -> None:
    modes = set()
    for split, _iid, name, w, h, mode, _fmt, anns in _rows(real):
        path = real[split]["images"] / stored_name(name)
        with Image.open(path) as im:
            modes.add(im.mode)
        rgb = load_image(path, size=(w, h))
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8, name
        for _aid, cid, (x, y, bw, bh), _ in anns:
            pixel = rgb[int(y + bh / 2), int(x + bw / 2)].astype(int)
            if mode == "L":
                assert pixel[0] == pixel[1] == pixel[2], name
            else:  # palette quantisation and CMYK JPEG round trips keep the colour near
                np.testing.assert_allclose(pixel, COLOURS[cid], atol=40, err_msg=name)
    assert {"RGB", "L", "RGBA", "P", "CMYK"} <= modes  # the fixture really holds every mode


def test_loader_class_map_and_hand_computed_letterbox(real: dict) -> None:
    from retinaedge.train.data.coco import CocoDetection, read_categories

    names, ids = read_categories(real["train"]["ann"])
    assert ids == (1, 3, 44, 90) and names == ("person", "car", "bottle", "toothbrush")  # sorted by id
    spec = DetectorSpec(class_names=names, category_ids=ids, input_height=64, input_width=64,
                        anchors=AnchorSpec(strides=(8, 16), sizes=(12.0, 24.0)))
    lines: list[str] = []
    ds = CocoDetection(ann_file=real["train"]["ann"], image_dir=real["train"]["images"], spec=spec, train=False,
                       log=lines.append)
    assert ds.image_ids == [139, 285, 632, 724, 776, 785, 790]  # 790: a Windows path, found flat
    assert "crowd=1" in lines[0] and "missing_image" not in lines[0] and "size_mismatch" not in lines[0]
    # image 285: gray/000000000285.jpg, grayscale, 64 wide x 112 high -> scale 4/7, resized 37x64 (round(36.57)),
    # pad_x (64 - 37) // 2 = 13. car [8, 20, 40, 30] and person [12, 70, 30, 28] (the one without "area").
    image, t = ds[1]
    assert t["image_id"] == 285 and image.shape == (3, 64, 64)
    s = 4 / 7
    want = np.array([[8 * s + 13, 20 * s, 48 * s + 13, 50 * s], [12 * s + 13, 70 * s, 42 * s + 13, 98 * s]])
    np.testing.assert_allclose(t["boxes"].numpy(), want, rtol=1e-5)
    assert t["labels"].tolist() == [1, 0]  # car (id 3) -> index 1, person (id 1) -> index 0
    assert (image[:, :, :13] == 114).all() and (image[:, :, 50:] == 114).all()  # the padding columns
    meta, _ = letterbox_params(112, 64, spec)
    np.testing.assert_allclose(meta.to_original(want), [[8, 20, 48, 50], [12, 70, 42, 98]], atol=1e-4)
    # image 632: the RGBA PNG; its crowd annotation is not a training target but stays in the ground truth
    _, t = ds[2]
    assert t["labels"].tolist() == [1]
    gt = ds.coco
    assert gt.anns[55]["iscrowd"] == 1 and gt.anns[8]["area"] == 30 * 28 and gt.anns[61]["iscrowd"] == 0


def test_train_then_eval_name_classes_and_write_original_ids(real: dict, run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from pycocotools.coco import COCO

    import retinaedge.runtime.cocoeval as cocoeval

    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["per_class_AP"]) == ["person", "car", "bottle", "toothbrush"]
    assert metrics["per_class_AP"]["bottle"] is None  # a category without annotations: no AP, no crash
    spec = json.loads((run / "spec.json").read_text())
    assert spec["category_ids"] == [1, 3, 44, 90]

    written: list[dict] = []
    to_coco = cocoeval.detections_to_coco
    monkeypatch.setattr(cocoeval, "detections_to_coco", lambda *a, **k: written.extend(to_coco(*a, **k)) or written)
    assert main(["eval", "--checkpoint", str(run / "ckpt_best.pt"), "--data", str(real["root"]),
                 "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m["per_class_AP"]) == set(NAMES.values()) and m["num_images"] == 6
    assert written and m["num_detections"] == len(written)
    cats = {r["category_id"] for r in written}
    assert cats <= set(NAMES) and cats & {44, 90}  # the dataset's ids, not class indices 0..3
    sizes = {im["id"]: (im["width"], im["height"]) for im in real["val"]["json"]["images"]}
    assert {r["image_id"] for r in written} <= set(sizes)
    gt = COCO(str(real["val"]["ann"]))  # the file as written: no info/licenses, a missing area and iscrowd
    res = gt.loadRes([dict(r) for r in written])
    assert set(res.getImgIds()) == set(sizes) and sorted(res.getCatIds()) == [1, 3, 44, 90]
    for r in written:  # original-image pixels: inside each image, not inside the 64x64 network input
        x, y, w, h = r["bbox"]
        iw, ih = sizes[r["image_id"]]
        assert -1e-3 <= x <= x + w <= iw + 1e-3 and -1e-3 <= y <= y + h <= ih + 1e-3
    assert max(r["bbox"][1] + r["bbox"][3] for r in written if r["image_id"] == 37777) > 64  # 64x112 image


def test_export_validate_and_infer_the_trained_model(real: dict, run: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run / "ckpt_best.pt"), "--out", str(export)]) == 0
    # validate reads the val file with pycocotools as written: it crashed on the missing iscrowd/area
    assert main(["validate", "--data", str(real["root"]), "--models", str(export), "--checkpoint",
                 str(run / "ckpt_best.pt"), "--report", str(tmp_path / "report")]) == 0
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
    assert [(r["backend"], r["precision"], r["pass"]) for r in rows] == [("torch", "fp32", True), ("ort", "fp32", True)]
    assert set(rows[0]["metrics"]["per_class_AP"]) == set(NAMES.values())

    assert main(["infer", "--model", str(export / "model.fp32.onnx"), "--source", str(real["val"]["images"]),
                 "--out", str(tmp_path / "infer"), "--quiet"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "infer" / "detections.jsonl").read_text().splitlines()]
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in real["val"]["json"]["images"]}
    assert sorted(x["file"] for x in lines) == sorted(sizes)  # .JPG included
    for x in lines:
        assert (x["width"], x["height"]) == sizes[x["file"]]
        for d in x["detections"]:
            assert d["category_id"] in NAMES and d["name"] == NAMES[d["category_id"]]
            assert 0 <= d["bbox"][0] <= d["bbox"][2] <= x["width"] and 0 <= d["bbox"][1] <= d["bbox"][3] <= x["height"]


def test_oracle_boxes_come_back_in_original_pixels(real: dict, oracle: Path, tmp_path: Path) -> None:
    assert main(["infer", "--model", str(oracle), "--source", str(real["val"]["images"]), "--out", str(tmp_path),
                 "--no-draw", "--quiet"]) == 0
    lines = (tmp_path / "detections.jsonl").read_text().splitlines()
    found = {x["file"]: x["detections"] for x in map(json.loads, lines)}
    # (file, category id, drawn box xyxy): RGB JPEG 96x64, palette PNG 100x60, CMYK .JPG 72x96
    for name, cid, box in (("000000397133.jpg", 90, [12, 10, 40, 32]), ("000000087038.png", 90, [5, 5, 35, 45]),
                           ("000000174482.JPG", 1, [20, 30, 50, 70])):
        dets = [d for d in found[name] if d["category_id"] == cid]
        assert len(dets) == 1, (name, found[name])
        np.testing.assert_allclose(dets[0]["bbox"], box, atol=2.5, err_msg=name)
    assert found["000000037777.png"] == []  # grayscale: no colour for the oracle


def test_coco_release_layout(real: dict, run: Path, oracle: Path, tmp_path: Path) -> None:
    root = write_real_coco(tmp_path / "coco", year="2017")["root"]  # instances_val2017.json, val2017/
    assert main(["eval", "--checkpoint", str(run / "ckpt_best.pt"), "--data", str(root),
                 "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["num_images"] == 6
    assert main(["validate", "--data", str(root), "--models", str(oracle), "--report", str(tmp_path / "r")]) == 0
    row = json.loads((tmp_path / "r" / "report.json").read_text())["rows"][0]
    per_class = row["metrics"]["per_class_AP50"]
    # toothbrush: both drawn boxes found; person: the CMYK one found, the grayscale one cannot be
    assert per_class["toothbrush"] == pytest.approx(1.0) and 0.4 < per_class["person"] < 0.6
