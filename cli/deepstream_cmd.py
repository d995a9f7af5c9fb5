"""``retinaedge export-deepstream``: nvinfer config, labels and bbox parser for an EfficientNMS engine."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "export-deepstream",
        help="write a Gst-nvinfer config, labels and bbox parser for an EfficientNMS engine",
        description=(
            "Write OUT/config_infer_primary_retinaedge.txt, labels.txt, a copy of the engine, and the "
            "NvDsInferParseRetinaEdge parser source + Makefile (build once with make -C OUT)."
        ),
    )
    p.add_argument("--engine", type=str, required=True, help="TensorRT engine built from an --nms efficient ONNX")
    p.add_argument(
        "--onnx", type=str, default=None, help="the ONNX the engine was built from (lets nvinfer rebuild it)"
    )
    p.add_argument("--out", type=str, required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=None, help="nvinfer batch-size (default: the profile's max)")
    p.add_argument("--gpu-id", type=int, default=0, help="nvinfer gpu-id (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from retinaedge.deploy.deepstream import DeepStreamConfig, write_deepstream_config

    files = write_deepstream_config(
        DeepStreamConfig(
            engine=Path(args.engine),
            out=Path(args.out),
            onnx=Path(args.onnx) if args.onnx else None,
            batch_size=args.batch_size,
            gpu_id=args.gpu_id,
        )
    )
    print(f"wrote {files.config_path}")
    print(f"wrote {files.labels_path}, {files.engine_path.name}, {files.parser_source.name}, Makefile")
    out = Path(args.out)
    print(f"next: make -C {out}   (builds {files.properties['custom-lib-path']} against DeepStream's headers)")
    print(f"then: config-file-path={files.config_path.resolve()} on your nvinfer element (or [primary-gie])")
    return 0
