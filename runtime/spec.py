"""`DetectorSpec`: the one contract between train, export, engines and runtime.

Everything a stage needs to agree with another stage about — input size and layout, normalisation,
letterbox policy, FPN strides, anchors, box coding, post-processing and tensor names — lives here and
nowhere else. The spec is pure data (numpy only), frozen, and round-trips through JSON exactly.

Coordinate conventions used throughout retinaedge:

* boxes are ``xyxy`` corners in pixels, ``(x1, y1, x2, y2)``, no ``+1``;
* anchors are generated level by level (P3 first), row-major over the feature map
  (``y`` outer, ``x`` inner), and within a cell in ``scales``-outer, ``aspect_ratios``-inner order;
  so the flat anchor index is ``((level_offset + y * W + x) * A + s * len(ratios) + r)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from retinaedge.runtime.errors import SpecError

SPEC_VERSION = 1
"""Bumped when a field changes meaning; `DetectorSpec.from_dict` refuses other versions."""

NmsMode = Literal["efficient", "onnx", "none"]
Layout = Literal["NCHW"]
InputDtype = Literal["uint8", "float32"]
NMS_MODES: tuple[str, ...] = get_args(NmsMode)

BBOX_XFORM_CLIP = math.log(1000.0 / 16)
"""Upper clamp for dw/dh before ``exp`` (detectron2 / torchvision value)."""
# An input side need only be a multiple of this (C5's stride in a ResNet-FPN, whose top-down path doubles sizes up
# to it); levels with a larger stride get ceil-sized maps (feature_shapes).
MAX_INPUT_MULTIPLE = 32


def _check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise SpecError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise SpecError(f"{name}={value!r} must be a finite number > 0")


@dataclass(frozen=True)
class AnchorSpec:
    """Anchor layout, one entry per FPN level for ``strides`` and ``sizes``.

    Attributes:
        strides: pixel stride of each level, P3..P7 by default.
        sizes: base anchor side (pixels) of each level, before ``scales``.
        scales: per-cell multipliers of ``sizes`` (octave scales in the paper).
        aspect_ratios: ``h / w`` ratios; an anchor keeps area ``(size*scale)**2``.
        offset: cell-centre offset in units of stride; anchor centre is ``(x + offset) * stride``.
    """

    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    offset: float = 0.5

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.sizes) or not self.strides:
            raise SpecError(
                f"anchors.strides {self.strides} and anchors.sizes {self.sizes} must be non-empty and "
                "of the same length (one per FPN level)"
            )
        for s in self.strides:
            if not isinstance(s, int) or s <= 0 or s & (s - 1):
                raise SpecError(f"anchors.strides contains {s!r}; strides must be positive powers of two")
        for name in ("sizes", "scales", "aspect_ratios"):
            for v in getattr(self, name):
                _check_positive(f"anchors.{name} entry", v)
        if not 0.0 <= self.offset < 1.0:
            raise SpecError(f"anchors.offset={self.offset!r} must be in [0, 1); 0.5 centres anchors in cells")

    @property
    def num_anchors_per_cell(self) -> int:
        return len(self.scales) * len(self.aspect_ratios)


@dataclass(frozen=True)
class BoxCoding:
    """Center-size delta coding, the form EfficientNMS_TRT (box_coding=1) decodes.

    ``dx = (gx - ax) / aw * wx`` … ``dw = log(gw / aw) * ww``; decode clamps ``dw, dh`` at ``clamp``.
    """

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    clamp: float = BBOX_XFORM_CLIP

    def __post_init__(self) -> None:
        if len(self.weights) != 4:
            raise SpecError(f"box_coding.weights={self.weights!r} must have 4 entries")
        for w in self.weights:
            _check_positive("box_coding.weights entry", w)
        _check_positive("box_coding.clamp", self.clamp)


@dataclass(frozen=True)
class PostProcess:
    """Detection post-processing shared by torch eval, ONNX NMS, EfficientNMS and the numpy reference."""

    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    topk_per_level: int = 1000
    max_detections: int = 100
    class_agnostic: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold < 1.0:
            raise SpecError(f"postprocess.score_threshold={self.score_threshold!r} must be in [0, 1)")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise SpecError(f"postprocess.iou_threshold={self.iou_threshold!r} must be in (0, 1]")
        for name in ("topk_per_level", "max_detections"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise SpecError(f"postprocess.{name}={v!r} must be a positive integer")


@dataclass(frozen=True)
class IONames:
    """Tensor names of the exported graph."""

    input: str = "images"
    cls_logits: str = "cls_logits"  # (B, N, K) raw class logits, N = total anchors
    box_deltas: str = "box_deltas"  # (B, N, 4) center-size deltas (dw/dh clamped)
    boxes: str = "boxes"  # (B, N, 4) decoded xyxy boxes in network-input pixels (nms=none)
    scores: str = "scores"  # (B, N, K) sigmoid scores (nms=none)
    num_detections: str = "num_detections"  # (B, 1) int32
    detection_boxes: str = "detection_boxes"  # (B, K, 4) float32 xyxy
    detection_scores: str = "detection_scores"  # (B, K) float32
    detection_classes: str = "detection_classes"  # (B, K) int32
    selected_indices: str = "selected_indices"  # (M, 3) int64 [batch, class, anchor] (nms=onnx)


@dataclass(frozen=True)
class DetectorSpec:
    """Frozen description of a detector's inputs, anchors, box coding and outputs.

    Attributes:
        class_names: one name per contiguous class index ``0..K-1``.
        category_ids: the dataset's (possibly sparse) category id for each class index.
        input_height: network input height in pixels: a multiple of the largest stride, or of 32 (C5's
            stride) when the largest stride is above it; levels above 32 then have ceil-sized maps.
        input_width: network input width in pixels, as ``input_height``.
        layout: tensor layout of the network input; ``NCHW`` with RGB channel order.
        input_dtype: ``uint8`` (0..255 pixels) or ``float32`` (0..255 pixels, not normalised).
        pixel_mean: per-channel RGB mean on the 0..255 scale; subtracted *inside* the graph.
        pixel_std: per-channel RGB std on the 0..255 scale; divided *inside* the graph.
        letterbox_pad: pad value (0..255) for the letterbox border.
        letterbox_center: pad symmetrically (True) or only right/bottom (False).
        anchors: anchor layout.
        box_coding: box delta coding.
        postprocess: thresholds and limits.
        nms: which NMS the exported graph ends in.
        io: tensor names.
    """

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...] = ()
    input_height: int = 512
    input_width: int = 512
    layout: Layout = "NCHW"
    input_dtype: InputDtype = "uint8"
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    letterbox_pad: int = 114
    letterbox_center: bool = True
    anchors: AnchorSpec = field(default_factory=AnchorSpec)
    box_coding: BoxCoding = field(default_factory=BoxCoding)
    postprocess: PostProcess = field(default_factory=PostProcess)
    nms: NmsMode = "efficient"
    io: IONames = field(default_factory=IONames)

    def __post_init__(self) -> None:
        if not self.class_names:
            raise SpecError("class_names is empty; a detector needs at least one class")
        if len(set(self.class_names)) != len(self.class_names):
            raise SpecError(f"class_names {list(self.class_names)} contains duplicates")
        if not self.category_ids:
            object.__setattr__(self, "category_ids", tuple(range(1, len(self.class_names) + 1)))
        if len(self.category_ids) != len(self.class_names):
            raise SpecError(
                f"category_ids has {len(self.category_ids)} entries but class_names has "
                f"{len(self.class_names)}; give one category id per class"
            )
        if len(set(self.category_ids)) != len(self.category_ids):
            raise SpecError(f"category_ids {list(self.category_ids)} contains duplicates")
        big = min(max(self.anchors.strides), MAX_INPUT_MULTIPLE)
        for name in ("input_height", "input_width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0 or v % big:
                capped = f" (capped at {MAX_INPUT_MULTIPLE}, C5's stride)" if big < max(self.anchors.strides) else ""
                raise SpecError(
                    f"{name}={v!r} must be a positive multiple of the largest stride{capped} {big}; "
                    f"try {max(big, round(v / big) * big) if isinstance(v, int | float) else big}"
                )
        _check_choice("layout", self.layout, get_args(Layout))
        _check_choice("input_dtype", self.input_dtype, get_args(InputDtype))
        _check_choice("nms", self.nms, NMS_MODES)
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise SpecError("pixel_mean and pixel_std need 3 entries (RGB)")
        for s in self.pixel_std:
            _check_positive("pixel_std entry", s)
        if not 0 <= self.letterbox_pad <= 255:
            raise SpecError(f"letterbox_pad={self.letterbox_pad!r} must be in 0..255")

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_anchors_per_cell(self) -> int:
        return self.anchors.num_anchors_per_cell

    def feature_shapes(self) -> list[tuple[int, int]]:
        """(H, W) of each FPN level's feature map, P3 first: ``ceil(input / stride)``.

        Exact for every level up to stride 32 (the input is a multiple of it); the levels above (P6, P7) come
        from stride-2 convolutions with padding 1, whose output is ``ceil(in / 2)``, so a 192-px input gives
        P6 3x3 and P7 2x2, as torchvision's RetinaNet does.
        """
        return [(-(-self.input_height // s), -(-self.input_width // s)) for s in self.anchors.strides]

    @property
    def num_anchors(self) -> int:
        """Total anchors over all levels, ``N`` in the output shapes."""
        return sum(h * w for h, w in self.feature_shapes()) * self.num_anchors_per_cell

    def cell_anchors(self, level: int) -> np.ndarray:
        """Anchors of one cell centred at the origin.

        Returns:
            (A, 4) float64 ``xyxy``, scales outer, aspect ratios inner.
        """
        out = []
        base = self.anchors.sizes[level]
        for scale in self.anchors.scales:
            area = (base * scale) ** 2
            for ratio in self.anchors.aspect_ratios:
                w = math.sqrt(area / ratio)
                h = w * ratio
                out.append((-w / 2, -h / 2, w / 2, h / 2))
        return np.asarray(out, dtype=np.float64)

    def anchors_xyxy(self) -> np.ndarray:
        """All anchors in network-input pixels.

        Returns:
            (N, 4) float32 ``xyxy`` in the flat order documented at the top of this module.
        """
        levels = []
        for lvl, ((h, w), stride) in enumerate(zip(self.feature_shapes(), self.anchors.strides, strict=True)):
            ys = (np.arange(h, dtype=np.float64) + self.anchors.offset) * stride
            xs = (np.arange(w, dtype=np.float64) + self.anchors.offset) * stride
            cy, cx = np.meshgrid(ys, xs, indexing="ij")
            shifts = np.stack([cx, cy, cx, cy], axis=-1).reshape(-1, 1, 4)
            levels.append((shifts + self.cell_anchors(lvl)[None]).reshape(-1, 4))
        return np.concatenate(levels, axis=0).astype(np.float32)

    def anchors_cxcywh(self) -> np.ndarray:
        """All anchors as (cx, cy, w, h), the form EfficientNMS_TRT's anchors input takes.

        Returns:
            (N, 4) float32.
        """
        a = self.anchors_xyxy().astype(np.float64)
        wh = a[:, 2:] - a[:, :2]
        return np.concatenate([a[:, :2] + wh / 2, wh], axis=1).astype(np.float32)

    def level_sizes(self) -> list[int]:
        """Number of anchors in each level, P3 first."""
        return [h * w * self.num_anchors_per_cell for h, w in self.feature_shapes()]

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec_version"] = SPEC_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorSpec:
        """Build a spec from `to_dict` output, refusing unknown keys and other spec versions."""
        data = dict(data)
        version = data.pop("spec_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError(
                f"spec_version={version!r} is not supported (this retinaedge reads {SPEC_VERSION}); "
                "re-export the model with this version"
            )
        nested = _NESTED
        kwargs: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown spec keys {unknown}; allowed: {sorted(known)}")
        for key, value in data.items():
            sub = nested.get(key)
            if sub is not None:
                sub_known = {f.name for f in fields(sub)}
                bad = sorted(set(value) - sub_known)
                if bad:
                    raise SpecError(f"unknown keys {bad} in spec.{key}; allowed: {sorted(sub_known)}")
                value = sub(**{k: _tuplify(v) for k, v in value.items()})
            else:
                value = _tuplify(value)
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except TypeError as e:  # a missing required key
            raise SpecError(f"incomplete spec: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> DetectorSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec is not valid JSON ({e}); re-export to regenerate spec.json") from None
        if not isinstance(data, dict):
            raise SpecError(f"spec JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write ``spec.json`` atomically."""
        from retinaedge.runtime.io import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DetectorSpec:
        p = Path(path)
        if not p.is_file():
            raise SpecError(f"spec file {str(p)!r} does not exist; pass the spec.json written by export")
        return cls.from_json(p.read_text())

    def replace(self, **changes: Any) -> DetectorSpec:
        """A copy with ``changes``; nested dataclasses accept dicts of their own fields."""
        for key, value in list(changes.items()):
            if key in _NESTED and isinstance(value, Mapping):
                current = getattr(self, key)
                changes[key] = replace(current, **{k: _tuplify(v) for k, v in value.items()})
        return replace(self, **changes)


_NESTED: dict[str, type[Any]] = {
    "anchors": AnchorSpec, "box_coding": BoxCoding, "postprocess": PostProcess, "io": IONames,
}


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
