"""The ``retinaedge`` command. Each subcommand lives in its own light module (argparse only at import
time) exposing ``register(subparsers)`` and ``run(args) -> int``; heavy libraries are imported inside
``run``. Errors derived from `RetinaEdgeError` are printed as one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module under retinaedge.cli
COMMANDS: dict[str, str] = {
    "data": "data_cmd",
    "train": "train_cmd",
    "eval": "eval_cmd",
    "export": "export_cmd",
    "qat": "qat_cmd",
    "build": "build_cmd",
    "infer": "infer_cmd",
    "validate": "validate_cmd",
    "bench": "bench_cmd",
    "demo": "demo_cmd",
    "export-triton": "triton_cmd",
    "export-deepstream": "deepstream_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retinaedge",
        description="Focal-loss RetinaNet: train -> ONNX (+EfficientNMS) -> TensorRT engines -> runtime.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(f"retinaedge.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"retinaedge.cli.{module}":
                raise
            continue  # subcommand not shipped in this build
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from retinaedge.runtime.errors import RetinaEdgeError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RetinaEdgeError as e:
        print(f"retinaedge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"retinaedge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
