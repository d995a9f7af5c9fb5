"""Torch post-processing against torchvision RetinaNet's ``postprocess_detections`` on the same raw outputs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet as TvRetinaNet
from torchvision.ops import nms

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.train.anchors import anchors_for, level_slices
from retinaedge.train.postprocess import postprocess

SPEC = DetectorSpec(class_names=("a", "b", "c", "d"), input_height=64, input_width=96,
                    anchors=AnchorSpec(strides=(8, 16, 32), sizes=(16.0, 32.0, 64.0)))


def _reference(outputs: dict[str, Tensor], spec: DetectorSpec, *, score: float, iou: float, topk: int,
               max_det: int) -> list[dict[str, Tensor]]:
    body = nn.Identity()
    body.out_channels = 8  # type: ignore[assignment]
    tv = TvRetinaNet(body, num_classes=spec.num_classes, head=nn.Identity(), score_thresh=score, nms_thresh=iou,
                     detections_per_img=max_det, topk_candidates=topk)
    slices = level_slices(spec)
    head = {"cls_logits": [outputs["cls_logits"][:, s] for s in slices],
            "bbox_regression": [outputs["box_deltas"][:, s] for s in slices]}
    anchors = anchors_for(spec)
    per_image = [[anchors[s] for s in slices]] * outputs["cls_logits"].shape[0]
    return tv.postprocess_detections(head, per_image, [(spec.input_height, spec.input_width)] * len(per_image))


def _outputs(b: int, spec: DetectorSpec = SPEC, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"cls_logits": torch.randn(b, spec.num_anchors, spec.num_classes, generator=g) * 2 - 2,
            "box_deltas": torch.randn(b, spec.num_anchors, 4, generator=g) * 0.5}


def _assert_same(ours: list[dict[str, Tensor]], ref: list[dict[str, Tensor]]) -> None:
    assert len(ours) == len(ref)
    for i, (o, r) in enumerate(zip(ours, ref, strict=True)):
        assert o["labels"].dtype == torch.int64
        assert o["boxes"].shape[0] > 0, f"image {i}: nothing to compare"
        torch.testing.assert_close(o["scores"], r["scores"], msg=f"image {i}")
        torch.testing.assert_close(o["labels"], r["labels"], msg=f"image {i}")
        torch.testing.assert_close(o["boxes"], r["boxes"], msg=f"image {i}")


@pytest.mark.parametrize(("score", "iou", "topk", "max_det"),
                         [(0.05, 0.5, 1000, 100), (0.3, 0.4, 50, 30), (0.01, 0.7, 20, 300)])
def test_matches_torchvision_postprocess_detections(score: float, iou: float, topk: int, max_det: int) -> None:
    spec = SPEC.replace(postprocess={"score_threshold": score, "iou_threshold": iou, "topk_per_level": topk,
                                     "max_detections": max_det})
    outputs = _outputs(3, spec)
    ours = postprocess(outputs, anchors_for(spec), spec)
    _assert_same(ours, _reference(outputs, spec, score=score, iou=iou, topk=topk, max_det=max_det))
    assert max(len(o["scores"]) for o in ours) <= max_det


def test_class_agnostic_nms() -> None:
    spec = SPEC.replace(postprocess={"class_agnostic": True, "max_detections": 50})
    outputs = _outputs(2, spec, seed=1)
    ours = postprocess(outputs, anchors_for(spec), spec)
    # candidates = torchvision's selection without suppression; then plain (class-agnostic) NMS
    candidates = _reference(outputs, spec, score=0.05, iou=1.0, topk=1000, max_det=10**6)
    for o, c in zip(ours, candidates, strict=True):
        keep = nms(c["boxes"], c["scores"], 0.5)[:50]
        torch.testing.assert_close(o["boxes"], c["boxes"][keep])
        torch.testing.assert_close(o["labels"], c["labels"][keep])
    # uncapped, class-agnostic NMS suppresses more than per-class NMS on the same candidates
    counts = [sum(len(o["scores"]) for o in postprocess(outputs, anchors_for(spec), spec.replace(
        postprocess={"class_agnostic": agnostic, "max_detections": 10_000}))) for agnostic in (True, False)]
    assert counts[0] < counts[1]


def test_topk_per_level_caps_each_level() -> None:
    spec = SPEC.replace(postprocess={"score_threshold": 0.0, "topk_per_level": 2, "iou_threshold": 1.0,
                                     "max_detections": 100})
    outputs = _outputs(1, spec, seed=2)
    det = postprocess(outputs, anchors_for(spec), spec)[0]
    assert len(det["scores"]) == 2 * len(spec.anchors.strides)
    best_p5 = torch.sigmoid(outputs["cls_logits"][0, level_slices(spec)[2]]).max()
    assert best_p5 in det["scores"]  # the coarsest level's best survives even if weaker than finer levels'


def test_nothing_above_threshold_gives_empty_results() -> None:
    outputs = _outputs(2)
    outputs["cls_logits"].fill_(-10.0)  # sigmoid 4.5e-5 < 0.05
    for det in postprocess(outputs, anchors_for(SPEC), SPEC):
        assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].shape == (0,)
        assert det["labels"].dtype == torch.int64


def test_boxes_are_clipped_to_the_input() -> None:
    outputs = _outputs(1, seed=3)
    outputs["box_deltas"][..., 2:] = 3.0  # every box ~20x its anchor
    det = postprocess(outputs, anchors_for(SPEC), SPEC)[0]
    assert len(det["boxes"]) > 0
    assert det["boxes"][:, 0::2].min() >= 0 and det["boxes"][:, 0::2].max() <= SPEC.input_width
    assert det["boxes"][:, 1::2].min() >= 0 and det["boxes"][:, 1::2].max() <= SPEC.input_height
    assert (det["boxes"][:, 0::2] == SPEC.input_width).any()


def test_wrong_shapes_are_named() -> None:
    outputs = _outputs(1)
    with pytest.raises(InputError, match=r"anchors \(10, 4\)"):
        postprocess(outputs, torch.zeros(10, 4), SPEC)
