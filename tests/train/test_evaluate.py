"""train/evaluate.py: the torch model through the runtime letterbox, post-process and COCO evaluation.

An "oracle" model that emits the exact ground truth (encoded on its best anchor) must score AP 1.0 on
images of different sizes and aspect ratios: that only happens if the letterbox, the anchor order, the
decode, `Letterbox.to_original` and the class-index -> category-id map all agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinaedge.cli import main as cli_main
from retinaedge.runtime.cocoeval import STAT_NAMES
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.preprocess import letterbox_params
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.train.anchors import anchors_for
from retinaedge.train.box_coder import BoxCoder
from retinaedge.train.checkpoint import get_rng_state, save_checkpoint
from retinaedge.train.config import config_to_dict, load_config
from retinaedge.train.data.coco import CocoDetection, read_categories
from retinaedge.train.evaluate import detect_images, evaluate, split_paths
from retinaedge.train.model import build_model

# (file, width, height, [(category_id, [x, y, w, h])]) -- sparse ids, non-square sizes, no overlaps
IMAGES = [
    ("a.png", 96, 64, [(5, [4, 6, 20, 14]), (9, [50, 30, 30, 24])]),
    ("b.png", 40, 80, [(9, [2, 2, 16, 30]), (5, [10, 50, 24, 24])]),
    ("c.png", 64, 64, [(5, [30, 8, 12, 12])]),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("handmade")
    (root / "val").mkdir()
    (root / "annotations").mkdir()
    images, anns = [], []
    for i, (name, w, h, objs) in enumerate(IMAGES):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / "val" / name)
        images.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
        for cat, box in objs:
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    cats = [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}]
    (root / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def _spec(root: Path) -> DetectorSpec:
    names, ids = read_categories(root / "annotations" / "instances_val.json")
    return DetectorSpec(class_names=names, category_ids=ids, input_height=64, input_width=64,
                        anchors=AnchorSpec(strides=(8, 16), sizes=(12.0, 24.0)))


class Oracle(torch.nn.Module):
    """Outputs, for the images it is shown in dataset order, each GT box encoded on its best free anchor."""

    def __init__(self, dataset: CocoDetection, spec: DetectorSpec) -> None:
        super().__init__()
        self.dataset, self.spec, self.pos = dataset, spec, 0
        self.anchors = anchors_for(spec, dtype=torch.float64)
        self.coder = BoxCoder.from_spec(spec)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from torchvision.ops import box_iou

        b, n, k = x.shape[0], self.spec.num_anchors, self.spec.num_classes
        logits = torch.full((b, n, k), -20.0)
        deltas = torch.zeros((b, n, 4))
        coco = self.dataset.coco
        for j in range(b):
            image_id = self.dataset.image_ids[self.pos]
            self.pos += 1
            info = coco.imgs[image_id]
            meta, _ = letterbox_params(info["height"], info["width"], self.spec)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            xyxy = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in anns])
            gt = torch.from_numpy(meta.to_network(xyxy).astype(np.float64))
            iou = box_iou(gt, self.anchors)
            used: set[int] = set()
            for g, a in enumerate(anns):
                order = iou[g].argsort(descending=True).tolist()
                best = next(i for i in order if i not in used)
                used.add(best)
                logits[j, best, self.spec.category_ids.index(a["category_id"])] = 20.0
                deltas[j, best] = self.coder.encode(gt[g:g + 1], self.anchors[best:best + 1]).float()[0]
        return {"cls_logits": logits, "box_deltas": deltas}


def test_oracle_scores_ap_one_through_letterbox_and_back(data: Path) -> None:
    spec = _spec(data)
    ann, images = split_paths(data, "val")
    ds = CocoDetection(ann_file=ann, image_dir=images, spec=spec, train=False, log=lambda _: None)
    m = evaluate(Oracle(ds, spec), ds, spec, batch_size=2)  # batches of 2: a partial last batch too
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert m[name] == pytest.approx(1.0), name
    assert m["per_class_AP"] == {"five": pytest.approx(1.0), "nine": pytest.approx(1.0)}
    assert m["num_images"] == 3 and m["num_detections"] == 5


def test_detect_images_returns_original_pixels(data: Path) -> None:
    spec = _spec(data)
    ann, images = split_paths(data, "val")
    ds = CocoDetection(ann_file=ann, image_dir=images, spec=spec, train=False, log=lambda _: None)
    img, _ = ds.load_original(1)  # 40 x 80, letterboxed with side padding
    oracle = Oracle(ds, spec)
    oracle.pos = 1
    (det,) = detect_images(oracle, [img], spec)
    order = np.argsort(det.boxes[:, 1])
    np.testing.assert_allclose(det.boxes[order], [[2, 2, 18, 32], [10, 50, 34, 74]], atol=1e-3)
    assert det.classes[order].tolist() == [1, 0]  # category 9 -> index 1, 5 -> 0
    assert detect_images(oracle, [], spec) == []


def test_split_paths_errors_name_the_path_and_flag(data: Path, tmp_path: Path) -> None:
    assert split_paths(data, "val") == (data / "annotations" / "instances_val.json", data / "val")
    with pytest.raises(InputError, match=r"train annotations .*instances_train\.json.*--train-ann"):
        split_paths(data, "train")
    with pytest.raises(InputError, match=r"val image folder .*nowhere.*--val-images"):
        split_paths(data, "val", images=tmp_path / "nowhere")
    with pytest.raises(InputError, match="no --data"):
        split_paths(None, "val")



def test_split_paths_find_coco_release_names(tmp_path: Path) -> None:
    # --data pointing at COCO as downloaded: annotations/instances_val2017.json and val2017/
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    (tmp_path / "val2017").mkdir()
    assert split_paths(tmp_path, "val") == (tmp_path / "annotations" / "instances_val2017.json", tmp_path / "val2017")
    with pytest.raises(InputError, match=r"instances_train\.json \(or instances_train2017\.json\)"):
        split_paths(tmp_path, "train")
    (tmp_path / "val").mkdir()  # the documented layout wins as soon as part of it is there
    with pytest.raises(InputError, match=r"instances_val\.json'"):
        split_paths(tmp_path, "val")

def test_cli_eval_prints_table_and_writes_json(data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(data)
    config = load_config("edge", ["model.fpn_channels=8", "model.head_channels=8", "model.head_depth=1",
                                  "model.gn_groups=4", "model.channels_last=false", "data.input_size=64",
                                  "data.progressive_size=0",
                                  "anchors.strides=[8, 16]", "anchors.sizes=[12, 24]"])
    torch.manual_seed(0)
    model = build_model(spec, config.model)
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": config_to_dict(config), "spec": spec.to_dict(),
                           "epoch": 0, "step": 0, "batch": 0, "elapsed_s": 0.0, "best_ap": -1.0,
                           "rng": get_rng_state(), "optimizer": {}, "scaler": {}})
    out = tmp_path / "metrics.json"
    assert cli_main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in STAT_NAMES)
    m = json.loads(out.read_text())
    assert set(STAT_NAMES) <= set(m) and set(m["per_class_AP"]) == {"five", "nine"}
    ds = CocoDetection(ann_file=data / "annotations" / "instances_val.json", image_dir=data / "val", spec=spec,
                       train=False, log=lambda _: None)
    direct = evaluate(model, ds, spec)
    assert {k: m[k] for k in STAT_NAMES} == {k: direct[k] for k in STAT_NAMES}
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
