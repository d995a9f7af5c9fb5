"""`TrainConfig`: the one typed, frozen configuration of the training stage.

Loaded from a preset (``edge``, ``r50-fpn`` -> ``train/presets/<name>.toml``) or a ``.toml`` path with
`load_config`, and overridden with ``--set a.b=c`` strings whose values are parsed as TOML values and then
checked against the type of the target field (``--set optim.lr=3e-4``, ``--set data.input_size=[256,320]``,
``--set model.backbone=resnet34``). Unknown keys and bad values raise a one-line `InputError` naming the key,
the value and the allowed keys or values.

`make_spec` turns a config and the dataset's classes into the `DetectorSpec` every later stage reads.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec, PostProcess
from retinaedge.train.data.transforms import AugmentConfig
from retinaedge.train.model import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_DIR = Path(__file__).resolve().with_name("presets")  # resolve: strict editable installs link files

OptimName = Literal["sgd", "adamw"]
Schedule = Literal["cosine", "step"]
BoxLoss = Literal["smooth_l1", "giou"]
Device = Literal["auto", "cpu", "cuda"]
DistBackend = Literal["auto", "nccl", "gloo"]


def _err(key: str, value: object, rule: str) -> InputError:
    return InputError(f"config {key}={value!r} {rule}")


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise _err(key, value, "must be a finite number " + (">= 0" if allow_zero else "> 0"))


@dataclass(frozen=True)
class DataConfig:
    """Input pipeline.

    Attributes:
        input_size: network input ``(height, width)`` in pixels (an int means square); each a multiple of the
            largest anchor stride. Images are letterboxed into it (runtime/preprocess.py).
        batch_size: images per optimiser step.
        workers: DataLoader worker processes (0 = load in the main process).
        augment: training augmentation (flip, photometric jitter); evaluation never augments.
        progressive_size: progressive resizing: a smaller square input (a multiple of the largest stride, below
            ``input_size``) that the first ``progressive_fraction`` of training runs at, each batch downscaled
            (antialiased) from the letterboxed input, boxes and anchors scaled alike; 0 = off. A step at half
            the side costs ~1/4: more images early, when features are coarse, for the same budget.
        progressive_fraction: fraction of the training progress (steps, or the time budget when one is given)
            trained at ``progressive_size``; the rest runs at ``input_size``.
    """

    input_size: tuple[int, int] | int = (640, 640)
    batch_size: int = 16
    workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    progressive_size: int = 0
    progressive_fraction: float = 0.0

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, int) and not isinstance(size, bool):
            object.__setattr__(self, "input_size", (size, size))
        elif isinstance(size, list | tuple) and len(size) == 2:
            object.__setattr__(self, "input_size", (size[0], size[1]))
        for v in typing.cast(tuple[int, int], self.input_size):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise _err("data.input_size", size, "must be a positive int or [height, width] of positive ints")
        if self.batch_size <= 0:
            raise _err("data.batch_size", self.batch_size, "must be >= 1")
        if self.workers < 0:
            raise _err("data.workers", self.workers, "must be >= 0 (0 loads in the main process)")
        if self.progressive_size < 0 or (self.progressive_size and self.progressive_size >= min(self.input_size)):
            raise _err("data.progressive_size", self.progressive_size,
                       f"must be 0 (off) or below the input size {list(self.input_size)}; set "
                       "data.progressive_size=0 to train at one size")
        if not 0.0 <= self.progressive_fraction <= 1.0:
            raise _err("data.progressive_fraction", self.progressive_fraction, "must be in [0, 1]")


@dataclass(frozen=True)
class LossConfig:
    """Focal loss, box loss and anchor matching (Lin et al. 2017, section 4).

    Attributes:
        alpha: focal-loss class weight for positives, in [0, 1]; -1 disables the weighting.
        gamma: focusing parameter (0 = cross entropy).
        box_loss: ``smooth_l1`` on center-size deltas, or ``giou`` on decoded boxes.
        smooth_l1_beta: smooth-L1 transition point (0 = L1).
        fg_iou: IoU at or above which an anchor is positive.
        bg_iou: IoU below which an anchor is negative (between: ignored).
        allow_low_quality: also match each ground-truth box to its best anchors below ``fg_iou``.
        box_weight: weight of the box loss against the class loss.
    """

    alpha: float = 0.25
    gamma: float = 2.0
    box_loss: BoxLoss = "smooth_l1"
    smooth_l1_beta: float = 0.1
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    allow_low_quality: bool = False
    box_weight: float = 1.0

    def __post_init__(self) -> None:
        if not (self.alpha == -1 or 0.0 <= self.alpha <= 1.0):
            raise _err("loss.alpha", self.alpha, "must be in [0, 1], or -1 for no class weighting")
        _positive("loss.gamma", self.gamma, allow_zero=True)
        _positive("loss.smooth_l1_beta", self.smooth_l1_beta, allow_zero=True)
        _positive("loss.box_weight", self.box_weight, allow_zero=True)
        if not 0.0 < self.bg_iou <= self.fg_iou <= 1.0:
            raise _err("loss.bg_iou/fg_iou", (self.bg_iou, self.fg_iou), "need 0 < bg_iou <= fg_iou <= 1")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    The schedule is a function of training *progress* in [0, 1]: the fraction of planned steps done, or,
    with a time budget, the fraction of the budget used if that is larger, so a budgeted run still anneals.

    Attributes:
        name: ``sgd`` (with momentum) or ``adamw``.
        lr: peak learning rate (for the batch size configured; nothing rescales it).
        momentum: SGD momentum (ignored by AdamW).
        betas: AdamW betas.
        weight_decay: L2 / decoupled weight decay.
        decay_norm_and_bias: also decay 1-D parameters (norm scales, biases); off keeps them undecayed.
        warmup_iters: linear warmup steps from ``warmup_factor * lr`` to ``lr``.
        warmup_factor: start factor of the warmup.
        schedule: ``cosine`` (to ``min_lr_factor * lr``) or ``step`` (x ``step_gamma`` at each milestone).
        milestones: step-schedule milestones as fractions of progress (the paper: 60k and 80k of 90k).
        step_gamma: step-schedule factor.
        min_lr_factor: cosine floor as a fraction of ``lr``.
        clip_grad_norm: max global gradient norm (0 = no clipping).
        accumulate: micro-batches per optimiser step (gradient accumulation): one step sees
            ``data.batch_size * accumulate * number of processes`` images, so lowering ``data.batch_size`` or
            the process count while raising this keeps the effective batch (and ``lr``) the same.
    """

    name: OptimName = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    schedule: Schedule = "step"
    milestones: tuple[float, ...] = (0.667, 0.889)
    step_gamma: float = 0.1
    min_lr_factor: float = 0.0
    clip_grad_norm: float = 0.0
    accumulate: int = 1

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _positive("optim.clip_grad_norm", self.clip_grad_norm, allow_zero=True)
        if self.accumulate < 1:
            raise _err("optim.accumulate", self.accumulate, "must be >= 1 (micro-batches per optimiser step)")
        if not 0.0 <= self.momentum < 1.0:
            raise _err("optim.momentum", self.momentum, "must be in [0, 1)")
        if self.warmup_iters < 0:
            raise _err("optim.warmup_iters", self.warmup_iters, "must be >= 0")
        if not 0.0 < self.warmup_factor <= 1.0:
            raise _err("optim.warmup_factor", self.warmup_factor, "must be in (0, 1]")
        if any(not 0.0 < m < 1.0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise _err("optim.milestones", self.milestones, "must be increasing fractions of training in (0, 1)")
        if not 0.0 < self.step_gamma <= 1.0:
            raise _err("optim.step_gamma", self.step_gamma, "must be in (0, 1]")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise _err("optim.min_lr_factor", self.min_lr_factor, "must be in [0, 1]")


@dataclass(frozen=True)
class AnchorsConfig:
    """Anchor overrides for the spec; ``None`` keeps `retinaedge.runtime.spec.AnchorSpec`'s default.

    Smaller ``sizes`` suit small objects (e.g. 8 px shapes need a 16 px base at stride 8).
    """

    strides: tuple[int, ...] | None = None
    sizes: tuple[float, ...] | None = None
    scales: tuple[float, ...] | None = None
    aspect_ratios: tuple[float, ...] | None = None
    offset: float | None = None


@dataclass(frozen=True)
class FitConfig:
    """Fit the recipe to the training data before training (`retinaedge.train.data.inspect.fit_recipe`).

    The fitted values are printed, written into the run's config and spec, and pinned by naming the field in
    ``--set`` (``--set data.input_size=[256,256]`` keeps that size; ``--set anchors.sizes=[...]`` those sizes).

    Attributes:
        input_size: choose the input from the images' native size (rounded up to a multiple of 32, never above
            ``data.input_size``, raised only when the boxes would get too small; the images' aspect when they
            share one).
        anchors: fit the anchor size of each FPN level (and the aspect ratios, when the boxes' own cover more)
            to the training boxes, maximising the share with an anchor at IoU >= ``loss.fg_iou``.
    """

    input_size: bool = False
    anchors: bool = False


@dataclass(frozen=True)
class PostprocessConfig:
    """Post-processing overrides for the spec; ``None`` keeps `retinaedge.runtime.spec.PostProcess`'s default."""

    score_threshold: float | None = None
    iou_threshold: float | None = None
    topk_per_level: int | None = None
    max_detections: int | None = None
    class_agnostic: bool | None = None


@dataclass(frozen=True)
class DistributedConfig:
    """Multi-process training under ``torchrun`` (`retinaedge.train.distributed`); unused in a single process.

    Attributes:
        sync_bn: convert BatchNorm layers to ``SyncBatchNorm`` (batch statistics over all processes). Needs
            CUDA; FrozenBatchNorm and GroupNorm are never converted.
        backend: ``auto`` (NCCL on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
        timeout_min: process-group timeout: a collective that waits longer raises instead of hanging. It must
            exceed rank 0's evaluation time, during which the other processes wait.
    """

    sync_bn: bool = False
    backend: DistBackend = "auto"
    timeout_min: float = 30.0

    def __post_init__(self) -> None:
        _positive("distributed.timeout_min", self.timeout_min)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data paths.

    Attributes:
        model: architecture (`retinaedge.train.model.ModelConfig`).
        data: input size, batch, loader workers, augmentation.
        loss: focal/box loss and matching.
        optim: optimiser and schedule.
        anchors: anchor overrides for the spec.
        postprocess: post-processing overrides for the spec.
        fit: what to fit to the training data before training (input size, anchors).
        distributed: torchrun/DDP options (SyncBN, backend, timeout).
        epochs: planned epochs (the schedule spans them); ignored when a time budget is given.
        time_budget_min: train until this many minutes of wall time since the run (first) started are spent
            (as many epochs as fit; the schedule anneals over the budget), finish the step, evaluate and save;
            0 = no budget (``epochs`` then ends the run).
        seed: seeds torch, numpy, Python and the data order.
        amp: mixed precision: fp16 autocast + GradScaler on CUDA; bf16 autocast on CPUs with native bf16
            (AVX512-BF16 or AMX, ~1.8x the fp32 step rate on a 2-core Zen 4), fp32 on other CPUs. The loss,
            the weights and evaluation stay fp32.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        num_threads: ``torch.set_num_threads`` (0 = leave torch's default).
        eval_every: COCO evaluation every N epochs (0 = only at the end); the last epoch always evaluates.
            With a time budget, an epoch end evaluates only once a quarter of the budget has passed since the
            last evaluation (short epochs would otherwise spend the budget evaluating).
        eval_batch_size: images per evaluation batch.
        log_every: steps between ``train_log.jsonl`` lines and progress-bar updates.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    epochs: int = 12
    time_budget_min: float = 0.0
    seed: int = 0
    amp: bool = True
    device: Device = "auto"
    num_threads: int = 0
    eval_every: int = 1
    eval_batch_size: int = 8
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise _err("epochs", self.epochs, "must be >= 1")
        _positive("time_budget_min", self.time_budget_min, allow_zero=True)
        for key in ("num_threads", "eval_every"):
            if getattr(self, key) < 0:
                raise _err(key, getattr(self, key), "must be >= 0")
        for key in ("eval_batch_size", "log_every"):
            if getattr(self, key) <= 0:
                raise _err(key, getattr(self, key), "must be >= 1")


# ---- generic typed (de)serialisation ----------------------------------------------------------------

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` (parsed TOML) against annotation ``tp``; return it in the field's Python type."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise InputError(f"config {key}={value!r} must be a table of {sorted(f.name for f in fields(tp))}")
        return _build(tp, value, key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or type(value) is not type(allowed[0]):
            raise InputError(f"config {key}={value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        members = get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in members:
            return None
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member, key)
            except InputError as e:
                errors.append(str(e))
        raise InputError(errors[-1] if len(errors) == 1 else
                         f"config {key}={value!r} matches none of {[_type_name(m) for m in members]}")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple):
            raise InputError(f"config {key}={value!r} must be a list, e.g. [1, 2]")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise InputError(f"config {key}={value!r} must be a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"config {key}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"config {key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"config {key}={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"config {key}={value!r} must be a string")
        return value
    if tp is Any:
        return value
    raise InputError(f"config {key}: unsupported field type {_type_name(tp)}")  # a programming error


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f" in [{prefix}]" if prefix else ""
        raise InputError(f"unknown config key{'s' if len(unknown) > 1 else ''} {unknown}{where}; "
                         f"allowed: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InputError(f"config [{prefix or 'root'}] is incomplete ({e})") from None


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain nested dict (tuples kept) of the config: safe in ``torch.load(weights_only=True)`` files."""
    return dataclasses.asdict(config)


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Inverse of `config_to_dict`; missing keys take defaults, unknown keys raise `InputError`."""
    return typing.cast(TrainConfig, _build(TrainConfig, _listify(data)))


def _listify(value: Any) -> Any:
    """Tuples -> lists so dicts from `config_to_dict` take the same path as parsed TOML."""
    if isinstance(value, Mapping):
        return {k: _listify(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_listify(v) for v in value]
    return value


def _field_type(key: str) -> Any:
    """Annotation of dotted ``key`` in `TrainConfig`, or `InputError` naming the allowed keys."""
    cls: Any = TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = _hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            raise InputError(f"unknown config key {key!r}: {part!r} is not in {where}; allowed: {list(hints)}")
        tp = hints[part]
        if i < len(parts) - 1:
            if not (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
                raise InputError(f"unknown config key {key!r}: {'.'.join(parts[: i + 1])} is a value, not a table")
            cls = tp
    return tp


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``a.b=c`` override into ``(key, value)``; the value is parsed as TOML, else kept a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"override {text!r} is not key=value; e.g. --set optim.lr=0.001")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words: --set model.backbone=resnet34
    _field_type(key)
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each ``a.b=c`` override in the nested dict ``data`` (in place) and return it."""
    for text in overrides:
        key, value = parse_override(text)
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.get(p)
            if not isinstance(child, dict):
                child = node[p] = {}
            node = child
        tp = _field_type(key)
        _coerce(value, tp, key)  # fail here, naming the override, before the whole config is rebuilt
        node[leaf] = value
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a preset by name or a ``.toml`` file and apply ``key=value`` overrides.

    Args:
        name_or_path: ``"edge"``, ``"r50-fpn"`` or a path to a TOML file with the same tables as
            `TrainConfig` (``[model]``, ``[data]``, ``[loss]``, ``[optim]``, ``[anchors]``, ``[postprocess]``
            and top-level keys); missing keys take the dataclass defaults.
        overrides: ``"a.b=c"`` strings; values are TOML (``3e-4``, ``true``, ``[256, 256]``, ``"x"``) or bare
            words.

    Raises:
        InputError: unknown preset, unreadable/invalid TOML, unknown key or a value of the wrong type.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix != ".toml":
        if text not in preset_names():
            raise InputError(f"config {text!r} is neither a preset nor a .toml file; presets: {preset_names()}")
        path = PRESET_DIR / f"{text}.toml"
    if not path.is_file():
        raise InputError(f"config file {str(path)!r} does not exist; presets: {preset_names()}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"config file {str(path)!r} is not valid TOML ({e})") from None
    apply_overrides(data, overrides)
    _pin_fitted(data, overrides)
    return typing.cast(TrainConfig, _build(TrainConfig, data))


_FITTED = {"data.input_size": "fit.input_size", "anchors.sizes": "fit.anchors",
           "anchors.aspect_ratios": "fit.anchors"}
"""Config fields the data fit chooses -> the switch that an explicit ``--set`` of that field turns off."""


def _pin_fitted(data: dict[str, Any], overrides: Sequence[str]) -> None:
    """An override of a fitted field pins it: that fit is switched off (the value given wins over any fit)."""
    keys = {parse_override(t)[0] for t in overrides}
    for key, switch in _FITTED.items():
        if key in keys:
            data.setdefault("fit", {})[switch.split(".")[1]] = False


def make_spec(config: TrainConfig, class_names: Sequence[str], category_ids: Sequence[int]) -> DetectorSpec:
    """The `DetectorSpec` of a model trained with ``config`` on a dataset with these classes.

    Args:
        config: the training config (input size, anchor and post-processing overrides).
        class_names: one name per contiguous class index.
        category_ids: the dataset's category id for each class index.
    """
    anchor_kw = {k: v for k, v in dataclasses.asdict(config.anchors).items() if v is not None}
    post_kw = {k: v for k, v in dataclasses.asdict(config.postprocess).items() if v is not None}
    h, w = typing.cast(tuple[int, int], config.data.input_size)
    return DetectorSpec(
        class_names=tuple(class_names),
        category_ids=tuple(int(c) for c in category_ids),
        input_height=h,
        input_width=w,
        anchors=AnchorSpec(**anchor_kw),
        postprocess=PostProcess(**post_kw),
    )
