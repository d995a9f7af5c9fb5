"""RetinaNet (Lin et al. 2017): a torchvision ResNet body, FPN P3-P7 and shared class/box subnets.

`RetinaNet.forward` takes raw pixels (0..255, RGB, NCHW), normalises them with the spec's mean/std inside
the graph, and returns the raw head outputs flattened in the spec's anchor order, so the exported ONNX needs
no preprocessing beyond the letterbox and no knowledge of the layout of the heads::

    images (B, 3, H, W) uint8|float  ->  {"cls_logits": (B, N, K), "box_deltas": (B, N, 4)}

``N = spec.num_anchors``; row ``i`` is anchor ``i`` of ``spec.anchors_xyxy()`` (level P3 first, then ``y``,
then ``x``, then the ``A`` anchors of a cell in ``spec.cell_anchors`` order); ``box_deltas`` are the
unclamped center-size deltas of `retinaedge.train.box_coder.BoxCoder`.

Forward is free of data-dependent Python control flow and of ops TensorRT dislikes: the FPN upsamples by a
constant factor 2 (input sizes are multiples of 32) instead of to a traced size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.spec import DetectorSpec

__all__ = ["FPN", "ModelConfig", "ResNetBody", "RetinaNet", "RetinaNetHead", "build_model"]

Backbone = Literal["resnet18", "resnet34", "resnet50"]
HeadNorm = Literal["none", "gn", "bn"]
P6From = Literal["c5", "p5"]

_C_CHANNELS = {"resnet18": (128, 256, 512), "resnet34": (128, 256, 512), "resnet50": (512, 1024, 2048)}
"""Channels of C3, C4, C5 for each torchvision ResNet."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the detector (the spec fixes anchors, classes and input size).

    Attributes:
        backbone: torchvision ResNet architecture of the body.
        backbone_weights: a local ``state_dict`` file of that torchvision ResNet (``fc.*`` keys are ignored);
            nothing is ever downloaded. ``None`` starts from random weights.
        fpn_channels: width of every FPN level.
        head_channels: width of the class and box subnets.
        head_depth: number of 3x3 conv + norm + ReLU blocks in each subnet (4 in the paper).
        head_norm: normalisation in the subnets: none (paper), GroupNorm, or BatchNorm (shared over levels).
        gn_groups: GroupNorm groups; must divide ``head_channels``.
        freeze_bn: use torchvision ``FrozenBatchNorm2d`` in the body (fixed statistics and affine). Only
            meaningful with ``backbone_weights``; from scratch use ``False`` (trainable BatchNorm).
        prior_prob: foreground prior pi of the class bias init, ``b = -log((1 - pi) / pi)``.
        channels_last: run convolutions in NHWC memory format (faster on CPU and on tensor cores).
        trainable_layers: how many body stages train, counted from the top as in torchvision
            (``5``: all; ``3``: layer2-4; ``0``: none).
        p6_from: P6 from ``"c5"`` (paper) or ``"p5"`` (torchvision RetinaNet v1).
    """

    backbone: Backbone = "resnet50"
    backbone_weights: str | None = None
    fpn_channels: int = 256
    head_channels: int = 256
    head_depth: int = 4
    head_norm: HeadNorm = "none"
    gn_groups: int = 32
    freeze_bn: bool = True
    prior_prob: float = 0.01
    channels_last: bool = True
    trainable_layers: int = 5
    p6_from: P6From = "c5"

    def __post_init__(self) -> None:
        for name, typ in (("backbone", Backbone), ("head_norm", HeadNorm), ("p6_from", P6From)):
            value = getattr(self, name)
            if value not in get_args(typ):
                raise InputError(f"model.{name}={value!r} is not allowed; choose one of {list(get_args(typ))}")
        for name in ("fpn_channels", "head_channels", "gn_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"model.{name}={value!r} must be a positive integer")
        if not isinstance(self.head_depth, int) or self.head_depth < 0:
            raise InputError(f"model.head_depth={self.head_depth!r} must be an integer >= 0 (the paper uses 4)")
        if self.head_norm == "gn" and self.head_depth and self.head_channels % self.gn_groups:
            raise InputError(
                f"model.gn_groups={self.gn_groups} does not divide head_channels={self.head_channels}; "
                f"use a divisor such as {math.gcd(self.head_channels, 32)}"
            )
        if not (isinstance(self.prior_prob, float | int) and 0.0 < self.prior_prob < 1.0):
            raise InputError(f"model.prior_prob={self.prior_prob!r} must be in (0, 1); the paper uses 0.01")
        if not isinstance(self.trainable_layers, int) or not 0 <= self.trainable_layers <= 5:
            raise InputError(f"model.trainable_layers={self.trainable_layers!r} must be an integer in 0..5")


# ---- body ---------------------------------------------------------------------------------------------------
class ResNetBody(nn.Module):
    """A torchvision ResNet without its classifier, returning C3, C4, C5.

    Args:
        arch: torchvision architecture name.
        weights: optional local ``state_dict`` file of the torchvision model.
        freeze_bn: ``FrozenBatchNorm2d`` instead of ``BatchNorm2d``.
        trainable_layers: stages that keep ``requires_grad`` (top-down), as torchvision's ``trainable_layers``.

    Attributes:
        out_channels: channels of (C3, C4, C5).
    """

    def __init__(self, *, arch: Backbone = "resnet50", weights: str | Path | None = None, freeze_bn: bool = True,
                 trainable_layers: int = 5) -> None:
        super().__init__()
        import torchvision
        from torchvision.ops import FrozenBatchNorm2d

        if arch not in _C_CHANNELS:
            raise InputError(f"backbone={arch!r} is not allowed; choose one of {list(_C_CHANNELS)}")
        norm = FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d
        net = getattr(torchvision.models, arch)(weights=None, norm_layer=norm)
        if weights is not None:
            _load_resnet_weights(net, Path(weights), arch)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels: tuple[int, int, int] = _C_CHANNELS[arch]
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            train.append("bn1")
        for name, p in self.named_parameters():
            if not any(name.startswith(t) for t in train):
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) normalised image -> [C3 (B, c3, H/8, W/8), C4 (.., H/16, ..), C5 (.., H/32, ..)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def _load_resnet_weights(net: nn.Module, path: Path, arch: str) -> None:
    if not path.is_file():
        raise ModelError(f"backbone_weights={str(path)!r} does not exist; give a local {arch} state_dict file "
                         "(nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a bad file
        raise ModelError(f"backbone_weights={str(path)!r} is not a loadable torch file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); save it with torch.save(model.state_dict())"
                         ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"backbone_weights={str(path)!r} holds a {type(state).__name__}, not a state_dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k for k in net.state_dict() if not k.startswith("fc.")}
    missing = sorted(own - set(state) - {k for k in own if k.endswith("num_batches_tracked")})
    unexpected = sorted(set(state) - own - {k for k in state if k.endswith("num_batches_tracked")})
    if missing or unexpected:
        raise ModelError(
            f"backbone_weights={str(path)!r} does not fit torchvision {arch}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}; is it a {arch} state_dict?"
        )
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ModelError(f"backbone_weights={str(path)!r} does not fit torchvision {arch}: "
                         f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None


# ---- FPN ----------------------------------------------------------------------------------------------------
class FPN(nn.Module):
    """Feature pyramid over C3-C5 with extra stride-2 levels above P5 (P6 from C5 or P5, P7 on relu(P6)).

    Args:
        in_channels: channels of (C3, C4, C5).
        out_channels: width of every output level.
        levels: pyramid levels to return, increasing (``3`` = stride 8 ... ``7`` = stride 128).
        p6_from: ``"c5"`` (paper) or ``"p5"``.

    Attributes:
        out_channels: width of every output level.
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int, levels: Sequence[int] = (3, 4, 5, 6, 7),
                 p6_from: P6From = "c5") -> None:
        super().__init__()
        levels = tuple(levels)
        if not levels or list(levels) != sorted(set(levels)) or levels[0] < 3:
            raise InputError(f"FPN levels={levels} must be strictly increasing and >= 3 (stride 8)")
        if len(tuple(in_channels)) != 3:
            raise InputError(f"FPN in_channels={tuple(in_channels)} must give the channels of C3, C4, C5")
        self.levels = levels
        self.out_channels = out_channels
        self.p6_from = p6_from
        self._low = min(levels[0], 5)  # lowest level of the top-down path
        c_ch = dict(zip((3, 4, 5), in_channels, strict=True))
        topdown = levels[0] <= 5 or p6_from == "p5"
        self.lateral = nn.ModuleDict({str(lv): nn.Conv2d(c_ch[lv], out_channels, 1)
                                      for lv in range(self._low, 6) if topdown})
        # 3x3 output convs only where a level is returned (or P5 feeds P6): no unused parameters (DDP)
        outputs = {lv for lv in levels if lv <= 5} | ({5} if p6_from == "p5" and levels[-1] >= 6 else set())
        self.output = nn.ModuleDict({str(lv): nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                     for lv in sorted(outputs)})
        self.extra = nn.ModuleList()
        for lv in range(6, levels[-1] + 1):
            cin = c_ch[5] if lv == 6 and p6_from == "c5" else out_channels
            self.extra.append(nn.Conv2d(cin, out_channels, 3, stride=2, padding=1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # torchvision FPN / LastLevelP6P7 init
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """[C3, C4, C5] -> one (B, out_channels, H/stride, W/stride) map per entry of ``levels``."""
        c = dict(zip((3, 4, 5), feats, strict=True))
        p: dict[int, Tensor] = {}
        topdown = range(5, self._low - 1, -1) if len(self.lateral) else range(0)
        inner = c[5]
        for lv in topdown:
            if lv == 5:
                inner = self.lateral["5"](c[5])
            else:  # constant factor 2, not size=: exports as a static Resize (inputs are multiples of 32)
                inner = self.lateral[str(lv)](c[lv]) + F.interpolate(inner, scale_factor=2.0, mode="nearest")
            if str(lv) in self.output:
                p[lv] = self.output[str(lv)](inner)
        x = c[5] if self.p6_from == "c5" or not self.extra else p[5]
        for j, conv in enumerate(self.extra):
            x = conv(x if j == 0 else F.relu(x))
            p[6 + j] = x
        return [p[lv] for lv in self.levels]


# ---- head ---------------------------------------------------------------------------------------------------
class RetinaNetHead(nn.Module):
    """Class and box subnets shared across levels.

    Each subnet is ``depth`` x (3x3 conv ``channels`` + norm + ReLU) then a 3x3 conv to ``A*K`` (class) or
    ``A*4`` (box) channels. Weights ~ N(0, 0.01), biases 0, class bias ``-log((1 - pi) / pi)``.

    Output channel ``a * K + k`` of the class map is anchor ``a``'s class ``k`` (``a * 4 + j`` for boxes).

    Args:
        in_channels: FPN width.
        num_anchors: ``A``, anchors per cell.
        num_classes: ``K``.
        channels: subnet width.
        depth: conv blocks per subnet.
        norm: ``"none"``, ``"gn"`` or ``"bn"``.
        gn_groups: GroupNorm groups.
        prior_prob: pi.
    """

    def __init__(self, *, in_channels: int, num_anchors: int, num_classes: int, channels: int = 256,
                 depth: int = 4, norm: HeadNorm = "none", gn_groups: int = 32, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, channels, depth, norm, gn_groups)
        self.box_tower = _tower(in_channels, channels, depth, norm, gn_groups)
        last = channels if depth else in_channels
        self.cls_logits = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.box_deltas = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
        if self.cls_logits.bias is not None:  # always true; narrows the type
            nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level (B, C, H, W) -> ([(B, A*K, H, W)], [(B, A*4, H, W)])."""
        cls = [self.cls_logits(self.cls_tower(f)) for f in feats]
        box = [self.box_deltas(self.box_tower(f)) for f in feats]
        return cls, box


def _tower(cin: int, ch: int, depth: int, norm: HeadNorm, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Conv2d(cin if i == 0 else ch, ch, 3, padding=1, bias=norm == "none"))
        if norm == "gn":
            layers.append(nn.GroupNorm(groups, ch))
        elif norm == "bn":
            layers.append(nn.BatchNorm2d(ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ---- detector -----------------------------------------------------------------------------------------------
class RetinaNet(nn.Module):
    """RetinaNet producing raw head outputs in the spec's flat anchor order.

    Args:
        spec: input size, normalisation, anchors (``A`` per cell, strides) and classes.
        config: architecture; used to build the parts not injected.
        backbone: module ``(B, 3, H, W) -> [C3, C4, C5]`` with ``out_channels`` (3 ints); default `ResNetBody`.
        fpn: module ``[C3, C4, C5] -> one (B, C, H/s, W/s) map per spec stride`` with ``out_channels``;
            default `FPN`.
        head: module ``[P] -> ([(B, A*K, H/s, W/s)], [(B, A*4, H/s, W/s)])``; default `RetinaNetHead`.
    """

    def __init__(self, *, spec: DetectorSpec, config: ModelConfig, backbone: nn.Module | None = None,
                 fpn: nn.Module | None = None, head: nn.Module | None = None) -> None:
        super().__init__()
        strides = spec.anchors.strides
        levels = [int(math.log2(s)) for s in strides]
        if levels[0] < 3 or levels != sorted(set(levels)):
            raise InputError(f"spec anchors.strides={strides} must be increasing powers of two >= 8 for a ResNet-FPN")
        for name in ("input_height", "input_width"):
            if getattr(spec, name) % 32:
                raise InputError(f"spec {name}={getattr(spec, name)} must be a multiple of 32 for a ResNet-FPN "
                                 f"(C5 has stride 32); try {max(32, round(getattr(spec, name) / 32) * 32)}")
        self.spec = spec
        self.config = config
        self.num_classes = spec.num_classes
        self.num_anchors_per_cell = spec.num_anchors_per_cell
        if backbone is None:
            if config.freeze_bn and config.backbone_weights is None:
                warnings.warn("model.freeze_bn=True without backbone_weights freezes untrained BatchNorm (an "
                              "identity); set freeze_bn=False to train the backbone from scratch", stacklevel=2)
            backbone = ResNetBody(arch=config.backbone, weights=config.backbone_weights, freeze_bn=config.freeze_bn,
                                  trainable_layers=config.trainable_layers)
        if fpn is None:
            body_channels = cast("Sequence[int]", backbone.out_channels)
            fpn = FPN(in_channels=tuple(body_channels), out_channels=config.fpn_channels, levels=levels,
                      p6_from=config.p6_from)
        if head is None:
            head = RetinaNetHead(in_channels=int(cast(int, fpn.out_channels)), num_anchors=spec.num_anchors_per_cell,
                                 num_classes=spec.num_classes, channels=config.head_channels,
                                 depth=config.head_depth, norm=config.head_norm, gn_groups=config.gn_groups,
                                 prior_prob=config.prior_prob)
        self.backbone, self.fpn, self.head = backbone, fpn, head
        # derived from the spec (saved with it), so not part of the state_dict
        self.pixel_mean: Tensor
        self.pixel_std: Tensor
        self.register_buffer("pixel_mean", torch.tensor(spec.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.channels_last = config.channels_last
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Raw head outputs for a batch of raw images.

        Args:
            images: (B, 3, H, W) RGB pixels on the 0..255 scale, uint8 or float, ``H, W`` the spec's input size.

        Returns:
            ``"cls_logits"``: (B, N, K) raw class logits; ``"box_deltas"``: (B, N, 4) raw center-size deltas;
            row ``i`` is anchor ``i`` of ``spec.anchors_xyxy()``.
        """
        x = images.to(self.pixel_mean.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = (x - self.pixel_mean) / self.pixel_std
        cls_maps, box_maps = self.head(self.fpn(self.backbone(x)))
        return {
            "cls_logits": torch.cat([_flatten(m, self.num_classes) for m in cls_maps], dim=1),
            "box_deltas": torch.cat([_flatten(m, 4) for m in box_maps], dim=1),
        }


def _flatten(m: Tensor, d: int) -> Tensor:
    # (B, A*d, H, W) -> (B, H*W*A, d): y outer, x, then anchor a, matching spec.anchors_xyxy(). In channels_last
    # memory the permute is already contiguous, so the reshape is free.
    return m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, d)


def build_model(spec: DetectorSpec, config: ModelConfig) -> RetinaNet:
    """The default `RetinaNet` for ``spec`` and ``config``."""
    return RetinaNet(spec=spec, config=config)
