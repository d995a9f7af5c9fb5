"""train/trainer.py end to end on a tiny synthetic set: artifacts, exact resume, time budget, NaN guard, CLI."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from retinaedge.cli import main as cli_main
from retinaedge.runtime.cocoeval import STAT_NAMES
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import DetectorSpec
from retinaedge.train.config import OptimConfig, TrainConfig, load_config, make_spec
from retinaedge.train.data.coco import read_categories
from retinaedge.train.trainer import (
    NonFiniteLossError,
    Trainer,
    autocast_dtype,
    build_optimizer,
    lr_factor,
    train,
)

# 64 px inputs, 2 FPN levels, 8 channels, frozen backbone: seconds per run on one thread
TINY = [
    "num_threads=1", "eval_batch_size=4", "log_every=1", "eval_every=1", "epochs=2",
    "model.fpn_channels=8", "model.head_channels=8", "model.head_depth=1", "model.gn_groups=4",
    "model.channels_last=false", "model.trainable_layers=0",
    "data.input_size=64", "data.progressive_size=0", "data.batch_size=2", "data.workers=0",
    "anchors.strides=[8, 16]", "anchors.sizes=[12, 24]",
    "optim.warmup_iters=2",
]


def tiny(*extra: str) -> TrainConfig:
    return load_config("edge", [*TINY, *extra])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retinaedge.train.data.synth import write_synthetic_coco

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_coco(root, train=6, val=3, size=64, seed=0)  # 3 steps per epoch at batch 2
    return root


def _quiet(_: str) -> None:
    pass


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_lr_factor_warmup_cosine_and_step() -> None:
    o = tiny("optim.warmup_iters=10", "optim.warmup_factor=0.1", "optim.schedule=cosine",
             "optim.min_lr_factor=0.0").optim
    assert lr_factor(o, 0, 0.0) == pytest.approx(0.1)
    assert lr_factor(o, 5, 0.0) == pytest.approx(0.55)  # halfway through warmup: 0.1 * 0.5 + 0.5
    assert lr_factor(o, 10, 0.5) == pytest.approx(0.5)  # cos(pi/2): half
    assert lr_factor(o, 100, 1.0) == pytest.approx(0.0)
    s = tiny("optim.warmup_iters=0", "optim.schedule=step", "optim.milestones=[0.5, 0.75]",
             "optim.step_gamma=0.1").optim
    assert [lr_factor(s, 50, p) for p in (0.0, 0.49, 0.5, 0.8)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


@pytest.mark.parametrize(("amp", "device", "bf16_cpu", "expected"), [
    (False, "cpu", True, None),
    (False, "cuda", True, None),
    (True, "cuda", False, torch.float16),  # fp16 + GradScaler on CUDA whatever the host CPU
    (True, "cpu", True, torch.bfloat16),  # native bf16 (AVX512-BF16 / AMX): autocast
    (True, "cpu", False, None),  # emulated bf16 is slower than fp32: stay fp32
])
def test_autocast_dtype_by_device_and_cpu_features(amp: bool, device: str, bf16_cpu: bool,
                                                   expected: torch.dtype | None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_cpu)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert autocast_dtype(torch.device(device), amp) is expected


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_adamw_is_fused_on_cpu_and_both_step_like_the_per_parameter_loop(name: str) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    ref, start = copy.deepcopy(net), copy.deepcopy(net)
    cfg = OptimConfig(name=name, lr=0.05, weight_decay=0.1)
    opt = build_optimizer(net, cfg)
    assert bool(opt.defaults["fused"]) is (name == "adamw")  # fused SGD measured slower on CPU
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # 1-D params undecayed, as before
    groups = [{"params": [p for p in ref.parameters() if p.ndim > 1], "weight_decay": 0.1},
              {"params": [p for p in ref.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    loop = (torch.optim.AdamW(groups, lr=0.05, betas=cfg.betas, foreach=False) if name == "adamw"
            else torch.optim.SGD(groups, lr=0.05, momentum=cfg.momentum, foreach=False))
    x = torch.randn(2, 3, 6, 6)
    for _ in range(3):
        for model, o in ((net, opt), (ref, loop)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for a, b, a0 in zip(net.parameters(), ref.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, a0)  # the steps moved every parameter


def test_optimizer_without_fused_kernel_helpers_uses_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils._foreach_utils as fu

    monkeypatch.delattr(fu, "_get_fused_kernels_supported_devices")
    opt = build_optimizer(torch.nn.Linear(2, 2), OptimConfig(name="adamw"))
    assert not opt.defaults["fused"]


def test_autocast_dtype_without_torch_cpu_feature_helpers_is_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert autocast_dtype(torch.device("cpu"), True) is None


def test_cli_train_writes_every_artifact(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--config", "edge", "--out", str(out), "--epochs", "2"]
    for s in TINY:
        argv += ["--set", s]
    assert cli_main(argv) == 0
    assert "AP50" in capsys.readouterr().out
    for name in ("ckpt_last.pt", "ckpt_best.pt", "spec.json", "metrics.json", "train_log.jsonl", "loss.png",
                 "config.json"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temp files

    metrics = json.loads((out / "metrics.json").read_text())
    for name in STAT_NAMES:
        assert isinstance(metrics[name], float), name
    names, ids = read_categories(data / "annotations" / "instances_val.json")
    assert list(metrics["per_class_AP"]) == list(names)
    assert metrics["step"] == 6 and metrics["epoch"] == 2 and metrics["stopped"] is None

    spec = DetectorSpec.load(out / "spec.json")
    assert spec == make_spec(tiny(), names, ids)

    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 and r["img_s"] > 0 for r in steps)
    assert [(e["epoch"], e["step"]) for e in evals] == [(1, 3), (2, 6)]
    assert {r["split"] for r in records if r["type"] == "data"} == {"train", "val"}

    last = _state(out / "ckpt_last.pt")  # weights_only: tensors and plain types only
    assert last["step"] == 6 and last["epoch"] == 2 and last["batch"] == 0
    assert last["optimizer"]["state"]  # resumable
    assert DetectorSpec.from_dict(last["spec"]) == spec
    best = _state(out / "ckpt_best.pt")
    assert best["optimizer"] == {}  # the export/eval artifact carries no optimiser state
    assert best["best_ap"] == max(e["AP"] for e in evals)


def test_resume_gives_identical_weights(data: Path, tmp_path: Path) -> None:
    # augmentation on (flip + jitter draw random numbers), so the RNG streams must be restored exactly too
    cfg = tiny()
    full = train(cfg, data=data, out=tmp_path / "full", log=_quiet, progress=False)
    assert full["step"] == 6

    part = train(cfg, data=data, out=tmp_path / "part", log=_quiet, progress=False, stop_after_steps=4)
    assert part["step"] == 4 and part["stopped"] == "stopped after 4 steps"
    mid = _state(tmp_path / "part" / "ckpt_last.pt")
    assert (mid["epoch"], mid["step"], mid["batch"]) == (1, 4, 1)  # killed inside the second epoch
    resumed = train(cfg, data=data, out=tmp_path / "part", log=_quiet, progress=False, resume=True)
    assert resumed["step"] == 6

    a = _state(tmp_path / "full" / "ckpt_last.pt")
    b = _state(tmp_path / "part" / "ckpt_last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, st in a["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][k][name]), (k, name)
    assert resumed["AP"] == full["AP"]
    # the resumed log continues the killed one: each step once, same losses as the uninterrupted run
    log_a = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "part" / "train_log.jsonl").read_text().splitlines()]
    steps_a = [(r["step"], r["loss"]) for r in log_a if r["type"] == "step"]
    steps_b = [(r["step"], r["loss"]) for r in log_b if r["type"] == "step"]
    assert steps_a == steps_b


def test_time_budget_stops_after_the_step_then_evaluates_and_saves(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "budget"
    m = train(tiny("time_budget_min=1e-9"), data=data, out=out, log=_quiet, progress=False)
    assert m["step"] == 1 and "time budget" in m["stopped"]
    assert set(STAT_NAMES) <= set(m)
    assert _state(out / "ckpt_last.pt")["step"] == 1
    assert json.loads((out / "metrics.json").read_text())["step"] == 1
    again = train(tiny("time_budget_min=1e-9"), data=data, out=out, log=_quiet, progress=False, resume=True)
    assert again["step"] == 1 and "already used" in again["stopped"]  # a spent budget trains no further


def test_progressive_resizing_runs_the_first_fraction_at_the_smaller_input(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retinaedge.train.trainer import _ProgressivePhase

    shapes: list[tuple[int, ...]] = []
    resize = _ProgressivePhase.resize

    def spy(self: _ProgressivePhase, images: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
        small, t = resize(self, images, targets)
        shapes.append(tuple(small.shape))
        real = targets["labels"] >= 0  # boxes halve with the image, padding rows stay zero
        torch.testing.assert_close(t["boxes"][real], targets["boxes"][real] * 0.5)
        return small, t

    monkeypatch.setattr(_ProgressivePhase, "resize", spy)
    # 2 epochs x 3 steps: progress 0, 1/6, 2/6 are below 0.5 -> three low-resolution steps, then three at 64 px
    m = train(tiny("data.progressive_size=32", "data.progressive_fraction=0.5"), data=data, out=tmp_path / "p",
              log=_quiet, progress=False)
    assert shapes == [(2, 3, 32, 32)] * 3
    assert m["step"] == 6 and math.isfinite(m["AP"])
    with pytest.raises(InputError, match=r"progressive_size=24 gives a 24x24 input: .*multiple of the largest"):
        train(tiny("data.progressive_size=24", "data.progressive_fraction=0.5"), data=data, out=tmp_path / "q",
              log=_quiet, progress=False)


def test_sigterm_stops_cleanly_after_the_step(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from retinaedge.train.losses import RetinaNetLoss

    real = RetinaNetLoss.__call__
    calls = []

    def signalled(self, outputs, targets):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step
        return real(self, outputs, targets)

    monkeypatch.setattr(RetinaNetLoss, "__call__", signalled)
    out = tmp_path / "term"
    m = train(tiny(), data=data, out=out, log=_quiet, progress=True)  # the rich bar, rendered off-terminal
    assert m["step"] == 2 and "interrupted" in m["stopped"]
    assert _state(out / "ckpt_last.pt")["step"] == 2 and (out / "metrics.json").is_file()


def test_non_finite_loss_names_step_and_image_ids(data: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from retinaedge.train.losses import RetinaNetLoss

    real = RetinaNetLoss.__call__
    seen: list[list[int]] = []

    def poisoned(self, outputs, targets):  # the second batch's loss becomes NaN
        out = dict(real(self, outputs, targets))
        seen.append(targets["image_ids"].tolist())
        if len(seen) == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(RetinaNetLoss, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2 \(epoch 0\)") as info:
        train(tiny(), data=data, out=tmp_path / "nan", log=_quiet, progress=False)
    assert f"batch image ids {seen[1]}" in str(info.value)
    assert "\n" not in str(info.value)


def test_out_dir_guard_and_resume_checks(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    msgs: list[str] = []
    # --resume without a checkpoint (killed before the first epoch ended) starts from scratch
    m = train(tiny(), data=data, out=out, resume=True, log=msgs.append, progress=False, stop_after_steps=1)
    assert m["step"] == 1 and any("starting from scratch" in s for s in msgs)
    with pytest.raises(InputError, match="already holds a run"):
        train(tiny(), data=data, out=out, log=_quiet, progress=False)
    with pytest.raises(InputError, match=r"changed \['model\.head_channels'\]"):
        train(tiny("model.head_channels=16"), data=data, out=out, resume=True, log=_quiet, progress=False)
    with pytest.raises(InputError, match="train annotations"):
        Trainer(config=tiny(), data=tmp_path / "nodata", out=tmp_path / "x")


def test_time_budget_fills_the_time_past_the_presets_epochs(data: Path, tmp_path: Path) -> None:
    # epochs=1 is 3 steps; a 4-second budget must keep training past it, annealing over the budget
    m = train(tiny("epochs=1", "time_budget_min=0.067", "eval_every=1"), data=data, out=tmp_path / "fill",
              log=_quiet, progress=False)
    assert m["epoch"] > 1 and m["step"] > 3
    assert "time budget" in m["stopped"] and "time budget" in m["ended_by"]
    assert m["wall_time_s"] >= 4.0
    log = [json.loads(x) for x in (tmp_path / "fill" / "train_log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log if r["type"] == "step"]
    assert lrs[-1] < max(lrs)  # the cosine ran over the budget, not over the 3 planned steps
    evals = [r for r in log if r["type"] == "eval"]
    assert len(evals) <= 5  # spaced by a quarter of the budget (+ the final one), not one per epoch


def test_without_a_budget_epochs_end_the_run(data: Path, tmp_path: Path) -> None:
    m = train(tiny("epochs=1"), data=data, out=tmp_path / "ep", log=_quiet, progress=False)
    assert m["step"] == 3 and m["stopped"] is None and m["ended_by"] == "planned 1 epochs done"


def test_fit_writes_the_data_report_and_the_fitted_spec(data: Path, tmp_path: Path) -> None:
    import dataclasses

    from retinaedge.train.config import FitConfig

    cfg = dataclasses.replace(tiny(), fit=FitConfig(input_size=True, anchors=True))  # as a preset that fits
    m = train(cfg, data=data, out=tmp_path / "fit", log=_quiet, progress=False)
    assert math.isfinite(m["AP"])
    report = json.loads((tmp_path / "fit" / "data_report.json").read_text())
    spec = DetectorSpec.load(tmp_path / "fit" / "spec.json")
    assert list(spec.anchors.sizes) == report["fit"]["anchor_sizes"]
    assert [spec.input_height, spec.input_width] == report["fit"]["input_size"]
    assert json.loads((tmp_path / "fit" / "config.json").read_text())["fit"] == {"input_size": False,
                                                                                  "anchors": False}
    assert (tmp_path / "fit" / "data_report.png").is_file()


def test_a_set_fitted_field_pins_it() -> None:
    cfg = load_config("edge", ["fit.anchors=true", "fit.input_size=true", "anchors.sizes=[1, 2, 3, 4, 5]"])
    assert cfg.fit.anchors is False and cfg.fit.input_size is True  # the sizes given win over the fit
    cfg = load_config("edge", ["fit.input_size=true", "data.input_size=320"])
    assert cfg.fit.input_size is False
