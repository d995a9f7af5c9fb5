"""Optimiser step time: torch's fused update vs its default per-parameter loop on CPU, same run.

`build_optimizer` picks the fused AdamW where torch has one (measured 3.2x here); SGD stays on the loop, whose
fused CPU step measured slower (0.86x).

The parameters are the ``edge`` model's (ResNet-18 body, FPN and heads of width 64) with random gradients; each
implementation steps its own copy, the two alternate in rounds, and the ratio of median step times is printed.
On CPU torch's default is the per-parameter loop (``foreach`` is its default on CUDA only); ``foreach`` is
shown too.

    .venv/bin/python benchmarks/bench_optimizer_step.py --optim adamw
    .venv/bin/python benchmarks/bench_optimizer_step.py --optim sgd
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _edge_params() -> list[torch.nn.Parameter]:
    from retinaedge.train.config import load_config, make_spec
    from retinaedge.train.model import build_model

    cfg = load_config("edge")
    spec = make_spec(cfg, tuple(f"c{i}" for i in range(8)), tuple(range(1, 9)))
    params = [p for p in build_model(spec, cfg.model).parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optim", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation per round")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    def make(**kw: bool) -> torch.optim.Optimizer:
        params = _edge_params()
        if args.optim == "adamw":
            return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, **kw)
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, **kw)

    impls = {"fused": make(fused=True), "loop (default)": make(foreach=False), "foreach": make(foreach=True)}
    n = sum(q.numel() for q in impls["fused"].param_groups[0]["params"])
    times: dict[str, list[float]] = {k: [] for k in impls}
    for opt in impls.values():
        for _ in range(3):
            opt.step()
    for r in range(args.rounds):
        order = list(impls.items())
        for name, opt in order[r % len(order):] + order[: r % len(order)]:
            for _ in range(args.steps):
                t0 = time.perf_counter()
                opt.step()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{args.optim} step over the edge model's {n:,} parameters, {args.threads} threads, "
          f"{args.rounds}x{args.steps} steps each")
    for k, v in med.items():
        print(f"  {k:15s} {v:6.2f} ms")
    print(f"  ratio loop/fused: {med['loop (default)'] / med['fused']:.2f}x   "
          f"foreach/fused: {med['foreach'] / med['fused']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
