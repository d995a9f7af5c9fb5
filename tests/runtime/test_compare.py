import numpy as np
import pytest

from retinaedge.runtime.compare import (
    Agreement,
    box_iou,
    compare_raw,
    detections_consistent,
    match_detections,
)
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.runner import Runner


class RawRunner(Runner):
    """Raw outputs that are a fixed function of the input: cls = f(x) * scale + offset."""

    backend = "ort"
    precision = "fp32"

    def __init__(self, name, spec, *, offset=0.0, scale=1.0, outputs=("cls_logits", "box_deltas")):
        super().__init__()
        self.spec, self.name = spec, name
        self.offset, self.scale, self.outputs = offset, scale, outputs
        self.activations = 0

    def activate_impl(self):
        self.activations += 1

    def deactivate_impl(self):
        pass

    def infer_impl(self, batch):
        n, k = self.spec.num_anchors, self.spec.num_classes
        flat = batch.reshape(batch.shape[0], -1).astype(np.float32)[:, : n * k] / 255.0 + 0.5
        cls = flat.reshape(-1, n, k) * self.scale + self.offset
        out = {"cls_logits": cls, "box_deltas": np.repeat(cls[..., :1], 4, axis=-1) * 0 + 1.0}
        return {o: out[o] for o in self.outputs}


@pytest.fixture
def batches(rng):
    return [rng.integers(0, 256, (2, 3, 64, 64), dtype=np.uint8) for _ in range(2)]


def test_compare_raw_reports_exact_errors_and_min_tolerances(batches, spec):
    ref, cand = RawRunner("ref", spec), RawRunner("cand", spec, scale=1.01)
    res = compare_raw(ref, cand, batches, atol=1e-3, rtol=1e-3)
    # hand-computed: |c - r| = 0.01 * r; relative to the reference (second runner) it is exactly 0.01
    r = np.concatenate([ref.infer_impl(b)["cls_logits"].ravel() for b in batches]).astype(np.float64)
    cls = {o.name: o for o in res.outputs}["cls_logits"]
    assert cls.max_abs == pytest.approx(0.01 * r.max(), rel=1e-4)
    assert cls.mean_abs == pytest.approx(0.01 * r.mean(), rel=1e-4)
    assert cls.median_abs == pytest.approx(0.01 * np.median(r), rel=1e-4)
    assert cls.p99_abs == pytest.approx(0.01 * np.quantile(r, 0.99), rel=1e-4)
    assert cls.min_atol == pytest.approx(cls.max_abs, rel=1e-6)
    assert cls.min_rtol == pytest.approx(0.01, rel=1e-3)  # against the candidate it would be 0.01/1.01
    assert not cls.passed and not res.passed
    boxes = {o.name: o for o in res.outputs}["box_deltas"]
    assert boxes.max_abs == 0.0 and boxes.passed
    assert res.max_abs == cls.max_abs


def test_compare_raw_passes_when_either_tolerance_holds(batches, spec):
    ref, cand = RawRunner("ref", spec), RawRunner("cand", spec, scale=1.01)
    assert compare_raw(ref, cand, batches, atol=1e-3, rtol=0.011).passed  # rtol alone suffices
    assert compare_raw(ref, cand, batches, atol=0.02, rtol=1e-6).passed  # atol alone suffices


def test_compare_raw_keeps_a_caller_activated_runner_active(batches, spec):
    ref, cand = RawRunner("ref", spec), RawRunner("cand", spec)
    ref.activate()
    res = compare_raw(ref, cand, batches)
    assert res.passed and res.max_abs == 0.0
    assert ref.is_active and not cand.is_active


def test_compare_raw_names_missing_outputs(batches, spec):
    with pytest.raises(InputError, match="raw=True"):
        compare_raw(RawRunner("ref", spec), RawRunner("cand", spec, outputs=("cls_logits",)), batches)
    with pytest.raises(InputError, match="0 batches"):
        compare_raw(RawRunner("ref", spec), RawRunner("cand", spec), [])


def test_box_iou_matches_torchvision(rng):
    ops = pytest.importorskip("torchvision.ops")
    import torch

    a = np.sort(rng.uniform(0, 50, (7, 4)).reshape(7, 2, 2), axis=1).transpose(0, 2, 1).reshape(7, 4)
    a = a[:, [0, 2, 1, 3]]
    b = a[::-1] + rng.uniform(-3, 3, a.shape)
    expected = ops.box_iou(torch.from_numpy(a), torch.from_numpy(np.ascontiguousarray(b))).numpy()
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-6, atol=1e-9)


def test_box_iou_degenerate_boxes_are_zero():
    iou = box_iou(np.array([[0, 0, 0, 10]]), np.array([[0, 0, 0, 10]]))
    assert iou[0, 0] == 0.0


def d(boxes, scores, classes):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(classes, np.int64))


A = d([[0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]], [0.9, 0.8, 0.7], [0, 1, 0])


def test_matching_ignores_order():
    perm = [2, 0, 1]
    b = d(A.boxes[perm], A.scores[perm], A.classes[perm])
    m = match_detections(A, b)
    assert (m.matched, m.count_a, m.count_b, m.agreement) == (3, 3, 3, 1.0)
    assert m.mean_iou == 1.0 and m.max_score_diff == 0.0


def test_matching_needs_the_same_class_and_enough_iou():
    other_class = d(A.boxes, A.scores, [1, 0, 1])
    assert match_detections(A, other_class).matched == 0
    # shift by 4 px: IoU = 6*10 / (2*100 - 60) = 0.4286 < 0.5, but >= 0.4
    shifted = d(A.boxes + np.array([4, 0, 4, 0]), A.scores, A.classes)
    assert match_detections(A, shifted, 0.5).matched == 0
    m = match_detections(A, shifted, 0.4)
    assert m.matched == 3 and m.mean_iou == pytest.approx(60 / 140)


def test_agreement_is_matched_over_the_larger_set():
    b = d(A.boxes[:2], A.scores[:2], A.classes[:2])
    m = match_detections(A, b)
    assert m.agreement == pytest.approx(2 / 3)
    assert match_detections(Detections.empty(), Detections.empty()).agreement == 1.0
    assert match_detections(A, Detections.empty()).agreement == 0.0


def test_identical_degenerate_boxes_match():
    """Boxes entirely in the letterbox padding clip to zero area: the same box on both sides still matches."""
    a = d([[0, 0, 10, 10], [64, 5, 64, 9]], [0.9, 0.4], [0, 1])
    assert match_detections(a, a, 0.9).matched == 2
    assert detections_consistent(a, a)
    assert match_detections(a, d([[0, 0, 10, 10], [64, 5, 64.0001, 9]], [0.9, 0.4], [0, 1])).matched == 2
    assert match_detections(a, d([[0, 0, 10, 10], [64, 5, 64, 8]], [0.9, 0.4], [0, 1])).matched == 1


def test_one_to_one_matching_two_candidates_for_one_box():
    a = d([[0, 0, 10, 10], [0, 0, 10, 11]], [0.9, 0.8], [0, 0])
    b = d([[0, 0, 10, 10]], [0.9], [0])
    m = match_detections(a, b)
    assert m.matched == 1 and m.agreement == 0.5


def test_min_score_and_pooling():
    b = d(A.boxes, [0.9, 0.8, 0.1], A.classes)
    m = match_detections(A, b, min_score=0.5)
    assert (m.matched, m.count_a, m.count_b) == (2, 3, 2)
    pooled = m + Agreement(1, 1, 2, 0.5, 0.2)
    assert (pooled.matched, pooled.count_a, pooled.count_b) == (3, 4, 4)
    assert pooled.mean_iou == pytest.approx((2 * 1.0 + 0.5) / 3) and pooled.max_score_diff == 0.2
    with pytest.raises(InputError, match="iou=0"):
        match_detections(A, b, iou=0)


def test_detections_consistent_tolerates_noise_not_changes():
    noisy = d(A.boxes + 0.01, A.scores + 1e-4, A.classes)
    assert detections_consistent(A, noisy)
    assert not detections_consistent(A, d(A.boxes, A.scores + 0.1, A.classes))
    assert not detections_consistent(A, d(A.boxes[:2], A.scores[:2], A.classes[:2]))
    # a detection hovering at the score cut may appear on one side only
    edge = d([[0, 0, 10, 10], [60, 60, 70, 70]], [0.9, 0.301], [0, 0])
    assert detections_consistent(edge, d([[0, 0, 10, 10]], [0.9], [0]), min_score=0.3)
