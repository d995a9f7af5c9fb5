"""``retinaedge export-triton``: a Triton model repository for an engine (TensorRT) or ONNX (ONNX Runtime)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "export-triton",
        help="write a Triton model repository (config.pbtxt + model) for an engine or ONNX",
        description=(
            "Write REPO/NAME/config.pbtxt, REPO/NAME/VERSION/model.plan (TensorRT backend) or model.onnx "
            "(ONNX Runtime backend; not for --nms efficient ONNX), labels.txt and spec.json."
        ),
    )
    p.add_argument("--engine", type=str, default=None, help="TensorRT engine (its .engine.json sidecar beside it)")
    p.add_argument(
        "--onnx",
        type=str,
        default=None,
        help="ONNX to serve with ONNX Runtime; with --engine, the ONNX the engine was built from (IO shapes)",
    )
    p.add_argument("--repo", type=str, required=True, help="model repository directory")
    p.add_argument("--name", default="retinaedge", help="model name (default: retinaedge)")
    p.add_argument("--version", type=int, default=1, help="model version directory (default: 1)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="max_batch_size (default: the engine's profile max, 8 for ONNX; 0 disables batching)",
    )
    p.add_argument("--instances", type=int, default=1, help="model instances (default: 1)")
    p.add_argument(
        "--preferred-batch",
        type=str,
        default=None,
        help="comma-separated preferred batch sizes for the dynamic batcher (default: profile opt and max)",
    )
    p.add_argument("--max-queue-delay-us", type=int, default=100, help="dynamic batcher queue delay (default: 100)")
    p.add_argument(
        "--kind", choices=["auto", "gpu", "cpu"], default="auto", help="instance kind (default: auto)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from retinaedge.deploy.triton import TritonConfig, write_triton_repo
    from retinaedge.runtime.errors import InputError

    preferred = None
    if args.preferred_batch:
        try:
            preferred = tuple(int(v) for v in args.preferred_batch.split(","))
        except ValueError:
            raise InputError(
                f"--preferred-batch {args.preferred_batch!r} is not a comma-separated list of integers, e.g. 4,8"
            ) from None
    config = TritonConfig(
        repo=Path(args.repo),
        engine=Path(args.engine) if args.engine else None,
        onnx=Path(args.onnx) if args.onnx else None,
        name=args.name,
        version=args.version,
        max_batch=args.max_batch,
        instances=args.instances,
        preferred_batch=preferred,
        max_queue_delay_us=args.max_queue_delay_us,
        kind=args.kind,
    )
    repo = write_triton_repo(config)
    print(f"wrote {repo.config_path}")
    print(f"wrote {repo.model_path} ({repo.backend} backend, max_batch_size {repo.max_batch_size})")
    print(f"wrote {repo.labels_path} and {repo.spec_path}")
    side = repo.model.sidecar
    if side is not None:
        print(
            f"note: the plan needs TensorRT {side.get('trt_version', '?')} on a {side.get('device_name', '?')}-class "
            "GPU: pick the Triton release that ships that TensorRT"
        )
    print(f"serve: tritonserver --model-repository {Path(args.repo).resolve()}")
    return 0
