"""Multi-process training through PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc_per_node N -m retinaedge.cli train ...`` starts N copies of the ordinary training
command; torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``, and
`init_distributed` reads them. A run without them (plain ``retinaedge train``) is a world of one: no process
group, no DDP, and the same code path otherwise.

What this module guarantees, and how:

- **Same global batch, same result.** Every rank draws its batches from a ``DistributedSampler`` seeded
  identically; with ``shuffle=True`` it permutes ``range(n)`` with ``seed + epoch`` and gives rank ``r`` the
  positions ``r, r + N, r + 2N, ...``, so batch ``i`` of all ranks together is exactly the block
  ``perm[i*b*N : (i+1)*b*N]`` -- the batch ``i`` a single process with batch ``b*N`` reads from the same
  sampler (the trainer uses it for ``N = 1`` too).
- **Global focal-loss normaliser.** RetinaNet divides its summed losses by the number of positive anchors.
  `GlobalLoss` all-reduces that count (as detectron2 does) and also sums it over the ``optim.accumulate``
  micro-batches of one optimiser step, so the gradient is that of
  ``sum(loss over every image of the step) / max(1, positives of the step)`` whatever N and k are; the
  logged loss is that global value on every rank.
- **One writer.** Logging, checkpoints, evaluation, ``metrics.json`` and ``loss.png`` happen on rank 0;
  the others wait at a barrier. Stop decisions (time budget, SIGTERM) are agreed by all ranks.
- **No hangs.** The process group has a finite timeout (``distributed.timeout_min``); a failed collective
  (a peer died) raises `DistributedError`, one line naming the rank and the operation. torchrun's elastic
  agent tears the whole group down as soon as one worker exits with an error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from retinaedge.runtime.errors import InputError, RetinaEdgeError

__all__ = [
    "DistContext",
    "DistributedError",
    "GlobalLoss",
    "convert_sync_bn",
    "distributed_loader",
    "env_world",
    "init_distributed",
    "resume_batch",
    "wrap_model",
]

T = TypeVar("T")

_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class DistributedError(RetinaEdgeError, RuntimeError):
    """A collective operation failed (a peer died, hung past the timeout, or the network broke)."""


def env_world(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment variables; ``(0, 0, 1)`` without them.

    Raises:
        InputError: a variable that is not an integer, or a rank outside ``0..world_size-1``.
    """
    env = os.environ if environ is None else environ
    values = []
    for key, default in zip(_ENV_KEYS, ("0", "0", "1"), strict=True):
        raw = env.get(key, default)
        try:
            values.append(int(raw))
        except ValueError:
            raise InputError(f"environment {key}={raw!r} is not an integer; launch with torchrun, "
                             "which sets RANK, LOCAL_RANK and WORLD_SIZE") from None
    rank, local_rank, world = values
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise InputError(f"environment RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world} is inconsistent; "
                         "need 0 <= RANK < WORLD_SIZE; launch with torchrun")
    return rank, local_rank, world


@dataclass
class DistContext:
    """Where this process sits in the job, and the few collectives the trainer needs.

    A default-constructed context is a world of one: every collective is the identity and nothing touches
    ``torch.distributed``.

    Attributes:
        rank: global rank, ``0..world_size-1``; rank 0 writes every artifact.
        local_rank: rank on this machine; picks the GPU (``cuda:local_rank``).
        world_size: number of processes.
        device: this process's training device.
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (no process group).
        owns_group: `close` destroys the process group (it was created by `init_distributed`).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, evaluates and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when there is more than one process (collectives actually communicate)."""
        return self.world_size > 1

    # -- collectives: identity in a world of one ----------------------------------------------------
    @contextmanager
    def errors(self, what: str, *, any_runtime_error: bool = False) -> Iterator[None]:
        """Turn a failed collective into a one-line `DistributedError` naming this rank and ``what``.

        Only ``torch.distributed.DistError`` (a peer died, a timeout) is translated, unless
        ``any_runtime_error`` (inside a bare collective, where gloo also raises plain ``RuntimeError``).
        A world of one translates nothing.
        """
        try:
            yield
        except RuntimeError as e:  # DistBackendError / gloo "Connection closed by peer" / timeouts
            if isinstance(e, RetinaEdgeError) or not self.is_distributed:
                raise
            dist_error = getattr(torch.distributed, "DistError", None)
            if not any_runtime_error and not (dist_error is not None and isinstance(e, dist_error)):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:200]  # gloo's "[pair.cc:561] " prefix
            timed_out = "timed out" in first.lower() or "timeout" in first.lower()
            raise DistributedError(
                f"rank {self.rank}/{self.world_size}: {what} failed ({first}); another rank probably died or hung "
                "-- torchrun's failure summary names the first failing rank"
                + ("; if rank 0 was only slow (evaluation), raise distributed.timeout_min" if timed_out else "")
            ) from e

    def barrier(self, what: str = "barrier") -> None:
        """Wait for every rank (the others while rank 0 evaluates and saves)."""
        if self.is_distributed:
            import torch.distributed as dist

            with self.errors(what, any_runtime_error=True):
                dist.barrier()

    def all_reduce_(self, tensor: Tensor, *, op: str = "sum", what: str = "all_reduce") -> Tensor:
        """In-place ``sum`` or ``max`` over ranks of ``tensor`` (on `device` for NCCL); returns it."""
        if self.is_distributed:
            import torch.distributed as dist

            red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
            with self.errors(what, any_runtime_error=True):
                dist.all_reduce(tensor, op=red)
        return tensor

    def broadcast_object(self, obj: T, *, what: str = "broadcast") -> T:
        """Rank 0's ``obj`` on every rank (pickled; for small things and resume checkpoints)."""
        if not self.is_distributed:
            return obj
        import torch.distributed as dist

        box: list[Any] = [obj if self.is_main else None]
        with self.errors(what, any_runtime_error=True):
            dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]  # type: ignore[no-any-return]

    def on_main(self, fn: Callable[[], T], *, what: str) -> T:
        """Run ``fn`` on rank 0 only and hand its result -- or the `RetinaEdgeError` it raised -- to every rank.

        So a bad ``--resume`` directory stops all ranks with rank 0's message instead of leaving them waiting.
        """
        if not self.is_distributed:
            return fn()
        result: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                result = (True, fn())
            except RetinaEdgeError as e:
                result = (False, e)
        ok, value = self.broadcast_object(result, what=what)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def agree_stop(self, code: int, elapsed_s: float) -> tuple[int, float]:
        """Make a stop decision and the wall clock the same on every rank.

        Args:
            code: this rank's reason to stop after the current step (0 = go on; larger codes win).
            elapsed_s: this rank's elapsed training time.

        Returns:
            ``(max code over ranks, max elapsed over ranks)``: every rank stops together and computes the
            same time-budget learning rate (ranks whose LRs differ would drift apart).
        """
        if not self.is_distributed:
            return code, elapsed_s
        t = torch.tensor([float(code), elapsed_s], dtype=torch.float64, device=self.device)
        self.all_reduce_(t, op="max", what="stop agreement")
        return int(t[0].item()), float(t[1].item())

    @contextmanager
    def maybe_no_sync(self, model: nn.Module, *, sync: bool) -> Iterator[None]:
        """DDP's ``no_sync()`` around forward and backward of a micro-batch that does not end the step."""
        no_sync = getattr(model, "no_sync", None)
        with no_sync() if (not sync and no_sync is not None) else nullcontext():
            yield

    def close(self) -> None:
        """Destroy the process group if `init_distributed` created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def init_distributed(*, device: torch.device, backend: str = "auto", timeout_min: float = 30.0,
                     environ: Mapping[str, str] | None = None) -> DistContext:
    """Join the torchrun job described by the environment, or make a world of one.

    Args:
        device: the device the config asks for (``cpu`` or ``cuda``); with CUDA each process takes
            ``cuda:LOCAL_RANK``.
        backend: ``"auto"`` (NCCL on CUDA, gloo on CPU), ``"nccl"`` or ``"gloo"``.
        timeout_min: process-group timeout: a collective waiting longer than this raises instead of hanging.
            It must exceed rank 0's evaluation time (the others wait at a barrier meanwhile).
        environ: the environment (default ``os.environ``).

    Returns:
        The context; a process group already initialised by the caller is used as it is (and not destroyed
        by `DistContext.close`).

    Raises:
        InputError: inconsistent torchrun variables, a LOCAL_RANK without a GPU, NCCL without CUDA, or a
            torch build without ``torch.distributed``.
    """
    rank, local_rank, world = env_world(environ)
    if world == 1:
        return DistContext(device=device)
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError(f"WORLD_SIZE={world} but this torch build has no torch.distributed; "
                         "install a torch with distributed support")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise InputError(f"LOCAL_RANK={local_rank} but only {count} CUDA device(s) are visible; "
                             "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    allowed = ("auto", "nccl", "gloo")
    if backend not in allowed:
        raise InputError(f"distributed.backend={backend!r} is not allowed; choose one of {list(allowed)}")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise InputError(f"distributed.backend='nccl' needs CUDA but the device is {device.type!r}; "
                         "use backend=gloo (or auto) on CPU")
    if not math.isfinite(timeout_min) or timeout_min <= 0:
        raise InputError(f"distributed.timeout_min={timeout_min!r} must be a finite number > 0")
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise InputError(f"the running process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                             f"disagrees with RANK={rank}, WORLD_SIZE={world}")
        return DistContext(rank=rank, local_rank=local_rank, world_size=world, device=device,
                           backend=str(dist.get_backend()), owns_group=False)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, device=device, backend=backend,
                       owns_group=True)


def wrap_model(model: nn.Module, ctx: DistContext, *, sync_bn: bool = False) -> nn.Module:
    """``model`` for the training forward: itself in a world of one, else in DistributedDataParallel.

    Call it after loading any checkpoint and before the first forward; keep using the unwrapped ``model``
    for evaluation and ``state_dict`` (no ``module.`` prefix in checkpoints).

    Args:
        model: the detector, already on ``ctx.device``.
        ctx: the process's place in the job.
        sync_bn: convert every ``BatchNorm*d`` to ``SyncBatchNorm`` (statistics over the global batch).
            Parameters are shared with the originals, so an optimiser built earlier stays valid.
            ``FrozenBatchNorm2d`` and ``GroupNorm`` are left alone; a world of one needs no conversion.

    Raises:
        InputError: ``sync_bn`` on CPU (torch's SyncBatchNorm forward runs on GPUs only).
    """
    if not ctx.is_distributed:
        return model
    if sync_bn:
        model = convert_sync_bn(model, ctx)
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def convert_sync_bn(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Replace every ``BatchNorm*d`` in ``model`` by ``SyncBatchNorm`` sharing its parameters and buffers.

    ``FrozenBatchNorm2d`` (fixed statistics) and ``GroupNorm`` (no batch statistics) are left alone. The
    returned module is ``model`` itself unless ``model`` is a BatchNorm layer.

    Raises:
        InputError: a CPU device: torch's SyncBatchNorm forward accepts GPU (CUDA/XPU/HPU) inputs only.
    """
    if ctx.device.type != "cuda":
        raise InputError(f"distributed.sync_bn=true needs CUDA (torch's SyncBatchNorm rejects {ctx.device.type!r} "
                         "inputs); on CPU use model.head_norm=gn and model.freeze_bn=true, or sync_bn=false")
    converted: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    return converted


def distributed_loader(dataset: Any, *, batch_size: int, workers: int, seed: int, epoch: int,
                       ctx: DistContext) -> torch.utils.data.DataLoader[Any]:
    """This rank's share of epoch ``epoch``, in `retinaedge.train.data.coco.collate` batches.

    The order is ``DistributedSampler(shuffle=True, seed=seed)`` with ``set_epoch(epoch)``: a function of
    ``(seed, epoch)`` only, identical for every world size once the ranks' batches are put together. When
    the dataset does not divide by the world size the sampler repeats the first images to even the ranks.

    Args:
        dataset: a map-style dataset (usually `CocoDetection`, whose ``reseed`` seeds augmentation).
        batch_size: images per rank per micro-batch.
        workers: DataLoader worker processes (0 = in this process).
        seed: the shuffle seed (the same on every rank).
        epoch: the epoch (reshuffles).
        ctx: gives ``rank`` and ``world_size``; augmentation streams differ per rank.

    Returns:
        A DataLoader of ``ceil(ceil(len(dataset) / world_size) / batch_size)`` batches.
    """
    from torch.utils.data import DistributedSampler

    from retinaedge.train.data.coco import make_loader

    sampler: DistributedSampler[Any] = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                                          shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    aug_seed = seed + epoch + 1_000_003 * ctx.rank  # rank 0 of any world: the same stream
    return make_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers, seed=aug_seed,
                       sampler=sampler)


def resume_batch(batch: int, *, old_world: int, old_batch_size: int, world: int, batch_size: int) -> int:
    """This rank's batches already done in the epoch, for a checkpoint written by another world size or batch.

    The global sample order does not depend on the world size (see `distributed_loader`), so ``batch``
    batches of ``old_batch_size`` on each of ``old_world`` ranks are ``batch * old_batch_size * old_world``
    samples of the epoch's order, which is a whole number of new batches only if it divides.

    Raises:
        InputError: a mid-epoch position that the new global batch does not divide.
    """
    if batch == 0 or (old_world, old_batch_size) == (world, batch_size):
        return batch
    samples = batch * old_batch_size * old_world
    per_step = batch_size * world
    if samples % per_step:
        raise InputError(
            f"--resume: the checkpoint stopped {samples} images into its epoch ({old_world} process(es) x batch "
            f"{old_batch_size}), which {world} process(es) x batch {batch_size} cannot continue exactly; resume "
            f"with {old_world} process(es) and data.batch_size={old_batch_size}, or a divisor of {samples} images "
            "per step"
        )
    return samples // per_step


class GlobalLoss:
    """Normalise the loss of one optimiser step by the positives of the whole step, over ranks and micro-batches.

    Per micro-batch, `add` all-reduces ``[loss, cls_loss, box_loss] * max(1, num_pos)`` (the summed losses)
    and ``num_pos``, and returns the tensor to back-propagate: the local sum divided by a constant ``c`` fixed
    at the window's first micro-batch (``k * max(1, its global positives)``) and multiplied by the world size
    (DDP averages gradients). `finish` then rescales the gradients by ``c / max(1, positives of the step)``,
    so they are exactly the gradients of ``global sum / max(1, global positives)``. With one process and
    ``k = 1`` both factors are exactly 1 and nothing changes.

    A loss without ``num_pos`` is taken as already normalised (``num_pos = 1`` per micro-batch per rank): the
    step then averages the micro-batch losses.

    Args:
        ctx: the process's place in the job.
        accumulate: nominal micro-batches per optimiser step (``optim.accumulate``).
    """

    _KEYS = ("loss", "cls_loss", "box_loss")

    def __init__(self, ctx: DistContext, *, accumulate: int = 1) -> None:
        if accumulate < 1:
            raise InputError(f"optim.accumulate={accumulate!r} must be >= 1")
        self.ctx = ctx
        self.accumulate = accumulate
        self._c: float | None = None
        self._total: Tensor | None = None
        self._keys: tuple[str, ...] = ()
        self._extra: dict[str, float] = {}

    def add(self, losses: Mapping[str, Tensor]) -> tuple[Tensor, float]:
        """Account one micro-batch.

        Args:
            losses: this rank's loss dict: ``"loss"`` (scalar with grad), optional ``"cls_loss"``,
                ``"box_loss"`` (normalised by ``max(1, num_pos)``) and ``"num_pos"``.

        Returns:
            ``(loss to call backward on, global loss of this micro-batch)``; the second is the same on every
            rank, so a non-finite check on it stops all ranks together.
        """
        loss = losses["loss"]
        keys = tuple(k for k in self._KEYS if k in losses)
        num_pos = losses.get("num_pos")
        pos = num_pos.detach().to(torch.float64).reshape(()) if num_pos is not None else None
        local_pos = float(pos) if pos is not None else 1.0
        norm = max(1.0, local_pos)
        vals = [losses[k].detach().to(torch.float64).reshape(()) * norm for k in keys]
        stats = torch.stack([*vals, torch.tensor(local_pos, dtype=torch.float64, device=loss.device)])
        self.ctx.all_reduce_(stats, what="loss all_reduce")
        global_pos = float(stats[-1])
        if self._c is None:
            self._c = self.accumulate * max(1.0, global_pos)
            self._total = torch.zeros_like(stats)
            self._keys = keys
        if keys != self._keys or self._total is None:
            raise InputError(f"the loss returned keys {list(keys)} after {list(self._keys)}; it must return the same "
                             "keys for every batch")
        self._total += stats
        self._extra = {k: float(v.detach()) for k, v in losses.items() if k not in keys and k != "num_pos"}
        factor = norm * self.ctx.world_size / self._c
        to_backward = loss if factor == 1.0 else loss * factor
        return to_backward, float(stats[0]) / max(1.0, global_pos)

    def finish(self, parameters: Iterable[nn.Parameter]) -> dict[str, float]:
        """End the optimiser step: rescale the gradients of ``parameters``; return the step's global losses.

        Call after the last micro-batch's backward and before unscaling/clipping/stepping.

        Returns:
            ``{"loss", "cls_loss", "box_loss" (those the loss returned), "num_pos"}`` over the whole step
            (all ranks, all micro-batches), plus any other keys of the last micro-batch as they were.
        """
        if self._c is None or self._total is None:
            raise InputError("GlobalLoss.finish() before any add(); call add() for each micro-batch first")
        total_pos = float(self._total[-1])
        denom = max(1.0, total_pos)
        corr = self._c / denom
        if corr != 1.0:
            with torch.no_grad():
                for p in parameters:
                    if p.grad is not None:
                        p.grad.mul_(corr)
        out = {k: float(self._total[i]) / denom for i, k in enumerate(self._keys)}
        out["num_pos"] = total_pos
        out.update(self._extra)
        self._c = None
        self._total = None
        return out
