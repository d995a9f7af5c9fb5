"""train/torch_runner.py: the torch model behind the runtime `Runner` interface, EfficientNMS output layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.runner import Runner
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec, PostProcess
from retinaedge.train.anchors import anchors_for
from retinaedge.train.box_coder import BoxCoder
from retinaedge.train.checkpoint import get_rng_state, save_checkpoint
from retinaedge.train.config import config_to_dict, load_config
from retinaedge.train.model import build_model
from retinaedge.train.postprocess import postprocess
from retinaedge.train.torch_runner import TorchRunner

SPEC = DetectorSpec(class_names=("a", "b", "c"), category_ids=(1, 2, 3), input_height=64, input_width=64,
                    anchors=AnchorSpec(strides=(8, 16), sizes=(12.0, 24.0)),
                    postprocess=PostProcess(score_threshold=0.0, max_detections=7))
CONFIG = load_config("edge", ["model.fpn_channels=8", "model.head_channels=8", "model.head_depth=1",
                              "model.gn_groups=4", "model.channels_last=false", "data.input_size=64",
                              "data.progressive_size=0",
                              "anchors.strides=[8, 16]", "anchors.sizes=[12, 24]"])


class Fixed(torch.nn.Module):
    """Image 0: two confident boxes (class 2 on anchor 5, class 0 on anchor 300); image 1: nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = SPEC.replace(postprocess={"score_threshold": 0.5, "max_detections": 7})
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, k = self.spec.num_anchors, self.spec.num_classes
        logits = torch.full((x.shape[0], n, k), -10.0)
        logits[0, 5, 2] = 4.0
        logits[0, 300, 0] = 3.0
        deltas = torch.zeros((x.shape[0], n, 4))
        deltas[0, 5] = torch.tensor([0.1, -0.2, 0.3, 100.0])  # dh far above the clamp
        return {"cls_logits": logits, "box_deltas": deltas}


def _batch(b: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (b, 3, 64, 64), dtype=np.uint8)


def test_nothing_before_activate_and_exactly_one_source() -> None:
    r = TorchRunner(model=Fixed())
    assert isinstance(r, Runner) and (r.backend, r.precision) == ("torch", "fp32")
    assert r._model is None and not r.is_active
    with pytest.raises(RuntimeError, match="not active"):
        r.infer(_batch())
    with pytest.raises(InputError, match="exactly one of checkpoint= or model="):
        TorchRunner()
    with pytest.raises(InputError, match="exactly one"):
        TorchRunner(model=Fixed(), checkpoint="x.pt")


def test_efficient_nms_layout_with_zero_padding() -> None:
    model = Fixed()
    spec = model.spec
    with TorchRunner(model=model) as r:
        out = r.infer(_batch())
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "num_detections": ((2, 1), np.int32), "detection_boxes": ((2, 7, 4), np.float32),
        "detection_scores": ((2, 7), np.float32), "detection_classes": ((2, 7), np.int32)}
    assert out["num_detections"][:, 0].tolist() == [2, 0]
    np.testing.assert_allclose(out["detection_scores"][0, :2], torch.sigmoid(torch.tensor([4.0, 3.0])).numpy(),
                               rtol=1e-6)
    assert out["detection_classes"][0, :2].tolist() == [2, 0]
    anchors = anchors_for(spec)
    expected = BoxCoder.from_spec(spec).decode(torch.tensor([[0.1, -0.2, 0.3, 100.0]]), anchors[5:6])
    expected = expected.clamp(min=0, max=64)  # clipped to the input like the post-process does
    np.testing.assert_allclose(out["detection_boxes"][0, 0], expected[0].numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["detection_boxes"][0, 1], anchors[300].clamp(0, 64).numpy(), atol=1e-4)
    for name in ("detection_boxes", "detection_scores", "detection_classes"):
        assert not out[name][0, 2:].any() and not out[name][1].any(), name  # zero padding past num_detections


def test_raw_outputs_are_the_heads_with_clamped_dw_dh() -> None:
    model = Fixed()
    with TorchRunner(model=model, raw=True) as r:
        out = r.infer(_batch())
    ref = model(torch.zeros(2, 3, 64, 64))
    assert set(out) == {"cls_logits", "box_deltas"}
    np.testing.assert_array_equal(out["cls_logits"], ref["cls_logits"].numpy())
    assert out["box_deltas"][0, 5].tolist() == pytest.approx([0.1, -0.2, 0.3, SPEC.box_coding.clamp])


def test_checkpoint_runner_matches_the_model_and_its_postprocess(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(SPEC, CONFIG.model).eval()
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": config_to_dict(CONFIG), "spec": SPEC.to_dict(),
                           "epoch": 0, "step": 0, "batch": 0, "elapsed_s": 0.0, "best_ap": -1.0,
                           "rng": get_rng_state(), "optimizer": {}, "scaler": {}})
    r = TorchRunner(checkpoint=ckpt)
    assert r.spec == SPEC and r._model is None  # spec read, nothing built yet
    batch = _batch()
    with r:
        out = r.infer(batch)
    with torch.no_grad():
        ref = postprocess(model(torch.from_numpy(batch)), anchors_for(SPEC), SPEC)
    for i, res in enumerate(ref):
        n = len(res["scores"])
        assert n == 7 and out["num_detections"][i, 0] == n  # threshold 0: truncated at max_detections
        np.testing.assert_allclose(out["detection_scores"][i, :n], res["scores"].numpy(), rtol=1e-5)
        np.testing.assert_allclose(out["detection_boxes"][i, :n], res["boxes"].numpy(), rtol=1e-5, atol=1e-4)
        assert out["detection_classes"][i, :n].tolist() == res["labels"].tolist()
    assert r._model is None and not r.is_active  # deactivated by the with-block


def test_detector_treats_it_like_an_engine() -> None:
    from retinaedge.runtime.runner import Detector

    image = np.zeros((32, 64, 3), np.uint8)  # letterboxed to 64x64 with 16 px bands above and below
    (det,) = Detector(runner=TorchRunner(model=Fixed()))([image])
    assert len(det) == 2 and det.classes.tolist() == [2, 0]
    assert (det.boxes[:, 1::2] <= 32).all() and (det.boxes >= 0).all()  # mapped back into the 64x32 image
