"""The training loop: data -> RetinaNet -> focal loss -> optimiser, with COCO evaluation, atomic checkpoints,
exact resume, a time budget, logs and curves.

Artifacts written to ``out`` (docs/ARCHITECTURE.md "Artifacts")::

    spec.json          the DetectorSpec every later stage reads
    ckpt_last.pt       after every epoch and at a stop (resume point), atomically
    ckpt_best.pt       whenever an evaluation beats the best AP so far
    metrics.json       the final evaluation: pycocotools' 12 stats by name + per-class AP (+ run summary)
    train_log.jsonl    one JSON object per logged step ({"type": "step", ...}) and per evaluation ("eval")
    loss.png           loss and AP curves (matplotlib, Agg)

Resume is exact on CPU: the checkpoint holds weights, optimiser and scaler state, the step, the position
inside the epoch, the elapsed time and every RNG state; each epoch's data order is a function of
``(seed, epoch)`` only, so a resumed run replays the rest of the epoch and produces the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import enum
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinaedge.runtime.errors import InputError, RetinaEdgeError, SpecError
from retinaedge.runtime.io import atomic_write_text, ensure_writable_dir
from retinaedge.runtime.spec import DetectorSpec
from retinaedge.train.checkpoint import get_rng_state, read_checkpoint, save_checkpoint, set_rng_state
from retinaedge.train.config import OptimConfig, TrainConfig, config_from_dict, config_to_dict, make_spec
from retinaedge.train.distributed import (
    DistContext,
    GlobalLoss,
    distributed_loader,
    init_distributed,
    resume_batch,
    wrap_model,
)
from retinaedge.train.evaluate import evaluate, split_paths
from retinaedge.train.fit import fit_config

__all__ = ["NonFiniteLossError", "Stop", "Trainer", "lr_factor", "plot_curves", "train"]

LAST = "ckpt_last.pt"
BEST = "ckpt_best.pt"
LOG = "train_log.jsonl"

# config sections that change the weights' meaning: a resume must not change them
_FROZEN_ON_RESUME = ("model", "anchors", "data.input_size")


class NonFiniteLossError(RetinaEdgeError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the batch's image ids."""


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype training uses on ``device``, or None for fp32.

    fp16 on CUDA (with a GradScaler); bf16 on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX), where
    oneDNN runs bf16 convolutions at about twice the fp32 rate; None elsewhere (emulated bf16 is slower).
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _native_bf16_cpu():
        return torch.bfloat16
    return None


def _native_bf16_cpu() -> bool:
    try:  # private helpers (torch >= 2.1); a torch without them gets fp32
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def lr_factor(optim: OptimConfig, step: int, progress: float) -> float:
    """Learning-rate multiplier for optimiser step ``step`` (0-based) at training ``progress`` in [0, 1].

    Linear warmup from ``warmup_factor`` over ``warmup_iters`` steps, times a cosine decay to
    ``min_lr_factor`` or a step decay by ``step_gamma`` at each milestone fraction.
    """
    progress = min(max(progress, 0.0), 1.0)
    warm = 1.0
    if step < optim.warmup_iters:
        a = step / optim.warmup_iters
        warm = optim.warmup_factor * (1.0 - a) + a
    if optim.schedule == "cosine":
        decay = optim.min_lr_factor + (1.0 - optim.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = optim.step_gamma ** sum(progress >= m for m in optim.milestones)
    return warm * decay


class _ProgressivePhase:
    """The low-resolution phase of progressive resizing: a spec, a loss and a batch resize for a smaller input."""

    def __init__(self, spec: DetectorSpec, loss: Any) -> None:
        self.spec = spec
        self.loss = loss

    @classmethod
    def make(cls, spec: DetectorSpec, cfg: TrainConfig, *, base_loss: Any) -> _ProgressivePhase:
        import dataclasses

        from retinaedge.train.losses import RetinaNetLoss

        f = cfg.data.progressive_size / min(spec.input_height, spec.input_width)
        h, w = round(spec.input_height * f), round(spec.input_width * f)
        try:
            low_spec = dataclasses.replace(spec, input_height=h, input_width=w)
        except SpecError as e:
            raise InputError(f"config data.progressive_size={cfg.data.progressive_size} gives a {h}x{w} input: "
                             f"{e}") from None
        if not isinstance(base_loss, RetinaNetLoss):
            raise InputError("data.progressive_size needs the built-in RetinaNetLoss (an injected loss_fn has no "
                             "spec to rescale); set data.progressive_size=0")
        return cls(low_spec, base_loss.for_spec(low_spec))

    def resize(self, images: torch.Tensor, targets: Mapping[str, torch.Tensor]
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Downscale a (B, 3, H, W) batch to the low-resolution input (float 0..255); boxes scale with it, padding
        rows stay."""
        import torch.nn.functional as F

        h, w = self.spec.input_height, self.spec.input_width
        sy, sx = h / images.shape[-2], w / images.shape[-1]
        small = F.interpolate(images.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out = dict(targets)
        out["boxes"] = targets["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=targets["boxes"].dtype,
                                                       device=targets["boxes"].device)
        return small, out  # the model puts its input in its own memory format


def _param_groups(model: torch.nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 and not optim.decay_norm_and_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether this torch has fused (single-kernel) optimiser updates for every parameter's device."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the helper: keep the default implementation
        return False
    devices = set(_get_fused_kernels_supported_devices())
    return bool(params) and all(p.device.type in devices and p.is_floating_point() for p in params)


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over ``model``'s trainable parameters (1-D ones undecayed by default).

    AdamW uses torch's fused implementation where it has one for the parameters' device (CPU and CUDA in torch
    >= 2.4): the same update in one kernel instead of a loop over parameters, ~3.2x faster on 2 CPU cores for the
    edge model (11 vs 35 ms a step, ``benchmarks/bench_optimizer_step.py``). SGD keeps torch's default: its fused
    CPU step measured 0.86x the loop. Build the optimiser after the model is on its device.
    """
    groups = _param_groups(model, optim)
    if optim.name == "adamw":
        fused = _fused_supported([p for g in groups for p in g["params"]]) or None  # None: torch's default
        return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, fused=fused)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)


# ---- progress and logs ------------------------------------------------------------------------------

def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Reporter:
    """A rich progress bar on a terminal; plain, greppable lines otherwise (CI logs, files)."""

    def __init__(self, *, total: int | None, log: Callable[[str], None] | None, live: bool | None) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self._log = log
        self._progress: Any = None
        self._task: Any = None
        self.total = total

    def __enter__(self) -> _Reporter:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]train[/] ep {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[ips]} img/s"),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total, epoch="-", loss="-", lr="-",
                                                 ips="-", eta="-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def message(self, text: str) -> None:
        if self._log is not None:
            self._log(text)
        elif self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self, *, step: int, epoch: str, loss: float, lr: float, ips: float, eta: float, line: bool) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, epoch=epoch, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                  ips=f"{ips:.1f}", eta=_fmt_time(eta))
        elif line:
            of = "" if self.total is None else f"/{self.total}"
            self.message(f"step {step}{of} ep {epoch} loss {loss:.4f} lr {lr:.2e} {ips:.1f} img/s "
                         f"ETA {_fmt_time(eta)}")


def plot_curves(log_path: str | Path, png_path: str | Path) -> None:
    """Draw ``loss.png`` from ``train_log.jsonl``: losses per step (left), AP and AP50 per evaluation (right)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps, losses, cls_l, box_l, ev_steps, ap, ap50 = [], [], [], [], [], [], []
    for line in Path(log_path).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "step":
            steps.append(rec["step"])
            losses.append(rec["loss"])
            cls_l.append(rec["cls_loss"])
            box_l.append(rec["box_loss"])
        elif rec.get("type") == "eval":
            ev_steps.append(rec["step"])
            ap.append(rec["AP"])
            ap50.append(rec["AP50"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(steps, losses, label="loss")
    a1.plot(steps, cls_l, label="focal (cls)", alpha=0.7)
    a1.plot(steps, box_l, label="box", alpha=0.7)
    a1.set_xlabel("step")
    a1.set_yscale("log" if losses and min(losses) > 0 else "linear")
    a1.set_title("training loss")
    a1.legend()
    a2.plot(ev_steps, ap, "o-", label="AP")
    a2.plot(ev_steps, ap50, "s-", label="AP50")
    a2.set_xlabel("step")
    a2.set_ylim(0, 1)
    a2.set_title("COCO val")
    a2.legend()
    fig.tight_layout()
    tmp = Path(png_path).with_name(f".{Path(png_path).name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)


@contextmanager
def _rng_preserved() -> Iterator[None]:
    """Evaluation must not move the training RNG streams (a DataLoader draws its base seed from torch)."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


@contextmanager
def _signals_stop(flag: threading.Event) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: finish the step, evaluate and save (like a time budget).

    A second Ctrl-C interrupts at once; further SIGTERMs are ignored while the run saves (schedulers and
    ``pkill`` may repeat SIGTERM before their SIGKILL; the save is what the grace period is for).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _diff_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        key = f"{prefix}{k}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _diff_keys(va, vb, key + ".")
        elif _listify(va) != _listify(vb):
            out.append(key)
    return out


def _listify(v: Any) -> Any:
    return [_listify(x) for x in v] if isinstance(v, tuple | list) else v


class Trainer:
    """One training run. `train` is the function form; build a `Trainer` to inject parts.

    Args:
        config: the training config.
        data: dataset root in the COCO layout (``annotations/instances_{train,val}.json``, ``train/``, ``val/``).
        out: run directory.
        train_ann, train_images, val_ann, val_images: override the paths under ``data``.
        resume: continue from ``out/ckpt_last.pt``.
        log: message sink (default: the console, above the progress bar).
        progress: force the rich bar on/off (default: on when stderr is a terminal).
        stop_after_steps: stop (then evaluate and save, as a time budget does) once this many optimiser
            steps are done in total; the schedule is unchanged, so a later ``resume`` continues the same run.
        model: an injected `RetinaNet` (default: ``build_model(spec, config.model)``).
        loss_fn: an injected loss (default: `RetinaNetLoss` from ``config.loss``).
    """

    def __init__(
        self,
        *,
        config: TrainConfig,
        data: str | Path | None,
        out: str | Path,
        train_ann: str | Path | None = None,
        train_images: str | Path | None = None,
        val_ann: str | Path | None = None,
        val_images: str | Path | None = None,
        resume: bool = False,
        log: Callable[[str], None] | None = None,
        progress: bool | None = None,
        stop_after_steps: int | None = None,
        model: torch.nn.Module | None = None,
        loss_fn: Callable[..., Mapping[str, torch.Tensor]] | None = None,
    ) -> None:
        self.config = config
        self.out = Path(out)
        self.train_ann, self.train_images = split_paths(data, "train", ann=train_ann, images=train_images)
        self.val_ann, self.val_images = split_paths(data, "val", ann=val_ann, images=val_images)
        self.resume = resume
        self.log = log
        self.progress = progress
        self.stop_after_steps = stop_after_steps
        self._model = model
        self._loss_fn = loss_fn

    # -- setup --------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        want = self.config.device
        if want == "cuda" and not torch.cuda.is_available():
            raise InputError("config device='cuda' but CUDA is not available here; use device=auto or cpu")
        if want == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(want)

    def _check_out(self) -> None:
        last = self.out / LAST
        if not self.resume and last.exists():
            raise InputError(
                f"{str(self.out)!r} already holds a run ({LAST}); pass --resume to continue it or choose another --out"
            )

    def _load_resume(self, config: TrainConfig) -> dict[str, Any]:
        ckpt = read_checkpoint(self.out / LAST)
        old = config_to_dict(config_from_dict(ckpt["config"]))
        new = config_to_dict(config)
        changed = _diff_keys(old, new)
        frozen = [k for k in changed if any(k == f or k.startswith(f + ".") for f in _FROZEN_ON_RESUME)]
        if frozen:
            raise InputError(
                f"--resume with changed {frozen}: the checkpoint in {str(self.out)!r} was trained with other values; "
                "resume with the same model/anchors/input size or start a new --out"
            )
        ckpt["_changed"] = changed
        return ckpt

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train, evaluate and save; returns the final metrics (also in ``metrics.json``).

        Under ``torchrun`` every process calls this (`retinaedge.train.distributed`): they train one DDP model
        on their shares of each batch; rank 0 logs, evaluates and writes every artifact, the others wait for
        it, and every rank returns rank 0's metrics.
        """
        dc = self.config.distributed
        ctx = init_distributed(device=self._device(), backend=dc.backend, timeout_min=dc.timeout_min)
        try:
            with ctx.errors("training (DDP gradient all-reduce)"):
                return self._run(ctx)
        finally:
            ctx.close()

    def _run(self, ctx: DistContext) -> dict[str, Any]:
        run = _Run(self, ctx)
        try:
            with run.reporter, _signals_stop(run.stop_flag):
                run.announce()
                run.train()
                run.finish()
        finally:
            run.close()
        return run.summary()

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint (a killed run may have logged past it)."""
        path = self.out / LOG
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if rec.get("step", 0) <= step:
                keep.append(line)
        atomic_write_text(path, "".join(f"{line}\n" for line in keep))


class Stop(enum.IntEnum):
    """Why a run stops before its plan ends; every rank takes the largest (`DistContext.agree_stop`)."""

    NONE = 0
    BUDGET = 1
    STEPS = 2
    SIGNAL = 3

    def reason(self, cfg: TrainConfig, step: int) -> str:
        """The words the summary and ``metrics.json``'s ``stopped`` use."""
        return ("", f"time budget of {cfg.time_budget_min:g} min reached", f"stopped after {step} steps",
                "interrupted (SIGINT/SIGTERM)")[self]


@dataclass
class _RunState:
    """Where a run is. The first five fields are what a checkpoint saves and a resume restores; the rest are this
    process's counters for the summary and the evaluation spacing."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    elapsed0: float = 0.0  # training time before this process (from the checkpoint)
    best_ap: float = -1.0
    t_start: float = 0.0
    agreed_elapsed: float = 0.0  # the budget clock every rank's lr uses
    last_eval_s: float = 0.0
    last_eval_step: int = -1
    train_time: float = 0.0
    images_seen: int = 0
    stop_reason: str = ""
    ended_by: str = ""
    final: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t_start


class _Run:
    """One run of a `Trainer`: the parts, set up once, and a `_RunState`, with the loop's pieces as methods
    (set-up and resume in ``__init__``, `train` -> `_train_epoch` -> `_micro_batch` / `_log_step` /
    `_stop_decision`, `_end_epoch` and `_evaluate_and_checkpoint`), the way detectron2's ``run_step`` reads.
    """

    def __init__(self, trainer: Trainer, ctx: DistContext) -> None:
        from retinaedge.train.data.coco import CocoDetection, read_categories
        from retinaedge.train.losses import RetinaNetLoss
        from retinaedge.train.model import build_model

        self.trainer, self.ctx, self.out = trainer, ctx, trainer.out
        names, cat_ids = read_categories(trainer.train_ann)
        cfg, self.fit_report = fit_config(trainer.config, trainer.train_ann, names, cat_ids)
        self.cfg = cfg

        def prepare() -> dict[str, Any] | None:  # rank 0 owns the run directory; the others get its checkpoint
            ensure_writable_dir(self.out)
            trainer._check_out()
            return trainer._load_resume(cfg) if trainer.resume and (self.out / LAST).is_file() else None

        self.ckpt = ckpt = ctx.on_main(prepare, what="resume checkpoint broadcast")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.device = ctx.device
        self.amp_dtype = autocast_dtype(self.device, cfg.amp)
        self.use_amp = self.amp_dtype is torch.float16  # the GradScaler is for fp16 only; bf16 has fp32's range

        self.spec = spec = make_spec(cfg, names, cat_ids)
        old_spec = DetectorSpec.from_dict(ckpt["spec"]) if ckpt is not None else spec
        if old_spec != spec:
            raise InputError(
                f"--resume: the dataset's classes {list(spec.class_names)} / ids {list(spec.category_ids)} differ "
                f"from the checkpoint's {list(old_spec.class_names)} / {list(old_spec.category_ids)}"
            )
        if ctx.is_main:
            spec.save(self.out / "spec.json")
            atomic_write_text(self.out / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
            if self.fit_report is not None:
                self.fit_report.write(self.out, spec)

        self.messages: list[str] = []
        self.train_ds = CocoDetection(ann_file=trainer.train_ann, image_dir=trainer.train_images, spec=spec,
                                      train=True, augment=cfg.data.augment, log=self.messages.append)
        self.val_ds = CocoDetection(ann_file=trainer.val_ann, image_dir=trainer.val_images, spec=spec, train=False,
                                    log=self.messages.append)
        self.model = model = trainer._model if trainer._model is not None else build_model(spec, cfg.model)
        model.to(self.device)
        self.channels_last = bool(getattr(cfg.model, "channels_last", False))
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        lc = cfg.loss
        self.loss_fn = trainer._loss_fn or RetinaNetLoss(
            spec=spec, alpha=lc.alpha, gamma=lc.gamma, box_loss=lc.box_loss, smooth_l1_beta=lc.smooth_l1_beta,
            fg_iou=lc.fg_iou, bg_iou=lc.bg_iou, allow_low_quality=lc.allow_low_quality, box_weight=lc.box_weight,
        )
        self.low = _ProgressivePhase.make(spec, cfg, base_loss=self.loss_fn) if cfg.data.progressive_size else None
        self.optimizer = build_optimizer(model, cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        self.batches_per_epoch = len(self._loader(0))
        if self.batches_per_epoch == 0:
            raise InputError(f"the training set {str(trainer.train_ann)!r} yields no batches; it has no usable images")
        self.steps_per_epoch = -(-self.batches_per_epoch // cfg.optim.accumulate)  # a short last window steps too
        self.budget_s = cfg.time_budget_min * 60.0
        self.total_steps = cfg.epochs * self.steps_per_epoch  # without a budget; with one, epochs do not end it

        self.state = s = _RunState()
        if ckpt is not None:
            self._restore(ckpt)
        elif ctx.is_main and (self.out / LOG).exists():
            (self.out / LOG).unlink()
        self.train_model = wrap_model(model, ctx, sync_bn=cfg.distributed.sync_bn)  # DDP; `model` stays plain
        self.step_loss = GlobalLoss(ctx, accumulate=cfg.optim.accumulate)
        self.stop_flag = threading.Event()
        s.t_start = time.perf_counter()
        self._log_file = open(self.out / LOG if ctx.is_main else os.devnull, "a", buffering=1)  # noqa: SIM115 - close()
        self.reporter = _Reporter(total=None if self.budget_s else self.total_steps,
                                  log=trainer.log if ctx.is_main else (lambda _: None),
                                  live=trainer.progress if ctx.is_main else False)
        # the optimiser step in progress: micro-batches done, its lr and its progressive phase (None: full size)
        self.micro = 0
        self.lr = 0.0
        self.step_low: _ProgressivePhase | None = None
        # img/s over the logging window, data loading included, evaluation excluded
        self.t_prev, self.window_s, self.window_images = 0.0, 0.0, 0

    def _loader(self, epoch: int) -> Any:  # this rank's share; the global order is a function of (seed, epoch)
        cfg = self.cfg
        return distributed_loader(self.train_ds, batch_size=cfg.data.batch_size, workers=cfg.data.workers,
                                  seed=cfg.seed * 100003, epoch=epoch, ctx=self.ctx)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        """Weights, optimiser, scaler, position, clock, best AP and every RNG state from a checkpoint."""
        s, ctx = self.state, self.ctx
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        s.epoch, s.step = ckpt["epoch"], ckpt["step"]
        s.batch_in_epoch = resume_batch(ckpt["batch"], old_world=int(ckpt.get("world_size", 1)),
                                        old_batch_size=int(ckpt["config"]["data"]["batch_size"]),
                                        world=ctx.world_size, batch_size=self.cfg.data.batch_size)
        s.elapsed0, s.best_ap = float(ckpt["elapsed_s"]), float(ckpt["best_ap"])
        set_rng_state(ckpt["rng"])
        if ctx.is_main:
            self.trainer._truncate_log(s.step)

    # -- what the run prints and writes ---------------------------------------------------------------
    def _write(self, rec: Mapping[str, Any]) -> None:
        self._log_file.write(json.dumps(rec) + "\n")

    def announce(self) -> None:
        """The run's opening lines: resume, the datasets, the fit, the device and the plan."""
        rep, cfg, ckpt, s, low = self.reporter, self.cfg, self.ckpt, self.state, self.low
        if self.trainer.resume and ckpt is None:
            rep.message(f"--resume: no {LAST} in {self.out} (killed before the first epoch ended?); "
                        "starting from scratch")
        if ckpt is not None:
            rep.message(f"resumed from {self.out / LAST}: epoch {s.epoch} step {s.step}"
                        + (f"; changed {ckpt['_changed']}" if ckpt["_changed"] else ""))
        for m in self.messages:  # the datasets' summary lines: images, boxes, skip counts
            rep.message(m)
        for m in self.fit_report.notes if self.fit_report is not None else ():
            rep.message(f"fit: {m}")
        for name, ds in (("train", self.train_ds), ("val", self.val_ds)):
            self._write({"type": "data", "split": name, "images": len(ds.image_ids), "skipped": ds.skip_counts})
        ctx, accumulate = self.ctx, cfg.optim.accumulate
        rep.message(f"training on {self.device} ({torch.get_num_threads()} threads"
                    + (f", {str(self.amp_dtype).removeprefix('torch.')} autocast)" if self.amp_dtype else ", fp32)")
                    + (f" x {ctx.world_size} processes ({ctx.backend})" if ctx.is_distributed else "")
                    + f": {self.steps_per_epoch} steps/epoch"
                    + (f" until the budget of {cfg.time_budget_min:g} min is spent" if self.budget_s
                       else f" x {cfg.epochs} epochs")
                    + (f", {accumulate} micro-batches per step" if accumulate > 1 else "")
                    + (f"; the first {cfg.data.progressive_fraction:.0%} at {low.spec.input_height}x"
                       f"{low.spec.input_width} (progressive resizing)" if low is not None else ""))

    def _checkpoint_payload(self, rng: Mapping[str, Any]) -> dict[str, Any]:
        s = self.state
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.use_amp else {},
            "config": config_to_dict(self.cfg), "spec": self.spec.to_dict(),
            "epoch": s.epoch, "step": s.step, "batch": s.batch_in_epoch,
            "elapsed_s": s.elapsed(), "best_ap": s.best_ap, "rng": rng, "world_size": self.ctx.world_size,
        }

    # -- the loop ---------------------------------------------------------------------------------------
    def train(self) -> None:
        """Epochs until the budget is spent (with one) or the planned epochs are done, or a `Stop`."""
        s, cfg = self.state, self.cfg
        self.model.train()
        _, s.agreed_elapsed = self.ctx.agree_stop(0, s.elapsed())
        if self.ckpt is not None and self.budget_s and s.agreed_elapsed >= self.budget_s:  # resumed, budget spent
            s.stop_reason = f"time budget of {cfg.time_budget_min:g} min already used"
        s.last_eval_s = s.agreed_elapsed
        while (self.budget_s or s.epoch < cfg.epochs) and not s.stop_reason:
            self._train_epoch()
            if s.batch_in_epoch >= self.batches_per_epoch:
                self._end_epoch()

    def _train_epoch(self) -> None:
        """The rest of the current epoch (all of it unless resumed mid-epoch), until a `Stop`."""
        s = self.state
        it = iter(self._loader(s.epoch))
        for _ in range(s.batch_in_epoch):  # resume mid-epoch: replay the same order, skip the batches done
            next(it)
        self.t_prev, self.window_s, self.window_images = time.perf_counter(), 0.0, 0
        for images, targets in it:
            values = self._micro_batch(images, targets)
            if values is None:  # the optimiser step needs more micro-batches
                continue
            self._log_step(values)
            stop = self._stop_decision()
            if stop is not Stop.NONE:
                s.stop_reason = stop.reason(self.cfg, s.step)
                return

    def _begin_step(self) -> None:
        """A new optimiser step: its lr (the schedule spans the budget when there is one) and resolution phase."""
        s, cfg = self.state, self.cfg
        if self.budget_s:
            progress = (s.agreed_elapsed if self.ctx.is_distributed else s.elapsed()) / self.budget_s
        else:
            progress = s.step / self.total_steps
        self.lr = cfg.optim.lr * lr_factor(cfg.optim, s.step, progress)
        low = self.low
        self.step_low = low if low is not None and progress < cfg.data.progressive_fraction else None
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr
        self.optimizer.zero_grad(set_to_none=True)

    def _micro_batch(self, images: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> dict[str, float] | None:
        """Forward and backward of one micro-batch; after the step's last one (``optim.accumulate``, fewer at the
        epoch end), the optimiser step. Returns that step's loss values, or None while the step is open.

        Raises:
            NonFiniteLossError: the step's global loss is NaN/inf (names the step and the batch's image ids).
        """
        s, cfg, ctx = self.state, self.cfg, self.ctx
        if self.micro == 0:
            self._begin_step()
        self.micro += 1
        s.batch_in_epoch += 1
        sync = self.micro == cfg.optim.accumulate or s.batch_in_epoch >= self.batches_per_epoch
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        batch_targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
        low = self.step_low
        if low is not None:
            images, batch_targets = low.resize(images, batch_targets)
        with ctx.maybe_no_sync(self.train_model, sync=sync):  # DDP all-reduces on the step's last micro-batch
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                outputs = self.train_model(images)
                losses = (low.loss if low is not None else self.loss_fn)(outputs, batch_targets)
            # normalised by the positives of the whole step on all ranks; the global value is the one to check
            loss, global_loss = self.step_loss.add(losses)
            if not math.isfinite(global_loss):
                ids = [int(i) for i in targets["image_ids"]]
                raise NonFiniteLossError(
                    f"loss is {global_loss} at step {s.step + 1} (epoch {s.epoch}), batch image ids {ids}"
                    + (f" on rank {ctx.rank}" if ctx.is_distributed else "")
                    + f"; lower optim.lr (now {self.lr:.3g}) or set optim.clip_grad_norm"
                )
            self.scaler.scale(loss).backward()
        n = images.shape[0] * ctx.world_size
        s.images_seen += n
        self.window_images += n
        if not sync:
            return None
        self.micro = 0
        values = self.step_loss.finish(self.model.parameters())  # gradients of the step's global loss
        if cfg.optim.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        s.step += 1
        return values

    def _log_step(self, values: Mapping[str, float]) -> None:
        """The progress bar every step (when live), a log line and a JSONL record every ``log_every`` steps."""
        s, cfg, rep = self.state, self.cfg, self.reporter
        now = time.perf_counter()
        self.window_s += now - self.t_prev
        s.train_time += now - self.t_prev
        self.t_prev = now
        logged = s.step % cfg.log_every == 0 or s.step == 1
        if not (logged or rep.live):
            return
        ips = self.window_images / max(self.window_s, 1e-9)
        if self.budget_s:
            remaining = self.budget_s - s.elapsed()
        else:
            per_step = cfg.data.batch_size * cfg.optim.accumulate * self.ctx.world_size
            remaining = (self.total_steps - s.step) * per_step / max(ips, 1e-9)
        rep.update(step=s.step, epoch=f"{s.epoch + 1}" if self.budget_s else f"{s.epoch + 1}/{cfg.epochs}",
                   loss=values["loss"], lr=self.lr, ips=ips, eta=remaining, line=logged)
        if logged:
            self._write({"type": "step", "epoch": s.epoch, "step": s.step, "lr": self.lr,
                         **{k: round(v, 6) for k, v in values.items()},
                         "img_s": round(ips, 2), "elapsed_s": round(s.elapsed(), 2)})
            self.window_s, self.window_images = 0.0, 0

    def _stop_decision(self) -> Stop:
        """After each optimiser step: the budget, ``stop_after_steps`` or a signal; the same on every rank."""
        s, budget_s, stop_after = self.state, self.budget_s, self.trainer.stop_after_steps
        stop = Stop.NONE
        if budget_s and s.elapsed() >= budget_s:
            stop = Stop.BUDGET
        elif stop_after is not None and s.step >= stop_after:
            stop = Stop.STEPS
        elif self.stop_flag.is_set():
            stop = Stop.SIGNAL
        code, s.agreed_elapsed = self.ctx.agree_stop(int(stop), s.elapsed())  # every rank stops together
        return Stop(code)

    def _end_epoch(self) -> None:
        """Evaluate and checkpoint when due (every ``eval_every`` epochs; with a budget, no closer than a quarter
        of it, the last evaluation follows the stop), else save the resume point."""
        s, cfg, ctx = self.state, self.cfg, self.ctx
        s.epoch += 1
        s.batch_in_epoch = 0
        due = bool(cfg.eval_every and s.epoch % cfg.eval_every == 0)
        if self.budget_s:
            _, now_s = ctx.agree_stop(0, s.elapsed())
            due = due and now_s - s.last_eval_s >= self.budget_s / 4
        if due or (not self.budget_s and s.epoch == cfg.epochs):
            s.final = self._evaluate_and_checkpoint()
            _, s.last_eval_s = ctx.agree_stop(0, s.elapsed())
        elif ctx.is_main:
            save_checkpoint(self.out / LAST, self._checkpoint_payload(get_rng_state()))

    def _evaluate_and_checkpoint(self) -> dict[str, Any]:
        """COCO-evaluate on the val split, log it, save ``ckpt_last.pt`` (and ``ckpt_best.pt`` when the AP is the
        best so far) and the curves. Rank 0 does it; the others wait at a barrier."""
        s, ctx, out = self.state, self.ctx, self.out
        if not ctx.is_main:
            s.last_eval_step = s.step
            ctx.barrier("waiting for rank 0's evaluation and checkpoint")
            return {"evaluated_by_rank": 0}
        rng = get_rng_state()  # the resume point: captured before evaluation touches anything
        t0 = time.perf_counter()
        with _rng_preserved():
            metrics = evaluate(self.model, self.val_ds, self.spec, batch_size=self.cfg.eval_batch_size,
                               device=self.device)
        self.model.train()
        s.last_eval_step = s.step
        self.reporter.message(f"eval  epoch {s.epoch} step {s.step}: AP {metrics['AP']:.4f}  "
                              f"AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
                              f"({time.perf_counter() - t0:.1f}s)")
        self._write({"type": "eval", "epoch": s.epoch, "step": s.step, "elapsed_s": round(s.elapsed(), 2),
                     **{k: v for k, v in metrics.items() if k != "pr_curves"}})
        improved = metrics["AP"] > s.best_ap
        if improved:
            s.best_ap = float(metrics["AP"])
        payload = self._checkpoint_payload(rng)
        save_checkpoint(out / LAST, payload)
        if improved:  # for export/eval: weights, config, spec; no optimiser state
            save_checkpoint(out / BEST, {**payload, "optimizer": {}, "scaler": {}})
        plot_curves(out / LOG, out / "loss.png")
        ctx.barrier("rank 0 releasing the others after evaluation")
        return metrics

    def finish(self) -> None:
        """Say what ended the run; the final evaluation and checkpoint unless the last epoch end just did them."""
        s, rep = self.state, self.reporter
        s.ended_by = s.stop_reason or f"planned {self.cfg.epochs} epochs done"
        fresh = s.last_eval_step == s.step and bool(s.final)
        rep.message(f"stopped: {s.ended_by} at epoch {s.epoch} step {s.step}"
                    + ("" if fresh else "; evaluating and saving"))
        if not fresh:
            s.final = self._evaluate_and_checkpoint()
        skips = self.train_ds.skip_counts
        if any(skips.values()):  # corrupt images are only found while loading
            rep.message(f"train: skipped/fixed {({k: v for k, v in skips.items() if v})}")
        self._write({"type": "data", "split": "train", "images": len(self.train_ds.image_ids), "skipped": skips,
                     "at": "end"})

    def close(self) -> None:
        self._log_file.close()

    def summary(self) -> dict[str, Any]:
        """The final metrics plus the run summary, written to ``metrics.json`` by rank 0, the same on every rank."""
        s = self.state
        summary = {
            "epoch": s.epoch, "step": s.step, "stopped": s.stop_reason or None, "ended_by": s.ended_by,
            "best_AP": s.best_ap, "wall_time_s": round(s.elapsed(), 2), "train_time_s": round(s.train_time, 2),
            "train_img_per_s": round(s.images_seen / s.train_time, 2) if s.train_time else None,
        }
        result = {**{k: v for k, v in s.final.items() if k != "pr_curves"}, **summary}
        if self.ctx.is_main:
            atomic_write_text(self.out / "metrics.json", json.dumps(result, indent=2) + "\n")
        return self.ctx.broadcast_object(result, what="final metrics broadcast")


def train(config: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Train a RetinaNet and write the run's artifacts to ``out``: ``Trainer(config=config, **kwargs).run()``.

    Args:
        config: the training config.
        **kwargs: `Trainer`'s keyword arguments (``data``, ``out`` required; ``resume``, ``log``, ``progress``,
            ``stop_after_steps``, the split paths, an injected ``model`` or ``loss_fn``).

    Returns:
        The final metrics: the 12 COCO stats by name, ``per_class_AP``, and the run summary (``epoch``,
        ``step``, ``stopped``, ``ended_by``, ``best_AP``, ``wall_time_s``, ``train_img_per_s``).

    Raises:
        InputError: bad paths, an out dir that already holds a run (without ``resume``), a resume whose
            config changes the architecture.
        NonFiniteLossError: the loss became NaN/inf (names the step and the batch's image ids).
    """
    return Trainer(config=config, **kwargs).run()
