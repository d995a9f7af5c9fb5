"""Quantisation-aware fine-tuning (``retinaedge qat``): ModelOpt torch INT8 quantisers, our trainer, Q/DQ ONNX.

Steps (`run_qat`):

1. load the trained FP32 checkpoint (`retinaedge.train.checkpoint.load_checkpoint`);
2. fold each BatchNorm into its conv (`fold_batchnorm`: what torch.onnx does before PTQ sees the graph), insert
   INT8 quantisers with NVIDIA ModelOpt (``modelopt.torch.quantization.quantize``, `quant_config`) and
   calibrate them (max) on the images ``retinaedge export`` calibrates on
   (`retinaedge.runtime.calibration.calibration_folder`: ``DATA/train`` for a dataset root) through the runtime's
   own letterbox (`retinaedge.export.calib.load_calibration_set`), the first ``calib_images``;
3. fine-tune with the project's trainer (`retinaedge.train.trainer.Trainer`, the quantised model injected) at a
   small lr (the checkpoint's lr x ``lr_scale``, a short warm-up, the checkpoint's schedule over ``--minutes``);
4. export the best checkpoint of the fine-tuning as ``RUN/export/model.int8.onnx`` (`export_qat_onnx`): torch.onnx
   (TorchScript exporter: ModelOpt's quantisers export as ONNX QuantizeLinear/DequantizeLinear through their
   symbolic functions), the same sanitize/concat as every export (`retinaedge.export.surgery.prepare_pre_nms`),
   the FP32 NMS tail (`retinaedge.export.surgery.finalize`), precision metadata ``int8``, the TensorRT lint.

The Q/DQ matches what ModelOpt's ONNX PTQ (`retinaedge.export.int8.quantize_int8_tensorrt`) writes, checked by
`check_qdq` on every export: symmetric INT8 (int8 zero points, all 0), per-channel weights on axis 0 (FP32
weight -> QuantizeLinear -> DequantizeLinear, as ModelOpt ONNX writes them) of the BatchNorm-folded convs, per-tensor
activations on every Conv input, the stem's MaxPool input and the residual Adds' shortcut input
(`register_residual_blocks`), constant positive scales, and the same excluded tail: nothing between the heads' last
convs and ``cls_logits``/``box_deltas`` is quantised (torch quantises module *inputs* only; the outputs' quantisers
are off), so the logits reach the plugin unquantised; the compute nodes are the FP32 graph's. What differs
(`qdq_summary` records it in ``export.json``): ModelOpt ONNX also quantises the FPN's top-down Resize and Add inputs
(functional calls in ``FPN.forward``; FP32 here) and leaves convs with <= 8 channels in FP32 (quantised here).
TensorRT builds both strongly typed.

Run directory (``--out``): the trainer's artifacts (``ckpt_last.pt``, ``ckpt_best.pt``, ``train_log.jsonl``,
``metrics.json``, ...; their state_dicts hold the quantisers' ``_amax`` buffers too) plus ``qat_state.pt``: the
ModelOpt state (``modelopt.torch.opt.modelopt_state``: which quantisers, where, their attributes), the calibrated
weights, the training config, the source checkpoint and the calibration images. ``--resume`` rebuilds the
quantised model from ``qat_state.pt`` (``modelopt.torch.opt.restore_from_modelopt_state``) and lets the trainer
restore ``ckpt_last.pt`` exactly as training's resume does. All files load with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.spec import DetectorSpec, NmsMode

log = logging.getLogger(__name__)

Echo = Callable[[str], None]

QAT_STATE = "qat_state.pt"
QAT_FORMAT = "retinaedge-qat"
QAT_VERSION = 1
EXPORT_DIR = "export"
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def quant_config() -> dict[str, Any]:
    """ModelOpt's ``INT8_DEFAULT_CFG``: INT8 per-channel (axis 0) weights, per-tensor activations, max calibration.

    The same scheme ModelOpt's ONNX PTQ uses for ``quantize_mode="int8"``: symmetric, zero point 0, weights per
    output channel, one activation scale per tensor. BatchNorm and the like stay unquantised (ModelOpt's defaults).
    """
    import copy

    mtq = _mtq()
    cfg: dict[str, Any] = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    # the residual Add's shortcut input, where ModelOpt ONNX PTQ puts a Q/DQ too (`register_residual_blocks`)
    cfg["quant_cfg"].append({"quantizer_name": "*residual_quantizer", "cfg": {"num_bits": 8, "axis": None}})
    return cfg


_REGISTERED: list[bool] = []


def register_residual_blocks() -> None:
    """Register quantised twins of torchvision's ``BasicBlock``/``Bottleneck`` with ModelOpt (once per process).

    ModelOpt ONNX PTQ quantises the shortcut input (input 1) of each residual Add, so TensorRT can fuse the Add
    into the INT8 conv before it; the torch side quantises modules, and the Add is inside the block's forward. The
    twin's forward is torchvision's with a ``residual_quantizer`` on the shortcut. (The FPN's top-down Add and
    Resize, which PTQ also quantises, are functional calls in ``FPN.forward`` and stay FP32 here.)
    """
    if _REGISTERED:
        return
    from modelopt.torch.quantization.nn import TensorQuantizer
    from torchvision.models.resnet import BasicBlock, Bottleneck

    class QuantBasicBlock(BasicBlock):  # type: ignore[misc]
        def _setup(self) -> None:
            self.residual_quantizer = TensorQuantizer()

        def forward(self, x: Any) -> Any:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + self.residual_quantizer(identity))

    class QuantBottleneck(Bottleneck):  # type: ignore[misc]
        def _setup(self) -> None:
            self.residual_quantizer = TensorQuantizer()

        def forward(self, x: Any) -> Any:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
            out = self.bn3(self.conv3(out))
            return self.relu(out + self.residual_quantizer(identity))

    mtq = _mtq()
    mtq.register(original_cls=BasicBlock, quantized_cls=QuantBasicBlock)
    mtq.register(original_cls=Bottleneck, quantized_cls=QuantBottleneck)
    _REGISTERED.append(True)


@dataclass(frozen=True)
class QatConfig:
    """One ``retinaedge qat`` run.

    Attributes:
        checkpoint: the trained FP32 checkpoint (``RUN/ckpt_best.pt``).
        data: dataset root (COCO layout, as for ``retinaedge train``); calibration images from it as export takes them.
        out: the QAT run directory.
        minutes: fine-tuning time budget (the trainer's ``time_budget_min``); None: ``epochs`` end it.
        epochs: fine-tuning epochs when no budget is given.
        lr_scale: the fine-tuning lr as a fraction of the checkpoint's (QAT starts from a trained model).
        warmup_iters: warm-up steps of the fine-tuning schedule.
        calib_images: calibration images (from ``DATA/train``, else ``DATA/val``, as ``export`` picks them).
        resume: continue the run in ``out``.
        stop_after_steps: stop after this many optimiser steps in total (tests; a later ``resume`` continues).
        nms: the NMS tail of the exported file.
        opset: the export opset.
        train_overrides: flat ``{"optim.clip_grad_norm": 1.0}`` changes to the fine-tuning config.
    """

    checkpoint: Path
    data: Path
    out: Path
    minutes: float | None = None
    epochs: int = 1
    lr_scale: float = 0.01
    warmup_iters: int = 20
    calib_images: int = 64
    resume: bool = False
    stop_after_steps: int | None = None
    nms: NmsMode = "efficient"
    opset: int = 17
    train_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.minutes is not None and not self.minutes > 0:
            raise InputError(f"--minutes {self.minutes!r} must be > 0; e.g. --minutes 5")
        if self.epochs < 1:
            raise InputError(f"epochs {self.epochs!r} must be >= 1")
        if not 0 < self.lr_scale <= 1:
            raise InputError(f"lr_scale {self.lr_scale!r} must be in (0, 1]; QAT fine-tunes at a small lr, e.g. 0.01")
        if self.calib_images < 1:
            raise InputError(f"calib_images {self.calib_images!r} must be >= 1")
        if self.nms not in ("efficient", "onnx", "none"):
            raise InputError(f"nms {self.nms!r} is not one of ['efficient', 'onnx', 'none']")


@dataclass(frozen=True)
class QatResult:
    """What `run_qat` did.

    Attributes:
        out: the run directory.
        metrics: the trainer's final metrics (torch, fake-quantised model, on DATA/val).
        onnx: ``RUN/export/model.int8.onnx`` (None when ``export`` was off).
        lint: its lint summary.
        qdq: `qdq_summary` of the exported pre-NMS graph.
    """

    out: Path
    metrics: dict[str, Any]
    onnx: Path | None
    lint: str | None
    qdq: dict[str, Any] | None


# ---- ModelOpt ---------------------------------------------------------------------------------------------
def _mtq() -> Any:
    from retinaedge.runtime._lazy import require

    return require("modelopt.torch.quantization", purpose="quantisation-aware training")


def _mto() -> Any:
    from retinaedge.runtime._lazy import require

    return require("modelopt.torch.opt", purpose="quantisation-aware training")


def fold_batchnorm(model: Any) -> int:
    """Fold every BatchNorm that directly follows a Conv2d into that conv (in place); returns the count.

    ``torch.onnx`` folds Conv+BatchNorm of an eval-mode model, so ModelOpt's ONNX PTQ quantises the *folded*
    weights. Quantising the torch conv before its BatchNorm instead would leave a BatchNormalization node after
    each quantised Conv in the exported graph (20 in a ResNet-18) and quantise other weights than PTQ does. So QAT
    folds first (the BatchNorm becomes ``nn.Identity``, the conv gets the bias) and fine-tunes the folded weights;
    the statistics are frozen, as QAT recipes do. Pairs are a Conv2d and the BatchNorm2d/FrozenBatchNorm2d named
    right after it inside one module (torchvision's ResNet blocks, ``downsample``, conv+BN ``Sequential`` s) whose
    features match; `quantize_model` checks that the folded model computes what the original did.
    """
    import torch

    def is_bn(m: Any) -> bool:
        return isinstance(m, torch.nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d"

    count = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bname, bn) in itertools.pairwise(children):
            if not (isinstance(conv, torch.nn.Conv2d) and is_bn(bn) and bn.weight.shape[0] == conv.out_channels):
                continue
            with torch.no_grad():
                eps = float(getattr(bn, "eps", 1e-5))
                scale = bn.weight / torch.sqrt(bn.running_var + eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                folded = (bias - bn.running_mean) * scale + bn.bias
                conv.bias = torch.nn.Parameter(folded.detach().clone(), requires_grad=conv.weight.requires_grad)
            setattr(parent, bname, torch.nn.Identity())
            count += 1
    return count


def quantize_model(model: Any, calib: np.ndarray, *, batch: int = 8) -> Any:
    """Insert INT8 quantisers into ``model`` (in place) and calibrate them on ``calib``.

    Args:
        model: a `RetinaNet` (any module mapping ``images`` to the head dict).
        calib: (N, 3, H, W) preprocessed images in the spec's input dtype (the runtime's letterbox).
        batch: images per calibration forward.

    Returns:
        The quantised model (the same object).
    """
    import torch

    if calib.ndim != 4 or len(calib) == 0:
        raise InputError(f"calibration batch has shape {calib.shape}; need (N>0, 3, H, W) preprocessed images")
    mtq = _mtq()
    device = next(model.parameters()).device

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for i in range(0, len(calib), batch):
                m(torch.from_numpy(np.ascontiguousarray(calib[i : i + batch])).to(device))

    was_training = model.training
    model.eval()
    probe = torch.from_numpy(np.ascontiguousarray(calib[:2])).to(device)
    with torch.no_grad():
        before = model(probe)
        fold_batchnorm(model)
        after = model(probe)
    for key in ("cls_logits", "box_deltas"):
        tol = 1e-3 * (1.0 + float(before[key].abs().max()))
        err = float((before[key] - after[key]).abs().max())
        if err > tol:
            raise ModelError(f"folding BatchNorm into the convs changed {key} by {err:.3g} (> {tol:.3g}); the model's "
                             "BatchNorms do not follow their convs as torchvision's ResNet blocks do")
    register_residual_blocks()
    _quiet_call(lambda: mtq.quantize(model, quant_config(), forward_loop))
    model.train(was_training)
    return model


def _quiet_call(fn: Callable[[], Any]) -> Any:
    """ModelOpt prints a line per quantiser ("Inserted 144 quantizers", warnings): keep them out of the run's log."""
    import contextlib
    import io
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def restore_quantized(spec: DetectorSpec, model_config: Any, state: Mapping[str, Any],
                      weights: Mapping[str, Any] | None = None) -> Any:
    """Rebuild a quantised `RetinaNet`: the architecture, ModelOpt's state (its quantisers), then ``weights``.

    Args:
        spec: the detector spec.
        model_config: the `ModelConfig` it was built with.
        state: ``modelopt.torch.opt.modelopt_state`` of the quantised model.
        weights: a state_dict with the quantisers' ``_amax`` buffers (default: keep the fresh ones).

    Raises:
        ModelError: weights that do not fit the quantised architecture (names the keys).
    """
    from retinaedge.train.checkpoint import check_state_dict
    from retinaedge.train.model import build_model

    if getattr(model_config, "backbone_weights", None):
        model_config = dataclasses.replace(model_config, backbone_weights=None)
    model = build_model(spec, model_config)
    fold_batchnorm(model)  # the architecture `quantize_model` quantised (the values come from ``weights``)
    register_residual_blocks()
    model = _quiet_call(lambda: _mto().restore_from_modelopt_state(model, dict(state)))
    if weights is not None:
        check_state_dict(model, weights, source="the QAT weights")
        model.load_state_dict(weights)
    return model


# ---- the run ----------------------------------------------------------------------------------------------
def qat_train_config(source: Any, config: QatConfig) -> Any:
    """The fine-tuning `TrainConfig`: the checkpoint's, at ``lr_scale`` of its lr, a short warm-up, no fit, no
    progressive resizing (one input size: the one the quantisers are calibrated and exported at), the budget."""
    from retinaedge.train.config import config_from_dict, config_to_dict

    d = config_to_dict(source)
    d["optim"]["lr"] = float(d["optim"]["lr"]) * config.lr_scale
    d["optim"]["warmup_iters"] = config.warmup_iters
    d["data"]["progressive_size"] = 0
    d["fit"] = {k: False if isinstance(v, bool) else v for k, v in d.get("fit", {}).items()}
    d["model"]["backbone_weights"] = None
    d["time_budget_min"] = float(config.minutes) if config.minutes else 0.0
    d["epochs"] = config.epochs
    for key, value in config.train_overrides.items():
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise InputError(f"train override {key!r}: {p!r} is not a config section; known: {sorted(d)}")
            node = node[p]
        if leaf not in node:
            raise InputError(f"train override {key!r}: no key {leaf!r}; known: {sorted(node)}")
        node[leaf] = value
    return config_from_dict(d)


def _check_out(config: QatConfig) -> dict[str, Any] | None:
    """The resume state (``qat_state.pt``) or None for a fresh run; refuses a wrong directory in one line."""
    from retinaedge.train.checkpoint import read_checkpoint

    out = config.out
    state_path = out / QAT_STATE
    has_state, has_run = state_path.is_file(), (out / "ckpt_last.pt").is_file()
    if not config.resume:
        if has_state or has_run:
            raise InputError(f"{str(out)!r} already holds a {'QAT' if has_state else 'training'} run; pass --resume "
                             "to continue a QAT run there or choose another --out")
        return None
    if not has_state:
        what = "a training run (ckpt_last.pt) but" if has_run else "nothing to resume:"
        raise InputError(f"--resume: {str(out)!r} holds {what} no {QAT_STATE}, so it is not a QAT run; pass the --out "
                         "of an earlier 'retinaedge qat' or drop --resume to start one")
    try:
        state = read_checkpoint(state_path)
    except ModelError as e:
        raise InputError(f"--resume: {QAT_STATE} in {str(out)!r} cannot be read ({e}); start a new --out") from None
    if state.get("qat_format") != QAT_FORMAT:
        raise InputError(f"--resume: {str(state_path)!r} is not a QAT state (qat_format="
                         f"{state.get('qat_format')!r}); start a new --out")
    return state


def run_qat(config: QatConfig, *, echo: Echo | None = None, progress: bool | None = None,
            export: bool = True) -> QatResult:
    """Quantise, calibrate, fine-tune (resumable) and export; see the module doc.

    Args:
        config: the run.
        echo: message sink (the CLI passes ``print``); also the trainer's log.
        progress: the trainer's rich bar on/off (default: on when stderr is a terminal).
        export: write ``RUN/export/model.int8.onnx`` at the end.

    Raises:
        InputError: a directory that holds another run, ``--resume`` of a non-QAT directory, no calibration images,
            a dataset whose classes differ from the checkpoint's.
        ModelError: a missing/corrupt checkpoint or one that does not fit its architecture.
    """
    import torch

    from retinaedge.export.calib import load_calibration_set
    from retinaedge.runtime.calibration import calibration_folder
    from retinaedge.runtime.io import ensure_writable_dir, sha256_file
    from retinaedge.runtime.preprocess import list_images
    from retinaedge.train.checkpoint import load_checkpoint, save_checkpoint
    from retinaedge.train.config import config_from_dict, config_to_dict
    from retinaedge.train.trainer import Trainer

    say: Echo = echo or log.info
    state = _check_out(config)
    if state is None:
        model, spec, source_cfg = load_checkpoint(config.checkpoint)
        train_cfg = qat_train_config(source_cfg, config)
        _check_classes(config.data, train_cfg, spec)
        folder = calibration_folder(config.data)
        calib = load_calibration_set(list_images(folder), spec, limit=config.calib_images)
        say(f"qat: {config.checkpoint} -> {config.out}; calibrating INT8 quantisers on {len(calib.files)} images "
            f"from {folder}" + (f" ({len(calib.skipped)} corrupt skipped)" if calib.skipped else ""))
        quantize_model(model, calib.batch)
        ensure_writable_dir(config.out)
        mto = _mto()
        state = {
            "qat_format": QAT_FORMAT, "qat_version": QAT_VERSION,
            "modelopt_state": mto.modelopt_state(model), "model": model.state_dict(),
            "config": config_to_dict(train_cfg), "spec": spec.to_dict(),
            "source": {"checkpoint": str(config.checkpoint), "sha256": sha256_file(config.checkpoint),
                       "config": config_to_dict(source_cfg)},
            "calibration": {"folder": str(folder), "images": [p.name for p in calib.files]},
            "qat": {"lr_scale": config.lr_scale, "warmup_iters": config.warmup_iters},
        }
        save_checkpoint(config.out / QAT_STATE, state)
        say(f"qat: {_count_quantizers(model)} quantisers; fine-tuning at lr {train_cfg.optim.lr:.3g} "
            + (f"for {config.minutes:g} min" if config.minutes else f"for {config.epochs} epoch(s)"))
    else:
        spec = DetectorSpec.from_dict(state["spec"])
        train_cfg = config_from_dict(state["config"])
        if config.minutes:
            train_cfg = dataclasses.replace(train_cfg, time_budget_min=float(config.minutes))
        model = restore_quantized(spec, train_cfg.model, state["modelopt_state"], state["model"])
        say(f"qat: resuming {config.out} (source {state['source']['checkpoint']})")

    trainer = Trainer(config=train_cfg, data=config.data, out=config.out, resume=config.resume, log=say,
                      progress=progress, stop_after_steps=config.stop_after_steps, model=model)
    with torch.random.fork_rng():  # the trainer seeds the process RNGs; the caller's stay as they were
        metrics = trainer.run()
    if not export:
        return QatResult(config.out, metrics, None, None, None)
    best = config.out / "ckpt_best.pt"
    path, report, summary = export_qat_run(config.out, checkpoint=best if best.is_file() else None,
                                           nms=config.nms, opset=config.opset, echo=say)
    return QatResult(config.out, metrics, path, report, summary)


def _count_quantizers(model: Any) -> int:
    return sum(1 for name, m in model.named_modules()
               if name.endswith("_quantizer") and bool(getattr(m, "is_enabled", False)))


def _check_classes(data: Path, cfg: Any, spec: DetectorSpec) -> None:
    """The spec the trainer will build from ``data`` must be the checkpoint's (the one contract between stages)."""
    from retinaedge.train.config import make_spec
    from retinaedge.train.data.coco import read_categories
    from retinaedge.train.evaluate import split_paths

    ann, _ = split_paths(data, "train")
    names, ids = read_categories(ann)
    got = make_spec(cfg, names, ids)
    if got != spec:
        raise InputError(f"{str(data)!r} gives classes {list(got.class_names)} / ids {list(got.category_ids)} (input "
                         f"{got.input_height}x{got.input_width}) but the checkpoint was trained with "
                         f"{list(spec.class_names)} / {list(spec.category_ids)} ({spec.input_height}x"
                         f"{spec.input_width}); fine-tune on the dataset it was trained on")


# ---- export -----------------------------------------------------------------------------------------------
def load_qat_checkpoint(run: Path, checkpoint: Path | None = None) -> tuple[Any, DetectorSpec, dict[str, Any]]:
    """The fine-tuned quantised model of a QAT run (eval mode, CPU).

    Args:
        run: the QAT run directory (holds ``qat_state.pt``).
        checkpoint: the trainer checkpoint to take the weights from (default: ``ckpt_best.pt``, else the calibrated
            weights in ``qat_state.pt``).

    Returns:
        ``(model, spec, state)``.
    """
    from retinaedge.train.checkpoint import read_checkpoint
    from retinaedge.train.config import config_from_dict

    state_path = Path(run) / QAT_STATE
    if not state_path.is_file():
        raise InputError(f"{str(run)!r} has no {QAT_STATE}: not a QAT run; pass the --out of 'retinaedge qat'")
    state = read_checkpoint(state_path)
    spec = DetectorSpec.from_dict(state["spec"])
    cfg = config_from_dict(state["config"])
    ckpt = checkpoint if checkpoint is not None else Path(run) / "ckpt_best.pt"
    weights = read_checkpoint(ckpt)["model"] if ckpt.is_file() else state["model"]
    model = restore_quantized(spec, cfg.model, state["modelopt_state"], weights)
    model.eval()
    return model, spec, state


def export_qat_run(run: Path, *, checkpoint: Path | None = None, nms: NmsMode = "efficient", opset: int = 17,
                   echo: Echo | None = None) -> tuple[Path, str, dict[str, Any]]:
    """Export a QAT run's fine-tuned model to ``RUN/export/`` (`export_qat_onnx`)."""
    model, spec, state = load_qat_checkpoint(run, checkpoint)
    record = {"source": state.get("source", {}).get("checkpoint"), "weights": str(checkpoint or "qat_state.pt"),
              "calibration": state.get("calibration")}
    return export_qat_onnx(model, spec, Path(run) / EXPORT_DIR, nms=nms, opset=opset, record=record, echo=echo)


def export_qat_onnx(model: Any, spec: DetectorSpec, out_dir: Path, *, nms: NmsMode = "efficient", opset: int = 17,
                    record: Mapping[str, Any] | None = None, echo: Echo | None = None
                    ) -> tuple[Path, str, dict[str, Any]]:
    """A ModelOpt-quantised model -> ``out_dir/model.int8.onnx`` (+ ``spec.json``, ``export.json``), linted.

    Args:
        model: a model quantised by `quantize_model` / `restore_quantized`.
        spec: its spec.
        out_dir: where to write.
        nms: the NMS tail.
        opset: the export opset (TorchScript exporter; ModelOpt's quantisers have TorchScript symbolics).
        record: extra fields for ``export.json``'s ``qat`` entry.
        echo: message sink.

    Returns:
        ``(path, lint summary, qdq summary)``.

    Raises:
        ModelError: the exported graph's Q/DQ is not what TensorRT's strongly typed INT8 path takes (`check_qdq`),
            or the lint found errors.
    """
    from retinaedge.export.lint import lint_onnx
    from retinaedge.export.surgery import finalize
    from retinaedge.runtime.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir, sha256_file

    say: Echo = echo or log.info
    out = ensure_writable_dir(out_dir)
    pre = qat_pre_nms(model, spec, opset=opset)
    summary = qdq_summary(pre)
    final = finalize(pre, spec, nms=nms, precision="int8", target="tensorrt")
    path = out / "model.int8.onnx"
    atomic_write_bytes(path, final.SerializeToString())
    report = lint_onnx(path, target_trt_majors=(10, 11))
    spec.replace(nms=nms).save(out / "spec.json")
    payload = {
        "files": {"int8": {"path": path.name, "sha256": sha256_file(path)}},
        "lint": {"int8": report.to_dict()},
        "qat": {**(record or {}), "qdq": summary, "nms": nms, "opset": opset},
    }
    atomic_write_text(out / "export.json", json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    say(f"qat: wrote {path} ({summary['quantize_linear']} QuantizeLinear on {summary['quantized_nodes']} nodes); "
        f"lint: {report.summary()}")
    for finding in report.errors + report.warnings:
        say(f"  {finding}")
    if not report.ok:
        raise ModelError(f"the QAT export {str(path)!r} fails the TensorRT lint: {report.summary()}; "
                         f"first: {report.errors[0] if report.errors else '-'}")
    return path, report.summary(), summary


def qat_pre_nms(model: Any, spec: DetectorSpec, *, opset: int = 17) -> onnx.ModelProto:
    """The pre-NMS Q/DQ graph of a quantised model (``cls_logits`` (B, N, K), ``box_deltas`` (B, N, 4)), checked.

    The model is put on the CPU in eval mode. TorchScript exporter (ModelOpt's quantisers export through TorchScript
    symbolics), the export's sanitize/concat (`retinaedge.export.surgery.prepare_pre_nms`), identity Casts dropped,
    `check_qdq`.
    """
    import torch

    from retinaedge.export.onnx_export import export_onnx
    from retinaedge.export.surgery import prepare_pre_nms

    model = model.to("cpu").eval()
    model.to(memory_format=torch.contiguous_format)
    raw = _quiet_call(lambda: export_onnx(model, spec, opset=opset, exporter="torchscript"))
    pre = drop_identity_casts(prepare_pre_nms(raw, spec))
    check_qdq(pre)
    return pre


def drop_identity_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove float32 -> float32 Casts (ModelOpt's quantiser symbolic casts its input to the scale's dtype).

    Their consumers read the Cast's input instead; a Cast whose output is a graph output is kept.
    """
    from onnx import TensorProto

    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.value_info,
                                                             *model.graph.output]}
    outputs = {o.name for o in model.graph.output}
    rename: dict[str, str] = {}
    keep = []
    for n in model.graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if (n.op_type == "Cast" and to == TensorProto.FLOAT and types.get(n.input[0]) == TensorProto.FLOAT
                and n.output[0] not in outputs):
            rename[n.output[0]] = n.input[0]
            continue
        keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    return values


def check_qdq(pre_nms: onnx.ModelProto) -> None:
    """Refuse a pre-NMS Q/DQ graph unlike ModelOpt ONNX PTQ's: see the module doc.

    Checks: at least one Q/DQ pair; every zero point a constant int8 0; every scale a constant > 0; weights
    (initializer inputs) quantised per channel on axis 0, activations per tensor; no DequantizeLinear output
    reaches ``cls_logits``/``box_deltas`` through the output tail (`retinaedge.export.int8.output_tail_nodes`).

    Raises:
        ModelError: naming the first offending node.
    """
    from retinaedge.export.int8 import output_tail_nodes

    consts = _constants(pre_nms)
    inits = {i.name for i in pre_nms.graph.initializer}
    qdq = [n for n in pre_nms.graph.node if n.op_type in QDQ_OPS]
    if not qdq:
        raise ModelError("the QAT export holds no QuantizeLinear/DequantizeLinear; were the quantisers disabled?")
    producer = {o: n for n in pre_nms.graph.node for o in n.output}
    for n in qdq:
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        zp = consts.get(n.input[2]) if len(n.input) > 2 else None
        if scale is None or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ModelError(f"{n.op_type} {n.name!r}: scale is not a constant > 0; TensorRT needs build-time scales")
        if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
            raise ModelError(f"{n.op_type} {n.name!r}: zero point {None if zp is None else zp.dtype} is not a "
                             "constant int8 0 (TensorRT takes symmetric INT8 only)")
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if n.op_type == "QuantizeLinear":
            src = n.input[0]
            is_weight = src in inits or (src in producer and producer[src].op_type == "Constant")
            if is_weight and (scale.size <= 1 or axis != 0):
                raise ModelError(f"{n.name!r}: weight quantised per tensor or on axis {axis}; expected per channel, "
                                 "axis 0")
            if not is_weight and scale.size != 1:
                raise ModelError(f"{n.name!r}: activation quantised with {scale.size} scales; expected per tensor")
    dq_out = {o for n in qdq if n.op_type == "DequantizeLinear" for o in n.output}
    tail = set(output_tail_nodes(pre_nms))
    for n in pre_nms.graph.node:
        if n.name in tail and any(i in dq_out for i in n.input):
            raise ModelError(f"output-tail node {n.name!r} reads a DequantizeLinear: the head outputs would be "
                             "quantised; the tail must stay unquantised as ModelOpt ONNX PTQ leaves it")


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Counts that compare a Q/DQ graph with another: Q/DQ nodes, quantised nodes by op type, zero-point dtypes."""
    import collections

    consts = _constants(model)
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_op: collections.Counter[str] = collections.Counter()
    for n in model.graph.node:
        if n.op_type not in QDQ_OPS and any(i in dq_out for i in n.input):
            by_op[n.op_type] += 1
    zps = {str(consts[n.input[2]].dtype) for n in model.graph.node
           if n.op_type in QDQ_OPS and len(n.input) > 2 and n.input[2] in consts}
    return {
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
        "quantized_nodes": sum(by_op.values()), "quantized_by_op": dict(sorted(by_op.items())),
        "zero_point_dtypes": sorted(zps),
    }
