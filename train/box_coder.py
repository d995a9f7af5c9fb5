"""Center-size box coding, exactly what EfficientNMS_TRT (``box_coding=1``) decodes.

With anchors ``a = (x1, y1, x2, y2)``, ``aw = x2 - x1``, ``ax = x1 + aw / 2`` (likewise ``ah``, ``ay``) and a
ground-truth box ``g`` in the same form::

    dx = wx * (gx - ax) / aw      dy = wy * (gy - ay) / ah
    dw = ww * log(gw / aw)        dh = wh * log(gh / ah)

Decoding inverts this and clamps ``dw, dh`` (after dividing by the weights) at ``clamp`` before ``exp`` so a
wild regression cannot overflow. With weights ``(1, 1, 1, 1)`` and anchors given as ``(cx, cy, w, h)``, the
plugin's ``p0 = d0 * a2 + a0``, ``s0 = a2 * exp(d2)`` is the same formula (the clamp is inserted before the
plugin at export).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import BBOX_XFORM_CLIP, DetectorSpec

__all__ = ["BoxCoder"]


class BoxCoder:
    """Encode ``xyxy`` boxes as deltas against anchors and back.

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers of the deltas; ``(1, 1, 1, 1)`` for EfficientNMS.
        clamp: upper bound applied to ``dw / ww`` and ``dh / wh`` before ``exp`` in `decode`.
    """

    def __init__(self, *, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: float = BBOX_XFORM_CLIP) -> None:
        w = tuple(float(v) for v in weights)
        if len(w) != 4 or not all(math.isfinite(v) and v > 0 for v in w):
            raise InputError(f"BoxCoder weights={tuple(weights)!r} must be 4 finite numbers > 0, e.g. (1, 1, 1, 1)")
        if not (math.isfinite(clamp) and clamp > 0):
            raise InputError(f"BoxCoder clamp={clamp!r} must be a finite number > 0; the usual value is log(1000/16)")
        self.weights: tuple[float, float, float, float] = (w[0], w[1], w[2], w[3])
        self.clamp = float(clamp)

    @classmethod
    def from_spec(cls, spec: DetectorSpec) -> BoxCoder:
        """The coder the spec describes (``spec.box_coding``)."""
        return cls(weights=spec.box_coding.weights, clamp=spec.box_coding.clamp)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, clamp={self.clamp:.6g})"

    def encode(self, gt_xyxy: Tensor, anchors_xyxy: Tensor) -> Tensor:
        """Deltas that turn ``anchors_xyxy`` into ``gt_xyxy``.

        Args:
            gt_xyxy: (..., 4) ``xyxy`` target boxes in pixels, positive width and height.
            anchors_xyxy: (..., 4) ``xyxy`` anchors, broadcastable against ``gt_xyxy``.

        Returns:
            (..., 4) ``(dx, dy, dw, dh)`` in the broadcast shape, dtype of ``gt_xyxy``.
        """
        anchors_xyxy = anchors_xyxy.to(gt_xyxy.dtype)
        wx, wy, ww, wh = self.weights
        aw = anchors_xyxy[..., 2] - anchors_xyxy[..., 0]
        ah = anchors_xyxy[..., 3] - anchors_xyxy[..., 1]
        ax = anchors_xyxy[..., 0] + 0.5 * aw
        ay = anchors_xyxy[..., 1] + 0.5 * ah
        gw = gt_xyxy[..., 2] - gt_xyxy[..., 0]
        gh = gt_xyxy[..., 3] - gt_xyxy[..., 1]
        gx = gt_xyxy[..., 0] + 0.5 * gw
        gy = gt_xyxy[..., 1] + 0.5 * gh
        return torch.stack(
            (wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)), dim=-1
        )

    def decode(self, deltas: Tensor, anchors_xyxy: Tensor) -> Tensor:
        """Boxes obtained by applying ``deltas`` to ``anchors_xyxy``.

        Args:
            deltas: (..., 4) ``(dx, dy, dw, dh)``, raw (unclamped) regression outputs.
            anchors_xyxy: (..., 4) ``xyxy`` anchors, broadcastable against ``deltas``.

        Returns:
            (..., 4) ``xyxy`` boxes in pixels in the broadcast shape, dtype of ``deltas``. Not clipped to
            the image.
        """
        anchors_xyxy = anchors_xyxy.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        aw = anchors_xyxy[..., 2] - anchors_xyxy[..., 0]
        ah = anchors_xyxy[..., 3] - anchors_xyxy[..., 1]
        ax = anchors_xyxy[..., 0] + 0.5 * aw
        ay = anchors_xyxy[..., 1] + 0.5 * ah
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.clamp)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.clamp)
        cx = dx * aw + ax
        cy = dy * ah + ay
        hw = 0.5 * torch.exp(dw) * aw
        hh = 0.5 * torch.exp(dh) * ah
        return torch.stack((cx - hw, cy - hh, cx + hw, cy + hh), dim=-1)
