"""Training throughput: our RetinaNet vs torchvision's ``RetinaNet``, same architecture, same tensors, same run.

Both models: torchvision ResNet-18 body (same norm layer), FPN P3-P7 of the same width (P6 from P5 or C5
alike), class/box subnets of the same width, depth and norm, 9 anchors per cell from the same spec, the same
input size. torchvision's ``GeneralizedRCNNTransform`` keeps its normalisation and batching (ours normalises
inside ``forward`` too) but its resize is disabled (``_skip_resize``), so both see identical pixels. One
training step = forward + loss (matching included) + backward + SGD step. The two models are timed alternately
in rounds, ``--iters`` steps each per round, and the ratio of median step times is printed.

    .venv/bin/python benchmarks/bench_train_throughput.py --iters 5 --rounds 4 --batch 8 --size 256
    .venv/bin/python benchmarks/bench_train_throughput.py --precision bf16      # both under CPU bf16 autocast
    .venv/bin/python benchmarks/bench_train_throughput.py --precision default   # each as its trainer runs
    .venv/bin/python benchmarks/bench_train_throughput.py --breakdown           # where the time goes, and why
    .venv/bin/python benchmarks/bench_train_throughput.py --compile             # ours through torch.compile

Defaults mirror the ``edge`` preset (R18, FPN/head 64, head depth 2, GroupNorm 16, trainable BN, P6 from P5,
256 px). ``--json OUT`` writes the numbers.

``--breakdown`` also explains the ratio: per model, the convolution FLOPs of one step (torch's
``FlopCounterMode``), the time spent in convolution kernels (torch.profiler, forward and backward), the rate they
reach, this machine's fp32 GEMM rate measured in the same run, and the ceiling on the ratio if every non-conv op of
ours (BatchNorm, ReLU, pooling, loss, optimizer) took no time at all.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn


def _spec(size: int, num_classes: int):
    from retinaedge.runtime.spec import AnchorSpec, DetectorSpec

    return DetectorSpec(class_names=tuple(f"c{i}" for i in range(num_classes)), input_height=size,
                        input_width=size, anchors=AnchorSpec(sizes=(16.0, 32.0, 64.0, 128.0, 256.0)))


def build_ours(args, spec):
    from retinaedge.train.losses import RetinaNetLoss
    from retinaedge.train.model import ModelConfig, build_model

    cfg = ModelConfig(backbone="resnet18", fpn_channels=args.width, head_channels=args.width,
                      head_depth=args.head_depth, head_norm=args.head_norm, gn_groups=args.gn_groups,
                      freeze_bn=args.freeze_bn, channels_last=not args.no_channels_last, p6_from=args.p6_from)
    model = build_model(spec, cfg).train()
    loss_fn = RetinaNetLoss(spec=spec, allow_low_quality=True)
    return model, loss_fn


def build_torchvision(args, spec):
    import torchvision
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    body = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d if args.freeze_bn else nn.BatchNorm2d)
    p6_in = args.width if args.p6_from == "p5" else 512
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], args.width,
                               extra_blocks=LastLevelP6P7(p6_in, args.width))
    a = spec.anchors
    anchor_gen = AnchorGenerator(tuple(tuple(s * c for c in a.scales) for s in a.sizes),
                                 (tuple(a.aspect_ratios),) * len(a.sizes))
    norm = {"none": None, "gn": functools.partial(nn.GroupNorm, args.gn_groups), "bn": nn.BatchNorm2d}[args.head_norm]
    head = RetinaNetHead(args.width, anchor_gen.num_anchors_per_location()[0], spec.num_classes, norm_layer=norm)
    # torchvision's subnets are fixed at 4 blocks: keep the first head_depth (same modules, same code path)
    head.classification_head.conv = head.classification_head.conv[: args.head_depth]
    head.regression_head.conv = head.regression_head.conv[: args.head_depth]
    model = RetinaNet(backbone, spec.num_classes, min_size=spec.input_height, max_size=spec.input_width,
                      image_mean=[m / 255 for m in spec.pixel_mean], image_std=[s / 255 for s in spec.pixel_std],
                      anchor_generator=anchor_gen, head=head, _skip_resize=True)
    return model.train()


def make_batch(spec, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    size = spec.input_height
    images = torch.rand(batch, 3, size, size, generator=g)  # 0..1 for torchvision; x255 for ours
    m = 8
    boxes = torch.zeros(batch, m, 4)
    labels = torch.full((batch, m), -1, dtype=torch.int64)
    tv_targets = []
    for i in range(batch):
        n = int(torch.randint(2, m + 1, (1,), generator=g))
        wh = torch.rand(n, 2, generator=g) * (size / 2 - 12) + 12
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        bx = torch.cat([xy, xy + wh], dim=1)
        lb = torch.randint(0, spec.num_classes, (n,), generator=g)
        boxes[i, :n], labels[i, :n] = bx, lb
        tv_targets.append({"boxes": bx, "labels": lb})
    return images, {"boxes": boxes, "labels": labels}, tv_targets


_CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::thnn_conv2d",
             "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward")


def gemm_gflops(n: int = 2048, reps: int = 8) -> float:
    """This machine's fp32 matmul rate (GFLOP/s) at the current thread count: the yardstick for the convs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def breakdown(step, *, steps: int = 3) -> dict[str, float]:
    """Convolution FLOPs and kernel time of one training step, next to everything else.

    Args:
        step: a zero-argument callable running one full training step.
        steps: profiled steps (after the caller's warm-up).

    Returns:
        ``conv_gflop`` (forward + backward, per step), ``conv_ms`` and ``other_ms`` (self CPU time per step under
        the profiler), ``conv_gflops`` (achieved rate).
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    counts = fc.get_flop_counts()["Global"]
    conv_flop = sum(v for k, v in counts.items() if "convolution" in str(k))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    conv_us = sum(e.self_cpu_time_total for e in events if e.key in _CONV_OPS) / steps
    total_us = sum(e.self_cpu_time_total for e in events) / steps
    return {"conv_gflop": conv_flop / 1e9, "conv_ms": conv_us / 1e3, "other_ms": (total_us - conv_us) / 1e3,
            "conv_gflops": conv_flop / (conv_us * 1e3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=5, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--width", type=int, default=64, help="FPN and head width (torchvision ties them)")
    p.add_argument("--head-depth", type=int, default=2)
    p.add_argument("--head-norm", choices=["none", "gn", "bn"], default="gn")
    p.add_argument("--gn-groups", type=int, default=16)
    p.add_argument("--freeze-bn", action="store_true", help="FrozenBatchNorm2d in both bodies")
    p.add_argument("--p6-from", choices=["c5", "p5"], default="p5")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-channels-last", action="store_true", help="ours in NCHW too (ablation)")
    p.add_argument("--precision", choices=["fp32", "bf16", "default"], default="fp32",
                   help="fp32: both fp32; bf16: both under CPU bf16 autocast; default: each as its trainer runs "
                        "on this machine (ours: bf16 autocast where the CPU has native bf16, as `retinaedge "
                        "train` does; torchvision's reference scripts: fp32 on CPU)")
    p.add_argument("--compile", action="store_true",
                   help="ours through torch.compile (inductor); the first step's compile time is printed, not timed")
    p.add_argument("--breakdown", action="store_true",
                   help="also profile conv FLOPs/time vs the rest, and print the ratio's ceiling")
    p.add_argument("--json", type=Path, help="write results here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = _spec(args.size, args.classes)
    ours, loss_fn = build_ours(args, spec)
    tv = build_torchvision(args, spec)
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_tv = sum(p.numel() for p in tv.parameters() if p.requires_grad)
    if n_ours != n_tv:
        print(f"note: trainable parameters differ: ours {n_ours:,} vs torchvision {n_tv:,}")
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    opt_tv = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images, targets, tv_targets = make_batch(spec, args.batch, seed=0)
    pixels = images * 255  # identical pixels: ours takes 0..255, torchvision 0..1 with mean/std scaled to match
    tv_images = list(images)

    from retinaedge.train.trainer import autocast_dtype

    cpu = torch.device("cpu")
    dtype_ours = {"fp32": None, "bf16": torch.bfloat16, "default": autocast_dtype(cpu, True)}[args.precision]
    dtype_tv = torch.bfloat16 if args.precision == "bf16" else None

    def autocast(dtype: torch.dtype | None):
        return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)

    forward_ours = ours
    if args.compile:
        forward_ours = torch.compile(ours)
        t0 = time.perf_counter()
        loss_fn(forward_ours(pixels), targets)["loss"].backward()
        print(f"torch.compile: first step (compiling forward and backward) {time.perf_counter() - t0:.0f} s")

    def step_ours() -> float:
        with autocast(dtype_ours):
            loss = loss_fn(forward_ours(pixels), targets)["loss"]
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()
        return float(loss.detach())

    def step_tv() -> float:
        with autocast(dtype_tv):
            losses = tv(tv_images, tv_targets)
            loss = sum(losses.values())
        opt_tv.zero_grad(set_to_none=True)
        loss.backward()
        opt_tv.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        step_ours()
        step_tv()
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    for r in range(args.rounds):
        order = [("ours", step_ours), ("torchvision", step_tv)]
        if r % 2:
            order.reverse()  # neither always runs first in a round
        for name, fn in order:
            for _ in range(args.iters):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch / v for k, v in med.items()}
    ratio = ips["ours"] / ips["torchvision"]
    print(f"R18-FPN P3-P7, width {args.width}, head {args.head_depth}x{args.head_norm}, {args.size}px, batch "
          f"{args.batch}, {args.threads} threads, {args.rounds}x{args.iters} steps each, precision "
          f"ours {dtype_ours or 'fp32'} / torchvision {dtype_tv or 'fp32'}{', ours compiled' if args.compile else ''}")
    for k in ("ours", "torchvision"):
        print(f"  {k:12s} {ips[k]:7.2f} img/s  (median step {med[k] * 1000:.0f} ms)")
    print(f"  ratio ours/torchvision: {ratio:.3f}x  (goal >= 1.25x)")
    parts: dict[str, dict[str, float]] = {}
    if args.breakdown:
        parts = {"ours": breakdown(step_ours), "torchvision": breakdown(step_tv)}
        peak = gemm_gflops()
        print(f"  breakdown per step (self CPU time; fp32 GEMM on this machine: {peak:.0f} GFLOP/s):")
        for k, b in parts.items():
            print(f"  {k:12s} conv {b['conv_gflop']:6.1f} GFLOP in {b['conv_ms']:5.0f} ms = {b['conv_gflops']:4.0f} "
                  f"GFLOP/s ({b['conv_gflops'] / peak:.0%} of GEMM); everything else {b['other_ms']:4.0f} ms")
        ceiling = med["torchvision"] / (parts["ours"]["conv_ms"] / 1e3)
        need = med["torchvision"] / 1.25 * 1e3 - parts["ours"]["conv_ms"]
        print(f"  ceiling with the same convolutions and every other op of ours free: {ceiling:.2f}x; 1.25x needs "
              f"ours' non-conv time <= {need:.0f} ms/step (now {med['ours'] * 1e3 - parts['ours']['conv_ms']:.0f} "
              f"ms of wall time)")
        parts["gemm"] = {"gflops": peak}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": {k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in vars(args).items()},
                                         "dtype": {"ours": str(dtype_ours or "fp32"),
                                                   "torchvision": str(dtype_tv or "fp32")},
                                         "img_per_s": ips, "median_step_s": med, "ratio": ratio,
                                         "breakdown": parts, "step_times_s": times}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
