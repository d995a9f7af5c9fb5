"""``retinaedge build`` (cli/build_cmd.py): argument parsing, and the one-line hint without TensorRT."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from retinaedge.cli import build_parser, main
from retinaedge.cli.build_cmd import parse_batch


@pytest.mark.parametrize(("text", "expected"), [("1:4:8", (1, 4, 8)), ("4", (4, 4, 4)), ("2:2:2", (2, 2, 2))])
def test_parse_batch(text, expected):
    assert parse_batch(text) == expected


@pytest.mark.parametrize("text", ["8:4:1", "0:1:2", "1:2", "a:b:c", "1:2:3:4", ""])
def test_parse_batch_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="min:opt:max"):
        parse_batch(text)


def test_parser_options(tmp_path):
    args = build_parser().parse_args([
        "build", "--onnx", "m.int8.onnx", "--out", "e", "--precision", "int8", "--batch", "1:2:4",
        "--workspace", "512", "--dla", "0", "--timing-cache", "t.cache", "--calib-data", "data",
        "--version-compatible", "--hardware-compatible",
    ])
    assert args.batch == (1, 2, 4) and args.precision == "int8" and args.workspace == 512 and args.dla == 0
    assert args.version_compatible and args.hardware_compatible and str(args.calib_data) == "data"
    defaults = build_parser().parse_args(["build", "--onnx", "m.onnx", "--out", "e"])
    assert defaults.batch is None and defaults.precision == "auto" and defaults.dla is None


def test_bad_batch_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--onnx", "m.onnx", "--out", "e", "--batch", "8:1:1"])
    assert e.value.code == 2 and "min:opt:max" in capsys.readouterr().err


def test_without_tensorrt_one_line_install_hint(tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed on this host")
    onnx = tmp_path / "model.fp32.onnx"
    onnx.write_bytes(b"x")
    rc = main(["build", "--onnx", str(onnx), "--out", str(tmp_path / "engines")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and err.startswith("retinaedge build: error: tensorrt is needed for building engines")
    assert "install TensorRT" in err
    assert not (tmp_path / "engines").exists()
