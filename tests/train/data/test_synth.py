import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaedge.runtime.errors import InputError
from retinaedge.train.data.synth import (
    CATEGORIES,
    SHAPES,
    SynthConfig,
    image_id_for,
    render_image,
    shape_polygon,
    write_synthetic_coco,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_seed_matters(tmp_path):
    a = write_synthetic_coco(tmp_path / "a", train=4, val=2, size=64, seed=3)
    write_synthetic_coco(tmp_path / "b", train=4, val=2, size=64, seed=3)
    write_synthetic_coco(tmp_path / "c", train=4, val=2, size=64, seed=4)
    fa, fb, fc = (_files(tmp_path / n) for n in "abc")
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert fa["annotations/instances_train.json"] != fc["annotations/instances_train.json"]
    assert fa["train/000000.jpg"] != fc["train/000000.jpg"]
    assert a["splits"]["train"]["images"] == 4 and a["splits"]["val"]["images"] == 2


def test_output_does_not_depend_on_worker_count(tmp_path):
    write_synthetic_coco(tmp_path / "a", train=64, val=0, size=40, seed=1, workers=0)
    write_synthetic_coco(tmp_path / "b", train=64, val=0, size=40, seed=1, workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_layout_ids_and_sizes(tmp_path):
    s = write_synthetic_coco(tmp_path, train=12, val=3, size=96, seed=0)
    for split, n in (("train", 12), ("val", 3)):
        data = json.loads((tmp_path / "annotations" / f"instances_{split}.json").read_text())
        assert set(data) >= {"images", "annotations", "categories"}
        assert [c["id"] for c in data["categories"]] == [1, 3, 7, 12, 20]  # sparse on purpose
        assert len(data["categories"]) >= 4
        assert [im["id"] for im in data["images"]] == [image_id_for(i) for i in range(n)]
        assert image_id_for(0) != 0
        sizes = set()
        for im in data["images"]:
            with Image.open(tmp_path / split / im["file_name"]) as pil:
                assert pil.format == "JPEG" and pil.size == (im["width"], im["height"])
            assert 0.75 * 96 - 1 <= im["width"] <= 1.25 * 96 + 1 and 0.75 * 96 - 1 <= im["height"] <= 1.25 * 96 + 1
            sizes.add((im["width"], im["height"]))
        assert len(sizes) > 1 and any(w != h for w, h in sizes)
        by_id = {im["id"]: im for im in data["images"]}
        ids = [a["id"] for a in data["annotations"]]
        assert ids == list(range(1, len(ids) + 1))
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            im = by_id[a["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
            assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
            assert a["category_id"] in {c for c, _ in CATEGORIES}
    assert s["splits"]["val"]["ann_file"].endswith("instances_val.json")


def test_shape_polygon_square_hand_computed():
    pts = shape_polygon("square", 20, 30, 10)
    np.testing.assert_allclose(pts, [[15, 25], [25, 25], [25, 35], [15, 35]])
    with pytest.raises(InputError, match="shape 'hexagon' is not one of"):
        shape_polygon("hexagon", 0, 0, 1)


def test_box_is_tight_around_the_visible_pixels():
    # same seed with and without the object: the background is drawn first, so the pixels that differ are
    # exactly the object's (noise off)
    kw = dict(under_distractors=(0, 0), over_distractors=(0, 0), noise=(0.0, 0.0))
    for seed in range(6):
        img, objs = render_image(np.random.default_rng(seed), 80, 70, SynthConfig(objects=(1, 1), **kw))
        bg, none = render_image(np.random.default_rng(seed), 80, 70, SynthConfig(objects=(0, 0), **kw))
        assert len(objs) == 1 and none == []
        mask = np.any(img != bg, axis=2)
        ys, xs = np.nonzero(mask)
        assert objs[0]["area"] == mask.sum() and objs[0]["visible"] == 1.0
        assert objs[0]["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


def test_occlusion_keeps_enough_visible_and_happens():
    cfg = SynthConfig(objects=(25, 25), over_distractors=(6, 6))
    fractions = []
    for seed in range(4):
        _, objs = render_image(np.random.default_rng(seed), 96, 96, cfg)
        fractions += [o["visible"] for o in objs]
    assert min(fractions) >= cfg.min_visible
    assert any(f < 0.95 for f in fractions)  # some objects are partly hidden


def test_sizes_classes_and_clutter_statistics():
    sides, classes, per_image = [], set(), []
    for i in range(30):
        _, objs = render_image(np.random.default_rng([7, i]), 256, 256)
        per_image.append(len(objs))
        classes |= {o["class"] for o in objs}
        sides += [max(o["bbox"][2:]) for o in objs]
    assert classes == set(range(len(SHAPES)))
    sides = np.asarray(sides)
    # nominal sides run 8 px .. S/2; a rotated shape's box can reach S/2 * sqrt(2)
    assert sides.min() <= 12 and sides.max() >= 64 and sides.max() <= 128 * 2**0.5 + 1
    assert 0.25 < np.mean(sides < 32) < 0.75  # many COCO-"small" objects (size mix 25/50/25 %)
    assert np.mean(sides >= 64) > 0.1
    assert min(per_image) >= 1 and np.mean(per_image) > 4


@pytest.mark.parametrize(("kw", "msg"), [({"train": -1}, "train=-1 images is not allowed"),
                                         ({"size": 16}, "size=16 is too small")])
def test_bad_arguments(tmp_path, kw, msg):
    with pytest.raises(InputError, match=msg):
        write_synthetic_coco(tmp_path, **{"train": 1, "val": 1, **kw})


def test_config_validation():
    with pytest.raises(InputError, match=r"min_visible=0.4 must be in \(0.5, 1\]"):
        SynthConfig(min_visible=0.4)
    with pytest.raises(InputError, match=r"size_mix=\(0.5, 0.5, 0.5\) must be 3 non-negative fractions summing to 1"):
        SynthConfig(size_mix=(0.5, 0.5, 0.5))
