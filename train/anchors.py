"""Anchors as torch tensors, built from the `DetectorSpec` (the single source of truth).

Nothing here infers a stride from an image or feature size: the spec's strides, sizes, scales, ratios and
offset fix every anchor, and the flat order is the spec's (P3 first, then ``y``, then ``x``, then the
``A`` anchors of a cell in ``spec.cell_anchors`` order).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from retinaedge.runtime.spec import DetectorSpec

__all__ = ["anchors_for", "level_slices"]


@functools.lru_cache(maxsize=16)
def _anchors_np(spec: DetectorSpec) -> np.ndarray:
    # DetectorSpec is a frozen dataclass, hence hashable; the array is read-only so the cache is safe.
    a = spec.anchors_xyxy()
    a.setflags(write=False)
    return a


def anchors_for(spec: DetectorSpec, *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """All anchors of ``spec`` as a tensor.

    Args:
        spec: the detector spec; its ``anchors_xyxy()`` defines values and order.
        device: where to put the tensor (default: CPU).
        dtype: floating dtype of the result.

    Returns:
        (N, 4) ``xyxy`` anchors in network-input pixels, ``N = spec.num_anchors``, in the spec's flat order.
        A fresh tensor the caller may modify.
    """
    return torch.tensor(_anchors_np(spec), dtype=dtype, device=device)


def level_slices(spec: DetectorSpec) -> list[slice]:
    """The slice of the flat anchor axis that belongs to each FPN level, P3 (first stride) first.

    Returns:
        One ``slice`` per entry of ``spec.anchors.strides``; together they cover ``0..N`` in order.
    """
    out, start = [], 0
    for n in spec.level_sizes():
        out.append(slice(start, start + n))
        start += n
    return out
