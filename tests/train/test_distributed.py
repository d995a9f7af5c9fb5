"""train/distributed.py: torchrun + DDP on CPU (gloo, 2 processes) against a single process, gradient
accumulation against one big batch, a rank that dies or hangs, and --resume after the kill.

Reference setting: 20 training images of 64 px, 2 FPN levels, 8 channels, a frozen backbone with
FrozenBatchNorm (no batch statistics, so the per-rank batch does not change the forward) and GroupNorm heads,
no augmentation (its random stream is per rank), AdamW at lr 1e-3 with a step schedule whose gamma is 1 (the
learning rate does not depend on the planned number of steps, so a 1-epoch and a 2-epoch run share their
first epoch). Global batch 4: 2 processes x 2 images, or 1 process x 4 images, 5 steps per epoch.

Run as a script (``torchrun ... test_distributed.py train ARGS``) this file is a worker: the ordinary
``retinaedge train`` command, whose rank 1 fails at a chosen step (environment variables below).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from retinaedge.runtime.errors import InputError
from retinaedge.train.config import load_config
from retinaedge.train.distributed import (
    DistContext,
    GlobalLoss,
    convert_sync_bn,
    distributed_loader,
    env_world,
    init_distributed,
    resume_batch,
    wrap_model,
)
from retinaedge.train.trainer import train

FAULT_MODE = "RETINAEDGE_TEST_FAULT"  # "exit": rank 1 exits with code 3; "hang": rank 1 sleeps
FAULT_STEP = "RETINAEDGE_TEST_FAULT_STEP"  # at its n-th loss evaluation (1-based)

# fp32 at a fixed lr: these compare runs of different batch shapes to 1e-5-1e-6; bf16 autocast (on CPUs with
# native bf16) rounds that off and a larger lr amplifies float summation-order differences past it
TINY = [
    "amp=false", "num_threads=1", "eval_batch_size=4", "log_every=1", "eval_every=1",
    "model.fpn_channels=8", "model.head_channels=8", "model.head_depth=1", "model.gn_groups=4",
    "model.channels_last=false", "model.trainable_layers=0", "model.freeze_bn=true",
    "data.input_size=64", "data.workers=0", "data.augment.hflip=0", "data.augment.p_jitter=0",
    "data.progressive_size=0",
    "anchors.strides=[8, 16]", "anchors.sizes=[12, 24]",
    "optim.warmup_iters=2", "optim.schedule=step", "optim.step_gamma=1.0", "optim.lr=1e-3",
]
ROOT = Path(__file__).resolve().parents[2]
TORCHRUN_TIMEOUT_S = 120  # far above a healthy run (~10 s); a hang fails the test instead of the suite

pytestmark = pytest.mark.filterwarnings("ignore:model.freeze_bn=True without backbone_weights")


def _quiet(_: str) -> None:
    pass


def _argv(*extra: str) -> list[str]:
    out: list[str] = []
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


def _steps(run: Path) -> dict[int, dict[str, Any]]:
    recs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["type"] == "step"]
    assert len(steps) == len({r["step"] for r in steps}), "a step was logged twice (more than one writer?)"
    return {r["step"]: r for r in steps}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")["model"]  # type: ignore[no-any-return]


def _max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _assert_losses_match(got: dict[int, dict[str, Any]], ref: dict[int, dict[str, Any]], steps: range) -> None:
    for s in steps:
        for key in ("loss", "cls_loss", "box_loss"):
            # the log rounds to 1e-6 absolute: far below 1e-5 relative of losses ~1
            assert got[s][key] == pytest.approx(ref[s][key], rel=1e-5), (s, key)
        assert got[s]["num_pos"] == ref[s]["num_pos"], s  # the global positive count


def _torchrun(args: list[str], *, env: dict[str, str] | None = None, timeout: float = TORCHRUN_TIMEOUT_S
              ) -> tuple[subprocess.CompletedProcess[str], float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


# Weights: each of the 5 AdamW steps moves a weight by at most ~lr = 1e-3. The 2-process run differs from
# the 1-process one only in fp32 summation order (two half-batch backwards plus a gloo all-reduce against one
# backward), ~1e-7 relative in the gradients, which Adam's normalisation turns into ~1e-10 per step; 1e-6
# keeps four orders of headroom, while a per-rank normaliser (plain DDP averaging of per-rank normalised losses,
# the bug this guards against) was measured 4e-3 away after 5 steps.
WEIGHT_ATOL = 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retinaedge.train.data.synth import write_synthetic_coco

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_coco(root, train=20, val=2, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process, batch 4, 2 epochs (10 steps): losses per step, weights after step 5 and step 10."""
    out = tmp_path_factory.mktemp("ref") / "run"
    cfg = load_config("edge", [*TINY, "epochs=2", "data.batch_size=4"])
    train(cfg, data=data, out=out, log=_quiet, progress=False, stop_after_steps=5)
    w5 = _weights(out / "ckpt_last.pt")
    train(cfg, data=data, out=out, log=_quiet, progress=False, resume=True)
    return {"steps": _steps(out), "w5": w5, "w10": _weights(out / "ckpt_last.pt")}


# ---- the world, the sampler, the normaliser ---------------------------------------------------------------

def test_env_world_reads_torchrun_variables_and_rejects_nonsense() -> None:
    assert env_world({}) == (0, 0, 1)
    assert env_world({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == (3, 1, 4)
    with pytest.raises(InputError, match=r"RANK=4.*WORLD_SIZE=4"):
        env_world({"RANK": "4", "LOCAL_RANK": "0", "WORLD_SIZE": "4"})
    with pytest.raises(InputError, match=r"WORLD_SIZE='two'"):
        env_world({"WORLD_SIZE": "two"})
    ctx = init_distributed(device=torch.device("cpu"), environ={})
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed, ctx.backend) == (0, 1, True, False, None)
    # a world of one: collectives are the identity and touch no process group
    t = torch.tensor([1.0, 2.0])
    assert ctx.all_reduce_(t) is t and t.tolist() == [1.0, 2.0]
    assert ctx.agree_stop(2, 1.5) == (2, 1.5)
    assert ctx.broadcast_object({"a": 1}) == {"a": 1}
    with pytest.raises(InputError, match=r"backend='nccl' needs CUDA"):
        init_distributed(device=torch.device("cpu"), backend="nccl",
                         environ={"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})


class _Items(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """n images of one pixel whose only content is their id (what `collate` needs)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.zeros(3, 1, 1, dtype=torch.uint8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0),
                                                         "image_id": i}


def _ids(world: int, rank: int, batch: int, epoch: int, n: int = 12) -> list[list[int]]:
    ctx = DistContext(rank=rank, world_size=world)
    loader = distributed_loader(_Items(n), batch_size=batch, workers=0, seed=7, epoch=epoch, ctx=ctx)
    return [t["image_ids"].tolist() for _, t in loader]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_together_read_the_single_process_batches(world: int) -> None:
    # global batch 4 (world 2 x 2) or 6 (world 3 x 2): the ranks' batch i together is the one process's batch i
    single = _ids(1, 0, 2 * world, epoch=1)
    per_rank = [_ids(world, r, 2, epoch=1) for r in range(world)]
    assert len(single) == len(per_rank[0])
    for i, batch in enumerate(single):
        together = sorted(x for r in range(world) for x in per_rank[r][i])
        assert together == sorted(batch), i
    assert sorted(x for b in single for x in b) == list(range(12))  # a permutation
    assert _ids(1, 0, 4, epoch=1) == _ids(1, 0, 4, epoch=1)  # a function of (seed, epoch)
    assert _ids(1, 0, 4, epoch=2) != _ids(1, 0, 4, epoch=1)  # set_epoch reshuffles


class _SumLoss:
    """Per image ``w * x``; summed, divided by max(1, positives), as RetinaNetLoss normalises."""

    def __init__(self, w: nn.Parameter) -> None:
        self.w = w

    def __call__(self, x: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        s = (self.w * x).sum()
        norm = max(1.0, float(pos.sum()))
        return {"loss": s / norm, "cls_loss": s / norm, "num_pos": pos.sum().float()}


def test_global_loss_accumulation_equals_one_big_batch() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3)
    pos = torch.tensor([3.0, 0.0, 5.0, 1.0, 0.0, 2.0])
    w = nn.Parameter(torch.rand(3))
    loss_fn = _SumLoss(w)
    big = loss_fn(x, pos)
    big["loss"].backward()
    g_big = w.grad.clone()  # type: ignore[union-attr]

    # 3 micro-batches of 2 with accumulate=4: a short window (the epoch's last) must still be exact
    for k, chunks in ((3, 3), (4, 3), (1, 1)):
        w.grad = None
        gl = GlobalLoss(DistContext(), accumulate=k)
        for xs, ps in zip(x.chunk(chunks), pos.chunk(chunks), strict=True):
            to_backward, global_value = gl.add(loss_fn(xs, ps))
            assert global_value == pytest.approx(float(loss_fn(xs, ps)["loss"].detach()))
            to_backward.backward()
        out = gl.finish([w])
        torch.testing.assert_close(w.grad, g_big, rtol=1e-6, atol=0)
        assert out["loss"] == pytest.approx(float(big["loss"].detach()), rel=1e-6)
        assert out["num_pos"] == 11.0
        assert "box_loss" not in out  # only the keys the loss returned

    # one process, one micro-batch: the loss tensor itself is back-propagated, nothing rescaled
    gl = GlobalLoss(DistContext(), accumulate=1)
    losses = loss_fn(x, pos)
    assert gl.add(losses)[0] is losses["loss"]
    with pytest.raises(InputError, match=r"accumulate=0"):
        GlobalLoss(DistContext(), accumulate=0)


def test_global_loss_without_num_pos_averages_micro_batches() -> None:
    w = nn.Parameter(torch.tensor([2.0]))
    gl = GlobalLoss(DistContext(), accumulate=2)
    for v in (1.0, 3.0):
        to_backward, _ = gl.add({"loss": (w * v).sum()})
        to_backward.backward()
    assert gl.finish([w])["loss"] == pytest.approx((2.0 + 6.0) / 2)
    assert float(w.grad) == pytest.approx((1.0 + 3.0) / 2)  # type: ignore[arg-type]


def test_trainer_accumulation_matches_the_big_batch(data: Path, tmp_path: Path) -> None:
    # batch 2 x accumulate 3 == batch 6: 20 images make steps of 6, 6, 6 and a short last one of 2
    big = train(load_config("edge", [*TINY, "epochs=1", "data.batch_size=6"]), data=data, out=tmp_path / "big",
                log=_quiet, progress=False)
    msgs: list[str] = []
    acc = train(load_config("edge", [*TINY, "epochs=1", "data.batch_size=2", "optim.accumulate=3"]), data=data,
                out=tmp_path / "acc", log=msgs.append, progress=False)
    assert big["step"] == acc["step"] == 4
    assert any("3 micro-batches per step" in m for m in msgs)
    _assert_losses_match(_steps(tmp_path / "acc"), _steps(tmp_path / "big"), range(1, 5))
    diff = _max_weight_diff(_weights(tmp_path / "acc" / "ckpt_last.pt"), _weights(tmp_path / "big" / "ckpt_last.pt"))
    assert diff < WEIGHT_ATOL


def test_sync_bn_converts_batchnorm_only_and_needs_cuda() -> None:
    from torchvision.ops import FrozenBatchNorm2d

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), FrozenBatchNorm2d(4), nn.GroupNorm(2, 4))
    weight = model[1].weight
    gpu = DistContext(rank=0, world_size=2, device=torch.device("cuda", 0))  # conversion itself needs no GPU
    converted = convert_sync_bn(model, gpu)
    assert [type(m).__name__ for m in converted] == ["Conv2d", "SyncBatchNorm", "FrozenBatchNorm2d", "GroupNorm"]
    assert converted[1].weight is weight  # an optimiser built before the conversion still updates it

    cpu2 = DistContext(rank=0, world_size=2)
    with pytest.raises(InputError, match=r"sync_bn=true needs CUDA.*head_norm=gn"):
        wrap_model(nn.Sequential(nn.BatchNorm2d(2)), cpu2, sync_bn=True)
    plain = nn.Sequential(nn.BatchNorm2d(2))
    assert wrap_model(plain, DistContext(), sync_bn=True) is plain  # one process: nothing to synchronise


def test_resume_batch_converts_between_world_sizes() -> None:
    assert resume_batch(3, old_world=2, old_batch_size=2, world=2, batch_size=2) == 3
    assert resume_batch(3, old_world=2, old_batch_size=2, world=1, batch_size=4) == 3  # 12 images either way
    assert resume_batch(4, old_world=1, old_batch_size=2, world=2, batch_size=2) == 2
    assert resume_batch(0, old_world=1, old_batch_size=2, world=3, batch_size=5) == 0
    with pytest.raises(InputError, match=r"6 images into its epoch.*2 process\(es\) x batch 2"):
        resume_batch(3, old_world=1, old_batch_size=2, world=2, batch_size=2)


# ---- real torchrun jobs (2 processes, gloo) ----------------------------------------------------------------

def test_torchrun_two_processes_match_one_process(data: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc, _ = _torchrun(["-m", "retinaedge.cli", "train", "--data", str(data), "--out", str(out), "--epochs", "1",
                         *_argv("data.batch_size=2")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 processes (gloo)" in proc.stderr
    assert proc.stdout.count("best AP") == 1  # rank 0 reports
    steps = _steps(out)  # rank 0 alone wrote the log: each step once, with the global loss
    assert sorted(steps) == [1, 2, 3, 4, 5]
    _assert_losses_match(steps, reference["steps"], range(1, 6))
    assert _max_weight_diff(_weights(out / "ckpt_last.pt"), reference["w5"]) < WEIGHT_ATOL
    for name in ("ckpt_best.pt", "metrics.json", "loss.png", "spec.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["step"] == 5
    assert not list(out.glob(".*.tmp"))
    ckpt = torch.load(out / "ckpt_last.pt", weights_only=True)
    assert ckpt["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the plain model's keys, not DDP's


@pytest.fixture(scope="module")
def killed_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2 epochs of 5 steps; rank 1 exits with code 3 during step 7 (after the epoch-1 checkpoint at step 5)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    proc, seconds = _torchrun([__file__, "train", "--data", str(data), "--out", str(out), "--epochs", "2",
                               *_argv("data.batch_size=2")], env={FAULT_MODE: "exit", FAULT_STEP: "7"})
    return {"out": out, "proc": proc, "seconds": seconds}


def test_a_dead_rank_stops_the_job_with_a_message(killed_run: dict[str, Any]) -> None:
    proc = killed_run["proc"]
    assert proc.returncode != 0
    assert killed_run["seconds"] < 60  # torchrun's agent tore the group down; nothing waited for a timeout
    text = proc.stdout + proc.stderr
    # torchrun's failure summary names the rank that died first
    assert re.search(r"Root Cause.*?rank\s*:\s*1\b.*?exitcode\s*:\s*3\b", text, re.S), text[-3000:]
    steps = _steps(killed_run["out"])
    assert 5 <= max(steps) <= 7  # rank 0 got no further than the step rank 1 died in


def test_resume_after_a_killed_rank_continues_from_rank0_checkpoint(
        killed_run: dict[str, Any], reference: dict[str, Any], data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(killed_run["out"], out)
    assert torch.load(out / "ckpt_last.pt", weights_only=True)["step"] == 5
    proc, _ = _torchrun(["-m", "retinaedge.cli", "train", "--data", str(data), "--out", str(out), "--epochs", "2",
                         "--resume", *_argv("data.batch_size=2")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "epoch 1 step 5" in proc.stderr
    steps = _steps(out)  # the log lines the killed run wrote after its checkpoint were dropped
    assert sorted(steps) == list(range(1, 11))
    _assert_losses_match(steps, reference["steps"], range(1, 11))
    assert _max_weight_diff(_weights(out / "ckpt_last.pt"), reference["w10"]) < WEIGHT_ATOL


def test_a_hung_rank_times_out_instead_of_hanging(data: Path, tmp_path: Path) -> None:
    # rank 1 stops answering during step 2; rank 0's collective gives up after distributed.timeout_min (3 s)
    proc, seconds = _torchrun([__file__, "train", "--data", str(data), "--out", str(tmp_path / "run"),
                               "--epochs", "1", *_argv("data.batch_size=2", "distributed.timeout_min=0.05")],
                              env={FAULT_MODE: "hang", FAULT_STEP: "2"})
    assert proc.returncode != 0
    assert seconds < 60
    assert "retinaedge train: error: rank 0/2: loss all_reduce failed (Timed out" in proc.stderr, proc.stderr[-3000:]
    assert "raise distributed.timeout_min" in proc.stderr


# ---- worker mode ------------------------------------------------------------------------------------------

def _worker(argv: list[str]) -> int:
    """``retinaedge`` CLI whose rank 1 exits or hangs at its FAULT_STEP-th loss evaluation."""
    mode, at = os.environ.get(FAULT_MODE), int(os.environ.get(FAULT_STEP, "0"))
    if mode and int(os.environ.get("RANK", "0")) == 1:
        from retinaedge.train import losses

        original = losses.RetinaNetLoss.__call__
        calls = [0]

        def failing(self: Any, outputs: Any, targets: Any) -> Any:
            calls[0] += 1
            if calls[0] == at:
                if mode == "exit":
                    os._exit(3)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a stuck process: torchrun's SIGTERM ends it
                time.sleep(600)
            return original(self, outputs, targets)

        losses.RetinaNetLoss.__call__ = failing  # type: ignore[method-assign]
    from retinaedge.cli import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
