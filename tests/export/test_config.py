"""`ExportConfig` validation and the `retinaedge export` command's one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinaedge.cli import main
from retinaedge.export.config import ExportConfig, parse_precisions
from retinaedge.runtime.errors import InputError


def test_precisions_are_parsed_deduplicated_and_ordered(tmp_path: Path) -> None:
    assert parse_precisions("int8-cpu, fp16,fp32") == ("int8-cpu", "fp16", "fp32")
    cfg = ExportConfig(checkpoint=None, out_dir=tmp_path, precisions=("fp16", "fp32", "fp16"))
    assert cfg.precisions == ("fp32", "fp16")
    with pytest.raises(InputError, match=r"precision 'int4' is not supported; choose from \['fp32'"):
        parse_precisions("fp32,int4")


def test_int8_needs_calibration_data(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="need calibration images but calib_data is not set"):
        ExportConfig(checkpoint=None, out_dir=tmp_path, precisions=("int8",))


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("opset", 16, "opset 16 is not supported; choose 17..20"),
    ("nms", "soft", "nms='soft'"),
    ("calib_method", "percentile", "calib_method='percentile'"),
    ("calib_images", 0, "calib_images=0 must be a positive integer"),
    ("exporter", "jit", "exporter='jit'"),
])
def test_bad_values_name_the_value(tmp_path: Path, key: str, value: object, needle: str) -> None:
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        ExportConfig.from_dict({"checkpoint": None, "out_dir": str(tmp_path), key: value})


def test_from_dict_refuses_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown export config keys \['precison'\]"):
        ExportConfig.from_dict({"checkpoint": "c.pt", "out_dir": str(tmp_path), "precison": "fp16"})
    cfg = ExportConfig.from_dict({"checkpoint": "c.pt", "out_dir": str(tmp_path), "precisions": "fp32,fp16"})
    assert cfg.precisions == ("fp32", "fp16") and cfg.to_dict()["checkpoint"] == "c.pt"


def test_cli_unsupported_opset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o"), "--opset", "13"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert err == "retinaedge export: error: opset 13 is not supported; choose 17..20 (TensorRT 8.6 reads up to 17, " \
                  "10.0 up to 20)"


def test_cli_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "nope.pt" in err
