"""`TorchRunner`: the trained PyTorch model behind the runtime's `Runner` interface.

It is the FP32 reference row of the validation report: it returns the same four ``detection_*`` tensors an
EfficientNMS engine returns (zero-padded to ``max_detections``), so `retinaedge.runtime.postprocess` and
`retinaedge.runtime.runner.Detector` treat it like any engine; with ``raw=True`` it returns the raw heads
for raw-output comparison against ONNX Runtime / TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.runner import Runner
from retinaedge.runtime.spec import DetectorSpec

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    """Run a RetinaNet checkpoint (or an in-memory model) with torch.

    Nothing is built or loaded before `activate`, except reading the spec when it is not given.

    Args:
        checkpoint: a ``ckpt_*.pt`` written by ``retinaedge train``.
        model: an in-memory `RetinaNet` instead of a checkpoint (``spec`` then defaults to ``model.spec``).
        spec: the model's spec (default: the checkpoint's / the model's).
        raw: return the raw heads ``{"cls_logits": (B, N, K), "box_deltas": (B, N, 4)}`` (float32; dw/dh
            clamped at ``spec.box_coding.clamp`` like the exported graph) instead of detections.
        device: torch device to run on.
        name: label in reports (default: ``torch-fp32:<checkpoint file>``).
    """

    backend = "torch"
    precision = "fp32"

    @property
    def on_host_cpu(self) -> bool:
        return self.device.type == "cpu"

    def __init__(self, *, checkpoint: str | Path | None = None, model: torch.nn.Module | None = None,
                 spec: DetectorSpec | None = None, raw: bool = False, device: str | torch.device = "cpu",
                 name: str | None = None) -> None:
        super().__init__()
        if (checkpoint is None) == (model is None):
            raise InputError("TorchRunner needs exactly one of checkpoint= or model=; got "
                             f"checkpoint={checkpoint!r}, model={'set' if model is not None else None}")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.source = str(self.checkpoint) if self.checkpoint is not None else None
        if spec is None:
            if model is not None:
                spec = getattr(model, "spec", None)
                if spec is None:
                    raise InputError("TorchRunner(model=...) needs spec= when the model has no .spec")
            else:
                from retinaedge.train.checkpoint import read_checkpoint

                spec = DetectorSpec.from_dict(read_checkpoint(self._checkpoint_path(), mmap=True)["spec"])
        self.spec = spec
        self.raw = raw
        self.device = torch.device(device)
        self.name = name or f"torch-fp32:{self.checkpoint.name if self.checkpoint else 'model'}"
        self._given_model = model
        self._model: Any = None
        self._anchors: torch.Tensor | None = None

    def activate_impl(self) -> None:
        from retinaedge.train.anchors import anchors_for

        model: torch.nn.Module
        if self._given_model is not None:
            model = self._given_model
        else:
            from retinaedge.train.checkpoint import load_checkpoint

            model, _, _ = load_checkpoint(self._checkpoint_path(), device=self.device)
        self._model = model.to(self.device).eval()
        self._anchors = anchors_for(self.spec, device=self.device)

    def _checkpoint_path(self) -> Path:
        if self.checkpoint is None:
            raise InputError("TorchRunner has neither a checkpoint nor a model")
        return self.checkpoint

    def deactivate_impl(self) -> None:
        self._model = None
        self._anchors = None

    @torch.inference_mode()
    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, H, W) letterboxed pixels -> named outputs.

        Returns:
            Detections mode: ``num_detections`` (B, 1) int32, ``detection_boxes`` (B, K, 4) float32 xyxy in
            network-input pixels, ``detection_scores`` (B, K) float32, ``detection_classes`` (B, K) int32,
            with ``K = spec.postprocess.max_detections`` and rows past ``num_detections`` zero (EfficientNMS
            layout). Raw mode: ``cls_logits`` (B, N, K) and ``box_deltas`` (B, N, 4) float32.
        """
        from retinaedge.train.postprocess import postprocess

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        outputs = {k: v.float() for k, v in self._model(x).items()}
        io = self.spec.io
        if self.raw:
            deltas = outputs["box_deltas"].clone()
            deltas[..., 2:] = deltas[..., 2:].clamp(max=self.spec.box_coding.clamp)
            return {io.cls_logits: outputs["cls_logits"].cpu().numpy(), io.box_deltas: deltas.cpu().numpy()}
        if self._anchors is None:
            raise RuntimeError(f"runner {self.name!r} is not active")
        results = postprocess(outputs, self._anchors, self.spec)
        b, k = len(results), self.spec.postprocess.max_detections
        num = np.zeros((b, 1), np.int32)
        boxes = np.zeros((b, k, 4), np.float32)
        scores = np.zeros((b, k), np.float32)
        classes = np.zeros((b, k), np.int32)
        for i, res in enumerate(results):
            n = min(len(res["scores"]), k)
            num[i, 0] = n
            boxes[i, :n] = res["boxes"][:n].cpu().numpy()
            scores[i, :n] = res["scores"][:n].cpu().numpy()
            classes[i, :n] = res["labels"][:n].cpu().numpy()
        return {io.num_detections: num, io.detection_boxes: boxes, io.detection_scores: scores,
                io.detection_classes: classes}
