import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from retinaedge.runtime.errors import DataError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.train.data.coco import CocoDetection, collate, make_loader, read_categories
from retinaedge.train.data.synth import write_synthetic_coco
from retinaedge.train.data.transforms import AugmentConfig

torch.set_num_threads(1)
RED = (200, 10, 10)


def tiny_spec(ids=(3, 7, 12)):
    return DetectorSpec(class_names=tuple(f"c{i}" for i in ids), category_ids=ids, input_height=64, input_width=64,
                        anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0,), aspect_ratios=(1.0,)))


def _png(path, w, h, colour=RED):
    Image.new("RGB", (w, h), colour).save(path)


def _ann(aid, iid, cid, bbox, **kw):
    return {"id": aid, "image_id": iid, "category_id": cid, "bbox": bbox, "iscrowd": 0, **kw}


CATS = [{"id": 12, "name": "c12"}, {"id": 3, "name": "c3"}, {"id": 7, "name": "c7"}]


@pytest.fixture
def tiny(tmp_path):
    """Hand-made set: every documented skip once, boxes computed by hand."""
    img = tmp_path / "img"
    img.mkdir()
    _png(img / "a.png", 32, 16)
    _png(img / "b.png", 20, 40)
    _png(img / "c.png", 24, 24)
    data = {
        "images": [{"id": 11, "file_name": "a.png", "width": 32, "height": 16},
                   {"id": 22, "file_name": "b.png", "width": 20, "height": 40},
                   {"id": 33, "file_name": "c.png", "width": 24, "height": 24},  # no annotations: a negative
                   {"id": 44, "file_name": "missing.png", "width": 8, "height": 8}],
        "annotations": [_ann(1, 11, 7, [4, 2, 10, 6]),
                        _ann(2, 11, 3, [0, 0, 5, 5], iscrowd=1),
                        _ann(3, 22, 12, [-5, 30, 10, 20]),  # clipped to [0, 30, 5, 10]
                        _ann(4, 22, 3, [25, 5, 5, 5]),  # entirely right of the 20 px wide image
                        _ann(5, 22, 3, [1, 1, 0, 4]),  # zero width
                        _ann(6, 22, 3, [1, 1, 4, 4], area=0)],
        "categories": CATS,
    }
    ann = tmp_path / "inst.json"
    ann.write_text(json.dumps(data))
    return ann, img


def test_letterboxed_boxes_labels_and_pixels_hand_computed(tiny):
    ann, img = tiny
    lines = []
    ds = CocoDetection(ann_file=ann, image_dir=img, spec=tiny_spec(), train=False, log=lines.append)
    assert ds.image_ids == [11, 22, 33] and len(ds) == 3
    # a.png 32x16 -> scale 2, resized 64x32, pad_y 16: [4, 2, 14, 8] -> [8, 20, 28, 32]
    image, t = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert t["image_id"] == 11
    np.testing.assert_array_equal(t["boxes"].numpy(), [[8, 20, 28, 32]])
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    assert t["labels"].tolist() == [1]  # category 7 -> index 1 of (3, 7, 12); the crowd box is dropped
    assert image[:, 0, 0].tolist() == [114] * 3 and image[:, 16, 0].tolist() == list(RED)
    assert image[:, 47, 63].tolist() == list(RED) and image[:, 48, 0].tolist() == [114] * 3
    # b.png 20x40 -> scale 1.6, resized 32x64, pad_x 16: clipped [0, 30, 5, 40] -> [16, 48, 24, 64]
    _, t = ds[1]
    np.testing.assert_allclose(t["boxes"].numpy(), [[16, 48, 24, 64]])
    assert t["labels"].tolist() == [2]
    _, t = ds[2]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert ds.skip_counts == {"bbox_clipped": 1, "bbox_outside": 1, "zero_area": 2, "missing_image": 1,
                              "corrupt_image": 0, "size_mismatch": 0, "crowd": 1}
    assert lines == ["inst.json: 3 images, 2 boxes, 3 classes; skipped/fixed: bbox_clipped=1, bbox_outside=1, "
                     "zero_area=2, missing_image=1, crowd=1"]


def test_cleaned_ground_truth_for_evaluation(tiny):
    ann, img = tiny
    ds = CocoDetection(ann_file=ann, image_dir=img, spec=tiny_spec(), train=False)
    assert sorted(ds.coco.getImgIds()) == [11, 22, 33]
    assert sorted(ds.coco.getAnnIds()) == [1, 2, 3]  # crowd kept (COCOeval ignores it), skips removed
    assert ds.coco.loadAnns([3])[0]["bbox"] == [0.0, 30.0, 5.0, 10.0]
    original, iid = ds.load_original(1)
    assert original.shape == (40, 20, 3) and iid == 22
    assert [ds.load_original(i)[1] for i in range(len(ds))] == [11, 22, 33]


def test_flip_moves_boxes(tiny):
    ann, img = tiny
    ds = CocoDetection(ann_file=ann, image_dir=img, spec=tiny_spec(), train=True,
                       augment=AugmentConfig(hflip=1.0, p_jitter=0.0))
    _, t = ds[0]
    # flipped in the 32 px wide original: [32-14, 2, 32-4, 8] = [18, 2, 28, 8] -> x2, pad_y 16
    np.testing.assert_array_equal(t["boxes"].numpy(), [[36, 20, 56, 32]])


def test_jitter_leaves_the_letterbox_border_alone(tiny):
    ann, img = tiny
    ds = CocoDetection(ann_file=ann, image_dir=img, spec=tiny_spec(), train=True,
                       augment=AugmentConfig(hflip=0.0, jitter=0.5, p_jitter=1.0))
    ds.reseed(3)
    image, _ = ds[0]
    assert (image[:, :16] == 114).all() and (image[:, 48:] == 114).all()
    assert image[:, 16:48].tolist() != torch.tensor(RED, dtype=torch.uint8)[:, None, None].expand(3, 32, 64).tolist()


def test_size_mismatch_rescales_boxes(tmp_path):
    _png(tmp_path / "a.png", 32, 16)
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 8}],
            "annotations": [_ann(1, 1, 7, [2, 1, 5, 3])], "categories": CATS}
    (tmp_path / "i.json").write_text(json.dumps(data))
    ds = CocoDetection(ann_file=tmp_path / "i.json", image_dir=tmp_path, spec=tiny_spec(), train=False)
    _, t = ds[0]
    np.testing.assert_array_equal(t["boxes"].numpy(), [[8, 20, 28, 32]])
    assert ds.skip_counts["size_mismatch"] == 1



def test_training_decodes_large_jpegs_reduced_with_the_same_boxes(tmp_path, monkeypatch):
    # a 1024x512 photo for a 64 px input (letterboxed 64x32): training decodes it at 1/8 (128x64 >= 2x), a full
    # decode would cost ~8x more; the boxes must come out as from the full decode, and it is no size mismatch
    pixels = np.zeros((512, 1024, 3), np.uint8)
    pixels[128:384, 256:512] = RED
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    data = {"images": [{"id": 1, "file_name": "big.jpg", "width": 1024, "height": 512}],
            "annotations": [_ann(1, 1, 7, [256, 128, 256, 256])], "categories": CATS}
    (tmp_path / "i.json").write_text(json.dumps(data))
    import retinaedge.train.data.coco as coco

    shapes = []
    real = coco.load_image
    monkeypatch.setattr(coco, "load_image", lambda *a, **k: shapes.append(real(*a, **k).shape) or real(*a, **k))
    no_aug = AugmentConfig(hflip=0.0, p_jitter=0.0)
    train = CocoDetection(ann_file=tmp_path / "i.json", image_dir=tmp_path, spec=tiny_spec(), train=True,
                          augment=no_aug)
    val = CocoDetection(ann_file=tmp_path / "i.json", image_dir=tmp_path, spec=tiny_spec(), train=False)
    (img_t, t), (img_v, v) = train[0], val[0]
    assert shapes == [(64, 128, 3), (512, 1024, 3)]  # training: 1/8 scale; evaluation: the full image
    # 1024x512 -> 64x32 at scale 1/16, pad_y 16: [256, 128, 512, 384] -> [16, 24, 32, 40]
    np.testing.assert_array_equal(t["boxes"].numpy(), [[16, 24, 32, 40]])
    np.testing.assert_array_equal(v["boxes"].numpy(), t["boxes"].numpy())
    assert train.skip_counts["size_mismatch"] == 0
    assert (img_t.int() - img_v.int()).abs().float().mean() < 4  # the same picture


def test_whole_float_image_sizes_are_ints_and_fractional_ones_are_named(tmp_path):
    _png(tmp_path / "a.png", 32, 16)
    im = {"id": 1, "file_name": "a.png", "width": 32.0, "height": 16.0}  # as some exporters write them
    data = {"images": [im], "annotations": [_ann(1, 1, 7, [2, 1, 8, 4])], "categories": CATS}
    (tmp_path / "i.json").write_text(json.dumps(data))
    ds = CocoDetection(ann_file=tmp_path / "i.json", image_dir=tmp_path, spec=tiny_spec(), train=False)
    _, t = ds[0]
    # 32x16 -> scale 2, 64x32, pad_y 16: [2, 1, 10, 5] -> [4, 18, 20, 26]
    np.testing.assert_array_equal(t["boxes"].numpy(), [[4, 18, 20, 26]])
    assert ds.skip_counts["size_mismatch"] == 0
    data["images"] = [{**im, "width": 32.5}]
    (tmp_path / "i.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"image id 1 has size 32\.5x16; width and height must be positive ints"):
        CocoDetection(ann_file=tmp_path / "i.json", image_dir=tmp_path, spec=tiny_spec(), train=False)


def test_exif_turned_photo_annotated_as_shown(tmp_path):
    # a phone photo stored 32x16 with EXIF orientation 6 (shown 16x32), annotated as shown: the JSON says
    # 16x32. It used to count as a size mismatch and stretch the boxes by (2, 0.5) instead of turning the image.
    stored = Image.new("RGB", (32, 16), RED)
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "p.jpg", exif=exif, quality=95)
    data = {"images": [{"id": 1, "file_name": "p.jpg", "width": 16, "height": 32}],
            "annotations": [_ann(1, 1, 7, [2, 4, 8, 12])], "categories": CATS}
    (tmp_path / "i.json").write_text(json.dumps(data))
    ds = CocoDetection(ann_file=tmp_path / "i.json", image_dir=tmp_path, spec=tiny_spec(), train=False)
    _, t = ds[0]
    # 16x32 -> scale 2, resized 32x64, pad_x 16: [2, 4, 10, 16] -> [20, 8, 36, 32]
    np.testing.assert_array_equal(t["boxes"].numpy(), [[20, 8, 36, 32]])
    assert ds.skip_counts["size_mismatch"] == 0
    assert ds.load_original(0)[0].shape == (32, 16, 3)


def test_file_names_with_foreign_folders_find_the_flat_image(tmp_path):
    # exporters write "images/x.png", the annotating machine's absolute path or Windows separators while the
    # set ships the images flat; a file_name whose sub-folder really exists is still read from there
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        _png(tmp_path / name, 16, 16)
    names = ["images/a.png", "/home/annotator/export/b.png", "images\\c.png", "sub/d.png"]
    data = {"images": [{"id": i + 1, "file_name": n, "width": 16, "height": 16} for i, n in enumerate(names)],
            "annotations": [_ann(1, 3, 7, [2, 2, 8, 8])], "categories": CATS}
    (tmp_path / "i.json").write_text(json.dumps(data))
    ds = CocoDetection(ann_file=tmp_path / "i.json", image_dir=tmp_path, spec=tiny_spec(), train=False)
    assert ds.image_ids == [1, 2, 3, 4] and ds.skip_counts["missing_image"] == 0
    assert ds[2][1]["labels"].tolist() == [1]

def test_collate_pads_with_minus_one():
    img = torch.zeros((3, 8, 8), dtype=torch.uint8)
    batch = [(img, {"boxes": torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]), "labels": torch.tensor([2, 0]),
                    "image_id": 5}),
             (img, {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64), "image_id": 9})]
    images, t = collate(batch)
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.uint8
    assert t["boxes"].shape == (2, 2, 4) and t["labels"].tolist() == [[2, 0], [-1, -1]]
    assert t["boxes"][1].abs().sum() == 0 and t["image_ids"].tolist() == [5, 9]
    _, t = collate(batch[1:])
    assert t["boxes"].shape == (1, 1, 4) and t["labels"].tolist() == [[-1]]  # never a zero dim


def test_read_categories_sorted_by_id(tiny):
    assert read_categories(tiny[0]) == (("c3", "c7", "c12"), (3, 7, 12))


def test_read_categories_makes_repeated_names_unique(tmp_path):
    # a Roboflow-style export: placeholder parent category 0 named like the project, which is named like its class
    cats = [{"id": 0, "name": "fish", "supercategory": "none"}, {"id": 1, "name": "fish", "supercategory": "fish"},
            {"id": 2, "name": "shark", "supercategory": "fish"}]
    p = _write(tmp_path, json.dumps({"images": [], "annotations": [], "categories": cats}))
    assert read_categories(p) == (("fish_0", "fish_1", "shark"), (0, 1, 2))
    DetectorSpec(class_names=read_categories(p)[0], category_ids=(0, 1, 2))  # accepted: names are unique


def _write(tmp_path, text):
    p = tmp_path / "bad.json"
    p.write_text(text)
    return p


def _raises(p, img, msg, spec=None):
    with pytest.raises(DataError, match="^" + re.escape(msg) + "$"):
        CocoDetection(ann_file=p, image_dir=img, spec=spec or tiny_spec(), train=False)


def test_malformed_json_names_file_and_position(tmp_path):
    p = _write(tmp_path, '{"images": [}')
    _raises(p, tmp_path, f"annotation file {str(p)!r} is not valid JSON: Expecting value at line 1 column 13 "
                         "(char 12); fix or regenerate it")
    with pytest.raises(DataError, match="is not valid JSON"):
        read_categories(p)


def test_missing_file_and_missing_keys(tmp_path):
    _raises(tmp_path / "nope.json", tmp_path,
            f"annotation file {str(tmp_path / 'nope.json')!r} does not exist; check --data or the *-ann paths")
    p = _write(tmp_path, json.dumps({"images": [], "categories": CATS}))
    _raises(p, tmp_path, f"annotation file {str(p)!r} lacks key(s) ['annotations']; a COCO detection file needs "
                         "'images', 'annotations' and 'categories' (an empty 'annotations' list is fine)")
    p = _write(tmp_path, "[1, 2]")
    _raises(p, tmp_path, f"annotation file {str(p)!r} holds a JSON list; a COCO file is an object with 'images', "
                         "'annotations' and 'categories'")


def test_no_images_is_an_error_but_no_annotations_is_fine(tmp_path):
    p = _write(tmp_path, json.dumps({"images": [], "annotations": [], "categories": CATS}))
    _raises(p, tmp_path, f"annotation file {str(p)!r} lists no images; nothing to train or evaluate on")
    _png(tmp_path / "a.png", 8, 8)
    p = _write(tmp_path, json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
                                     "annotations": [], "categories": CATS}))
    ds = CocoDetection(ann_file=p, image_dir=tmp_path, spec=tiny_spec(), train=True)
    assert ds[0][1]["boxes"].shape == (0, 4)


def test_unknown_category_names_annotation_and_category(tiny, tmp_path):
    img = tiny[1]
    base = {"images": [{"id": 11, "file_name": "a.png", "width": 32, "height": 16}], "categories": CATS}
    p = _write(tmp_path, json.dumps({**base, "annotations": [_ann(9, 11, 99, [1, 1, 2, 2])]}))
    _raises(p, img, f"annotation file {str(p)!r}: annotation id 9 has category_id 99, which is not in the file's "
                    "'categories' [3, 7, 12]; fix the annotation or rebuild the spec from this file's categories")
    cats = [*CATS, {"id": 20, "name": "c20"}]
    p = _write(tmp_path, json.dumps({**base, "categories": cats, "annotations": [_ann(9, 11, 20, [1, 1, 2, 2])]}))
    _raises(p, img, f"annotation file {str(p)!r}: annotation id 9 has category_id 20, which is not in the spec's "
                    "category_ids [3, 7, 12]; fix the annotation or rebuild the spec from this file's categories")



def test_split_listing_only_its_categories_evaluates(tiny, tmp_path):
    # exporters that write per split only the categories used there (FiftyOne without classes=): no c7 here
    from retinaedge.runtime.cocoeval import coco_evaluate
    from retinaedge.runtime.detections import Detections

    img = tiny[1]
    cats = [{"id": 12, "name": "C12 "}, {"id": 3, "name": "c3"}]  # case and spaces aside, the spec's names
    p = _write(tmp_path, json.dumps({"images": [{"id": 11, "file_name": "a.png", "width": 32, "height": 16}],
                                     "categories": cats, "annotations": [_ann(1, 11, 3, [4, 2, 10, 6])]}))
    spec = tiny_spec()
    ds = CocoDetection(ann_file=p, image_dir=img, spec=spec, train=False)
    assert sorted(ds.coco.getCatIds()) == [3, 7, 12]
    m = coco_evaluate(ds.coco, {11: Detections.empty()}, spec.category_ids, spec.class_names)
    assert m["per_class_AP"] == {"c3": 0.0, "c7": None, "c12": None}


def test_category_named_differently_from_the_spec(tiny, tmp_path):
    # the same ids numbering other classes (splits exported with different category lists): fail, never relabel
    img = tiny[1]
    cats = [{"id": 3, "name": "c3"}, {"id": 7, "name": "c12"}]
    p = _write(tmp_path, json.dumps({"images": [{"id": 11, "file_name": "a.png", "width": 32, "height": 16}],
                                     "categories": cats, "annotations": []}))
    _raises(p, img, f"annotation file {str(p)!r}: category id 7 is 'c12' here but 'c7' in the spec; the splits "
                    "number their categories differently (export every split with the same category list) or the "
                    "model was trained on another dataset")

def test_structural_errors_name_the_id(tiny, tmp_path):
    img = tiny[1]
    im = {"id": 11, "file_name": "a.png", "width": 32, "height": 16}
    p = _write(tmp_path, json.dumps({"images": [im], "categories": CATS,
                                     "annotations": [_ann(4, 11, 3, [1, 1, "x", 2])]}))
    _raises(p, img, f"annotation file {str(p)!r}: annotation id 4 has bbox [1, 1, 'x', 2]; expected [x, y, w, h] "
                    "of 4 finite numbers")
    p = _write(tmp_path, json.dumps({"images": [im], "categories": CATS,
                                     "annotations": [_ann(4, 12, 3, [1, 1, 2, 2])]}))
    _raises(p, img, f"annotation file {str(p)!r}: annotation id 4 refers to image id 12, which is not in 'images'")
    p = _write(tmp_path, json.dumps({"images": [im, im], "categories": CATS, "annotations": []}))
    _raises(p, img, f"annotation file {str(p)!r}: image id 11 appears more than once")
    p = _write(tmp_path, json.dumps({"images": [{"id": 11, "file_name": "a.png"}], "categories": CATS,
                                     "annotations": []}))
    _raises(p, img, f"annotation file {str(p)!r}: image id 11 lacks ['width', 'height']; every image entry needs "
                    "id, file_name, width and height")
    p = _write(tmp_path, json.dumps({"images": [im], "categories": [], "annotations": []}))
    _raises(p, img, f"annotation file {str(p)!r} has no categories; a detector needs at least one class")


def test_all_images_missing_is_an_error(tmp_path):
    p = _write(tmp_path, json.dumps({"images": [{"id": 5, "file_name": "x.png", "width": 8, "height": 8}],
                                     "annotations": [], "categories": CATS}))
    _raises(p, tmp_path / "nowhere", f"none of the 1 images listed in {str(p)!r} exists under "
                                     f"{str(tmp_path / 'nowhere')!r} (first: {str(tmp_path / 'nowhere' / 'x.png')!r}, "
                                     "image id 5); check the image folder")


@pytest.fixture
def with_corrupt(tmp_path):
    images, anns = [], []
    for i in range(7):
        name = f"{i}.png"
        if i == 3:
            (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        else:
            _png(tmp_path / name, 16 + i, 16, colour=(10 * i, 0, 0))
        images.append({"id": 100 + i, "file_name": name, "width": 16 + i, "height": 16})
        anns.append(_ann(i + 1, 100 + i, 3, [1, 1, 4, 4]))
    p = tmp_path / "i.json"
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return p, tmp_path


def test_corrupt_image_is_skipped_in_process(with_corrupt):
    p, img = with_corrupt
    ds = CocoDetection(ann_file=p, image_dir=img, spec=tiny_spec(), train=False)
    _, t = ds[3]
    assert t["image_id"] == 104  # the next decodable sample
    assert ds.skip_counts["corrupt_image"] == 1
    with pytest.raises(DataError, match=re.escape(f"image id 103: image {str(img / '3.png')!r} cannot be decoded")):
        ds.load_original(3)
    # a whole pass: the corrupt image's slot serves the next decodable one; it is counted once
    assert [ds[i][1]["image_id"] for i in range(len(ds))] == [100, 101, 102, 104, 104, 105, 106]
    assert ds.skip_counts["corrupt_image"] == 1


def test_two_worker_loader_survives_a_corrupt_image(with_corrupt):
    p, img = with_corrupt
    ds = CocoDetection(ann_file=p, image_dir=img, spec=tiny_spec(), train=True)
    loader = make_loader(ds, batch_size=2, shuffle=True, workers=2, seed=0)
    for _epoch in range(2):
        seen = []
        for images, t in loader:
            assert images.shape[1:] == (3, 64, 64)
            assert (t["labels"][t["labels"] >= 0] == 0).all()
            seen += t["image_ids"].tolist()
        assert len(seen) == 7 and 103 not in seen
    assert ds.skip_counts["corrupt_image"] == 1  # counted once, seen by the main process


def test_loader_is_deterministic_by_seed(tmp_path):
    write_synthetic_coco(tmp_path, train=6, val=0, size=48, seed=0)
    names, ids = read_categories(tmp_path / "annotations" / "instances_train.json")
    assert names == ("circle", "square", "triangle", "star", "cross") and ids == (1, 3, 7, 12, 20)
    spec = tiny_spec(ids).replace(class_names=names)

    def run(seed):
        ds = CocoDetection(ann_file=tmp_path / "annotations" / "instances_train.json", image_dir=tmp_path / "train",
                           spec=spec, train=True)
        return list(make_loader(ds, batch_size=3, shuffle=True, workers=0, seed=seed))

    a, b, c = run(1), run(1), run(2)
    for (ia, ta), (ib, tb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
    assert any(not torch.equal(ia, ic) for (ia, _), (ic, _) in zip(a, c))
    for _, t in a:
        real = t["labels"] >= 0
        assert real.any() and (t["labels"][real] < 5).all()
        boxes = t["boxes"][real]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes >= 0).all() and (boxes <= 64).all()
