"""`efficient_nms` against NVIDIA's golden vector, torchvision's NMS, and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms, nms

from retinaedge.runtime import nms as nms_mod
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.nms import efficient_nms

torch.set_num_threads(1)

# NVIDIA's EfficientNMSPlugin_PluginGoldenIO.json (TensorRT commit c94f85b3), decoded from its npy payloads
GOLD_BOXES = np.array([[0, 0, 1, 1], [0, .1, 1, 1.1], [0, -.1, 1, .9], [0, 10, 1, 11], [0, 10.1, 1, 11.1],
                       [0, 100, 1, 101]], np.float32)[None]
GOLD_SCORES = np.array([[.21, .22], [.32, .13], [.30, .16], [.74, .06], [.10, .93], [.77, .64]], np.float32)[None]
GOLD_KW = dict(score_threshold=0.0, iou_threshold=0.5, max_output_boxes=6, background_class=-1,
               score_activation=False, box_coding=0)


def test_golden_vector_per_class():
    num, boxes, scores, classes = efficient_nms(GOLD_BOXES, GOLD_SCORES, **GOLD_KW)
    assert num.dtype == np.int32 and classes.dtype == np.int32 and boxes.dtype == np.float32
    assert num.tolist() == [[6]]
    # the golden detection_boxes: anchors [4, 5, 3, 5, 1, 0]
    np.testing.assert_array_equal(boxes[0], GOLD_BOXES[0, [4, 5, 3, 5, 1, 0]])
    np.testing.assert_array_equal(scores[0], GOLD_SCORES[0, [4, 5, 3, 5, 1, 0], [1, 0, 0, 1, 0, 1]])
    assert classes[0].tolist() == [1, 0, 0, 1, 0, 1]


def test_golden_vector_class_agnostic():
    num, boxes, scores, classes = efficient_nms(GOLD_BOXES, GOLD_SCORES, class_agnostic=True, **GOLD_KW)
    assert num.tolist() == [[3]]
    np.testing.assert_array_equal(boxes[0, :3], GOLD_BOXES[0, [4, 5, 1]])
    np.testing.assert_array_equal(scores[0, :3], [GOLD_SCORES[0, 4, 1], GOLD_SCORES[0, 5, 0], GOLD_SCORES[0, 1, 0]])
    assert classes[0, :3].tolist() == [1, 0, 0]
    # unused slots: zeros with class 0 (not -1)
    assert not boxes[0, 3:].any() and not scores[0, 3:].any() and classes[0, 3:].tolist() == [0, 0, 0]


# ---- against torchvision ---------------------------------------------------------------------------
def _torchvision_reference(boxes, scores, thr, iou, k, agnostic):
    """Candidates are (anchor, class) pairs in flat e = n*C + c order; torchvision sorts stably by score."""
    _, c = scores.shape
    e = np.flatnonzero(scores.reshape(-1) >= thr)
    n_idx, c_idx = e // c, e % c
    b = torch.from_numpy(boxes[n_idx].astype(np.float64))
    b = torch.cat([torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])], 1)  # plugin reorders
    s = torch.from_numpy(scores.reshape(-1)[e].astype(np.float64))
    keep = nms(b, s, iou) if agnostic else batched_nms(b, s, torch.from_numpy(c_idx), iou)
    keep = keep[:k].numpy()
    return n_idx[keep], c_idx[keep], scores.reshape(-1)[e][keep]


def _random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(2, 30, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _check_against_torchvision(boxes, scores, *, thr, iou, k, agnostic):
    num, out_boxes, out_scores, out_classes = efficient_nms(
        boxes[None], scores[None], score_threshold=thr, iou_threshold=iou, max_output_boxes=k,
        score_activation=False, class_agnostic=agnostic, box_coding=0)
    n_idx, c_idx, s = _torchvision_reference(boxes, scores, thr, iou, k, agnostic)
    m = int(num[0, 0])
    assert m == len(n_idx)
    np.testing.assert_array_equal(out_boxes[0, :m], boxes[n_idx])
    np.testing.assert_array_equal(out_classes[0, :m], c_idx)
    np.testing.assert_array_equal(out_scores[0, :m], s)
    assert not out_boxes[0, m:].any() and not out_classes[0, m:].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("k", [5, 100])
def test_random_boxes_match_torchvision(seed, agnostic, k):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 300)
    scores = rng.uniform(0, 1, (300, 3)).astype(np.float32)
    _check_against_torchvision(boxes, scores, thr=0.3, iou=0.5, k=k, agnostic=agnostic)


def test_many_candidates_cross_windows_and_match_torchvision():
    # > 256 candidates per class and K large: several NMS windows, and the class-by-class path
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, 1500, size=400.0)
    scores = rng.uniform(0, 1, (1500, 2)).astype(np.float32)
    _check_against_torchvision(boxes, scores, thr=0.01, iou=0.4, k=1200, agnostic=False)
    _check_against_torchvision(boxes, scores, thr=0.01, iou=0.4, k=1200, agnostic=True)


@pytest.mark.parametrize("class_by_class", [False, True])
@pytest.mark.parametrize("rounds", [0, 1, 6])
def test_all_nms_paths_agree(monkeypatch, class_by_class, rounds):
    """Class by class vs one class-masked matrix; vectorised settling rounds vs the ordered walk."""
    rng = np.random.default_rng(4)
    boxes = _random_boxes(rng, 400, size=150.0)
    scores = rng.uniform(0, 1, (400, 4)).astype(np.float32)
    monkeypatch.setattr(nms_mod, "_class_by_class_is_cheaper", lambda classes, p: class_by_class)
    monkeypatch.setattr(nms_mod, "_ROUNDS", rounds)
    _check_against_torchvision(boxes, scores, thr=0.2, iou=0.5, k=150, agnostic=False)
    _check_against_torchvision(boxes, scores, thr=0.2, iou=0.5, k=150, agnostic=True)


def test_tied_scores_keep_ascending_flat_index():
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 60, size=60.0)
    scores = rng.choice(np.array([0.2, 0.5, 0.8], np.float32), size=(60, 3))
    num, out_boxes, out_scores, out_classes = efficient_nms(
        boxes[None], scores[None], score_threshold=0.1, iou_threshold=0.5, max_output_boxes=200,
        score_activation=False, box_coding=0)
    _check_against_torchvision(boxes, scores, thr=0.1, iou=0.5, k=200, agnostic=False)
    _check_against_torchvision(boxes, scores, thr=0.1, iou=0.5, k=200, agnostic=True)
    # within one score level, the flat index e = n*C + c increases
    m = int(num[0, 0])
    n_of = {tuple(b): i for i, b in enumerate(boxes.tolist())}
    e = [n_of[tuple(b)] * 3 + c for b, c in zip(out_boxes[0, :m].tolist(), out_classes[0, :m].tolist(), strict=True)]
    for level in (0.8, 0.5, 0.2):
        sel = [x for x, s in zip(e, out_scores[0, :m].tolist(), strict=True) if math.isclose(s, level, rel_tol=1e-6)]
        assert sel == sorted(sel)


def test_identical_boxes_keep_only_the_best_per_class():
    boxes = np.tile(np.array([[10, 10, 20, 20]], np.float32), (5, 1))
    scores = np.array([[.5, .1], [.9, .2], [.7, .3], [.9, .05], [.1, .9]], np.float32)
    num, _, out_scores, out_classes = efficient_nms(
        boxes[None], scores[None], score_threshold=0.01, iou_threshold=0.99, max_output_boxes=5,
        score_activation=False, box_coding=0)
    # class 0: tie at .9 between anchors 1 and 3 -> anchor 1 (lower e); class 1: anchor 4 (.9)
    assert num.tolist() == [[2]]
    np.testing.assert_allclose(out_scores[0, :2], [.9, .9])
    assert out_classes[0, :2].tolist() == [0, 1]  # e = 1*2+0 = 2 before e = 4*2+1 = 9
    _check_against_torchvision(boxes, scores, thr=0.01, iou=0.99, k=5, agnostic=True)


def test_flipped_corners_are_reordered_for_iou_but_written_as_given():
    rng = np.random.default_rng(6)
    boxes = _random_boxes(rng, 80, size=50.0)
    flip = rng.random(80) < 0.5
    boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]  # x2 < x1 and y2 < y1
    flip_x = rng.random(80) < 0.3
    boxes[flip_x] = boxes[flip_x][:, [2, 1, 0, 3]]
    scores = rng.uniform(0, 1, (80, 2)).astype(np.float32)
    _check_against_torchvision(boxes, scores, thr=0.2, iou=0.5, k=50, agnostic=False)


def test_zero_area_boxes_never_suppress_or_get_suppressed():
    boxes = np.array([[5, 5, 5, 15], [5, 5, 5, 15], [0, 0, 10, 10], [3, 3, 3, 3]], np.float32)
    scores = np.array([[.9], [.8], [.7], [.6]], np.float32)
    num, out_boxes, _, _ = efficient_nms(boxes[None], scores[None], score_threshold=0.1, iou_threshold=0.1,
                                         max_output_boxes=4, score_activation=False, box_coding=0)
    assert num.tolist() == [[4]]  # area 0 -> IoU 0 with everything, even its identical twin
    np.testing.assert_array_equal(out_boxes[0], boxes)
    _check_against_torchvision(boxes, scores, thr=0.1, iou=0.1, k=4, agnostic=True)


def test_iou_exactly_at_threshold_suppresses():
    # IoU = 1/3 exactly in float32; the plugin suppresses at IoU >= threshold (torchvision: >)
    boxes = np.array([[0, 0, 2, 1], [1, 0, 3, 1]], np.float32)
    scores = np.array([[.9], [.8]], np.float32)
    kw = dict(score_threshold=0.1, max_output_boxes=2, score_activation=False, box_coding=0)
    num, *_ = efficient_nms(boxes[None], scores[None], iou_threshold=float(np.float32(1 / 3)), **kw)
    assert num.tolist() == [[1]]
    num, *_ = efficient_nms(boxes[None], scores[None], iou_threshold=float(np.nextafter(np.float32(1 / 3), 1)), **kw)
    assert num.tolist() == [[2]]


def test_empty_inputs():
    for n in (0, 5):
        boxes = np.zeros((2, n, 4), np.float32)
        scores = np.full((2, n, 3), -10.0, np.float32)  # nothing above threshold
        num, b, s, c = efficient_nms(boxes, scores, score_threshold=0.05, iou_threshold=0.5, max_output_boxes=7)
        assert num.shape == (2, 1) and not num.any()
        assert b.shape == (2, 7, 4) and s.shape == (2, 7) and c.shape == (2, 7)
        assert not b.any() and not s.any() and not c.any()
    num, *_ = efficient_nms(np.zeros((0, 4, 4), np.float32), np.zeros((0, 4, 2), np.float32),
                            score_threshold=0.05, iou_threshold=0.5, max_output_boxes=3)
    assert num.shape == (0, 1)


# ---- pool, thresholds, activation ------------------------------------------------------------------
def test_pool_is_capped_at_5000_candidates():
    # 5000 identical high-score boxes fill the pool; 3 separate lower-score boxes are out of it
    n = 5003
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (n, 1))
    boxes[5000:] = [[100, 100, 110, 110], [200, 200, 210, 210], [300, 300, 310, 310]]
    scores = np.linspace(0.99, 0.5, n, dtype=np.float32)[:, None]
    kw = dict(score_threshold=0.1, iou_threshold=0.5, max_output_boxes=10, score_activation=False, box_coding=0)
    num, *_ = efficient_nms(boxes[None], scores[None], **kw)
    assert nms_mod.DEFAULT_POOL_SIZE == 5000 and num.tolist() == [[1]]
    num, *_ = efficient_nms(boxes[None], scores[None], pool_size=n, **kw)
    assert num.tolist() == [[4]]
    num, *_ = efficient_nms(boxes[None], scores[None], pool_size=2000, **kw)  # Jetson TX1/TX2 value
    assert num.tolist() == [[1]]


def test_threshold_moves_to_logit_space_with_ge_selection():
    thr = 0.05
    t = np.float32(np.log(np.float32(thr) / (np.float32(1) - np.float32(thr))))
    below = np.nextafter(t, np.float32(-np.inf))
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], np.float32)
    logits = np.array([[t], [below], [np.float32(2.0)]], np.float32)
    num, _, scores, _ = efficient_nms(boxes[None], logits[None], score_threshold=thr, iou_threshold=0.5,
                                      max_output_boxes=3, box_coding=0)
    assert num.tolist() == [[2]]  # logit exactly at the threshold is selected (>=), one ulp below is not
    np.testing.assert_allclose(scores[0, :2], [1 / (1 + math.exp(-2.0)), thr], rtol=1e-6)


def test_dense_kernel_quirk_below_0_007():
    """Threshold < 0.007 (probability space): failing entries stay in the pool at -32768 and fill the output
    with score 0 when fewer than K real boxes survive; >= 0.007 returns only the real ones."""
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], np.float32)
    logits = np.array([[3.0, -20.0], [-20.0, -20.0], [-20.0, -20.0]], np.float32)
    kw = dict(iou_threshold=0.5, max_output_boxes=4, box_coding=0)
    num, b, s, c = efficient_nms(boxes[None], logits[None], score_threshold=0.01, **kw)
    assert num.tolist() == [[1]]
    num, b, s, c = efficient_nms(boxes[None], logits[None], score_threshold=0.005, **kw)
    assert num.tolist() == [[4]]
    np.testing.assert_allclose(s[0], [1 / (1 + math.exp(-3.0)), 0, 0, 0], atol=1e-7)
    # fillers in ascending e: e=1 (anchor 0, class 1), e=2 (anchor 1, class 0), e=3 (anchor 1, class 1)
    assert c[0].tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(b[0], boxes[[0, 0, 1, 1]])
    # fillers go through NMS like any box: anchor 1 now equals anchor 0, so (1, c) is suppressed by (0, c)
    boxes2 = boxes.copy()
    boxes2[1] = boxes2[0]
    num, b, s, c = efficient_nms(boxes2[None], logits[None], score_threshold=0.005, **kw)
    assert c[0].tolist() == [0, 1, 0, 1] and num.tolist() == [[4]]
    np.testing.assert_array_equal(b[0], boxes2[[0, 0, 2, 2]])


def test_background_class_is_never_selected():
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
    logits = np.array([[5.0, 1.0], [4.0, 2.0]], np.float32)
    num, _, _, c = efficient_nms(boxes[None], logits[None], score_threshold=0.05, iou_threshold=0.5,
                                 max_output_boxes=4, background_class=0, box_coding=0)
    assert num.tolist() == [[2]] and c[0, :2].tolist() == [1, 1]
    num, *_ = efficient_nms(boxes[None], logits[None], score_threshold=0.05, iou_threshold=0.5,
                            max_output_boxes=4, background_class=7, box_coding=0)  # out of range: disabled
    assert num.tolist() == [[4]]


def test_nan_never_selected_and_inf_sorts_first():
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], np.float32)
    logits = np.array([[np.nan], [np.inf], [1.0]], np.float32)
    num, b, s, _ = efficient_nms(boxes[None], logits[None], score_threshold=0.05, iou_threshold=0.5,
                                 max_output_boxes=3, box_coding=0)
    assert num.tolist() == [[2]]
    np.testing.assert_array_equal(b[0, :2], boxes[[1, 2]])
    assert s[0, 0] == 1.0


# ---- decode ----------------------------------------------------------------------------------------
def test_center_size_decode_with_anchors_by_hand():
    anchors = np.array([[[10, 20, 4, 8], [50, 50, 10, 10]]], np.float32)  # (cx, cy, w, h)
    deltas = np.array([[[0.5, -0.25, math.log(2), 0.0], [0, 0, 10.0, 0]]], np.float32)
    logits = np.array([[[2.0], [1.0]]], np.float32)
    num, b, _, _ = efficient_nms(deltas, logits, anchors, score_threshold=0.05, iou_threshold=0.5,
                                 max_output_boxes=2)
    assert num.tolist() == [[2]]
    # p = (0.5*4+10, -0.25*8+20) = (12, 18); s = (4*2, 8*1) = (8, 8) -> (8, 14, 16, 22)
    np.testing.assert_allclose(b[0, 0], [8, 14, 16, 22], rtol=1e-6)
    # no clamp inside the plugin: dw = 10 -> width 10 * e^10
    w = 10 * math.exp(10)
    np.testing.assert_allclose(b[0, 1], [50 - w / 2, 45, 50 + w / 2, 55], rtol=1e-5)


def test_center_size_without_anchors_and_batched_anchors():
    boxes = np.array([[[10, 10, 4, 6]], [[0, 0, 2, 2]]], np.float32)  # (cx, cy, w, h), B=2
    logits = np.array([[[1.0]], [[1.0]]], np.float32)
    _, b, _, _ = efficient_nms(boxes, logits, score_threshold=0.05, iou_threshold=0.5, max_output_boxes=1)
    np.testing.assert_allclose(b[:, 0], [[8, 7, 12, 13], [-1, -1, 1, 1]])
    anchors = np.array([[[0, 0, 1, 1]], [[100, 100, 1, 1]]], np.float32)  # (B, N, 4): one per image
    deltas = np.zeros((2, 1, 4), np.float32)
    _, b, _, _ = efficient_nms(deltas, logits, anchors, score_threshold=0.05, iou_threshold=0.5,
                               max_output_boxes=1)
    np.testing.assert_allclose(b[:, 0], [[-.5, -.5, .5, .5], [99.5, 99.5, 100.5, 100.5]])


def test_corner_coding_with_anchors_adds_reordered_corners():
    anchors = np.array([[[10, 10, 0, 0]]], np.float32)  # flipped: reordered to (0, 0, 10, 10)
    deltas = np.array([[[1, 2, -1, -2]]], np.float32)
    _, b, _, _ = efficient_nms(deltas, np.ones((1, 1, 1), np.float32), anchors, score_threshold=0.05,
                               iou_threshold=0.5, max_output_boxes=1, box_coding=0)
    # delta reordered to (-1, -2, 1, 2); sum (-1, -2, 11, 12)
    np.testing.assert_allclose(b[0, 0], [-1, -2, 11, 12])


def test_per_class_boxes_pick_the_candidates_class_box():
    boxes = np.zeros((1, 1, 2, 4), np.float32)
    boxes[0, 0, 0] = [0, 0, 10, 10]
    boxes[0, 0, 1] = [50, 50, 60, 60]
    logits = np.array([[[1.0, 2.0]]], np.float32)
    num, b, _, c = efficient_nms(boxes, logits, score_threshold=0.05, iou_threshold=0.5, max_output_boxes=2,
                                 box_coding=0)
    assert num.tolist() == [[2]] and c[0].tolist() == [1, 0]
    np.testing.assert_array_equal(b[0], [[50, 50, 60, 60], [0, 0, 10, 10]])


def test_batch_of_identical_images_gives_identical_results_and_mixed_batch_is_per_image():
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 200)[None]
    logits = rng.normal(-2, 2, (1, 200, 3)).astype(np.float32)
    other = rng.normal(-2, 2, (1, 200, 3)).astype(np.float32)
    kw = dict(score_threshold=0.3, iou_threshold=0.5, max_output_boxes=20, box_coding=0)
    single = efficient_nms(boxes, logits, **kw)
    four = efficient_nms(np.repeat(boxes, 4, 0), np.repeat(logits, 4, 0), **kw)
    for a, b in zip(single, four, strict=True):
        np.testing.assert_array_equal(np.repeat(a, 4, 0), b)
    mixed = efficient_nms(np.repeat(boxes, 2, 0), np.concatenate([logits, other]), **kw)
    alone = efficient_nms(boxes, other, **kw)
    for a, s, b in zip(single, alone, mixed, strict=True):
        np.testing.assert_array_equal(np.concatenate([a, s]), b)


def test_float16_inputs_give_float16_outputs_and_the_same_selection():
    rng = np.random.default_rng(8)
    boxes = _random_boxes(rng, 100)[None]
    logits = rng.normal(-1, 2, (1, 100, 2)).astype(np.float32)
    kw = dict(score_threshold=0.3, iou_threshold=0.5, max_output_boxes=30, box_coding=0)
    n32, b32, s32, _ = efficient_nms(boxes, logits, **kw)
    n16, b16, s16, _ = efficient_nms(boxes.astype(np.float16), logits.astype(np.float16), **kw)
    assert b16.dtype == np.float16 and s16.dtype == np.float16
    assert abs(int(n16[0, 0]) - int(n32[0, 0])) <= 1
    m = min(int(n16[0, 0]), int(n32[0, 0]), 10)
    np.testing.assert_allclose(b16[0, :m], b32[0, :m], rtol=2e-3, atol=0.1)
    np.testing.assert_allclose(s16[0, :m], s32[0, :m], atol=2e-3)


# ---- parameter checks ------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "needle"), [
    ({"iou_threshold": 0.0}, "iou_threshold=0.0"),
    ({"score_threshold": -0.1}, "score_threshold=-0.1"),
    ({"max_output_boxes": 0}, "max_output_boxes=0"),
    ({"max_output_boxes": 2.5}, "max_output_boxes=2.5"),
    ({"box_coding": 2}, "box_coding=2"),
    ({"pool_size": 0}, "pool_size=0"),
])
def test_parameter_errors_name_the_value(kw, needle):
    args = dict(score_threshold=0.05, iou_threshold=0.5, max_output_boxes=10)
    args.update(kw)
    with pytest.raises(InputError, match=needle) as e:
        efficient_nms(np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 3), np.float32), **args)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("boxes", "scores", "anchors", "needle"), [
    ((1, 2, 4), (1, 2), None, "scores shape"),
    ((1, 3, 4), (1, 2, 3), None, "boxes shape"),
    ((1, 2, 2, 4), (1, 2, 3), None, "boxes shape"),
    ((1, 2, 4), (1, 2, 3), (1, 3, 4), "anchors shape"),
    ((2, 2, 4), (2, 2, 3), (3, 2, 4), "anchors shape"),
])
def test_shape_errors(boxes, scores, anchors, needle):
    with pytest.raises(InputError, match=needle):
        efficient_nms(np.zeros(boxes, np.float32), np.zeros(scores, np.float32),
                      None if anchors is None else np.zeros(anchors, np.float32),
                      score_threshold=0.05, iou_threshold=0.5, max_output_boxes=10)


def test_integer_scores_are_refused():
    with pytest.raises(InputError, match="dtype int64"):
        efficient_nms(np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 3), np.int64),
                      score_threshold=0.05, iou_threshold=0.5, max_output_boxes=10)
