"""``retinaedge validate``: the gate's exit code, report.json keys, skipped engines, the torch reference row."""

import json
import shutil
from pathlib import Path

import pytest

from retinaedge.cli import main
from tests.support import scenes

pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")

ROW_KEYS = ["model", "backend", "precision", "nms", "AP", "AP50", "AP75", "retained", "latency_ms_p50",
            "latency_ms_p99", "max_abs_diff", "det_agreement", "batch_consistent", "pass"]




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return scenes.write_square_data(tmp_path_factory.mktemp("squares"))


def models(d: Path, **variants: float) -> Path:
    """Oracle ONNX files ``model.<precision>.onnx``; the value is the box shift in network pixels."""
    d.mkdir(parents=True, exist_ok=True)
    for precision, shift in variants.items():
        scenes.oracle_onnx(d / f"model.{precision}.onnx", scenes.tiny_spec(), precision=precision, shift=shift)
    return d


def report(path: Path) -> dict:
    return json.loads((path / "report.json").read_text())


def test_degraded_model_fails_the_gate_with_exit_code_1(data, tmp_path, capsys):
    d = models(tmp_path / "m", fp32=0.0, fp16=6.0)  # fp16 boxes shifted by 6 px: IoU < 0.5
    rc = main(["validate", "--data", str(data), "--models", str(d), "--report", str(tmp_path / "r")])
    assert rc == 1
    rep = report(tmp_path / "r")
    assert {"gate", "reference", "rows"} <= set(rep)
    assert rep["gate"] == {"fp16": 0.999, "int8": 0.99} and rep["reference"] == "ort-fp32"
    assert [list(r)[: len(ROW_KEYS)] for r in rep["rows"]] == [ROW_KEYS, ROW_KEYS]
    ref, fp16 = rep["rows"]
    assert (ref["precision"], ref["pass"], fp16["precision"], fp16["pass"]) == ("fp32", True, "fp16", False)
    assert fp16["retained"] < 0.5 and fp16["det_agreement"] == 0.0
    out = capsys.readouterr().out
    assert "FAIL" in out and "gate FAILED" in out


def test_matching_models_pass_and_engines_without_tensorrt_are_skipped(data, tmp_path, capsys):
    d = models(tmp_path / "m", fp32=0.0, fp16=0.0)
    (d / "model.fp16.engine").write_bytes(b"not a real plan")
    rc = main(["validate", "--data", str(data), "--models", str(d), "--report", str(tmp_path / "r"),
               "--gate", "fp16=0.999,int8=0.99", "--max-images", "6"])
    assert rc == 0, capsys.readouterr()
    rep = report(tmp_path / "r")
    assert [r["pass"] for r in rep["rows"]] == [True, True] and rep["rows"][1]["det_agreement"] == 1.0
    assert rep["images"] == 6
    assert [s["model"] for s in rep["skipped"]] == [str(d / "model.fp16.engine")]
    assert rep["skipped"][0]["reason"] and "\n" not in rep["skipped"][0]["reason"]
    assert "gate passed" in capsys.readouterr().out
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"report.md", "pr_curves.png", "samples_ort-model.fp32.png", "samples_ort-model.fp16.png"} <= names


def test_explicit_files_and_a_stricter_gate(data, tmp_path):
    d = models(tmp_path / "m", fp32=0.0, int8=1.0)  # 1 px shift: AP drops a little, AP50 does not
    files = [str(d / "model.fp32.onnx"), str(d / "model.int8.onnx")]
    base = ["validate", "--data", str(data), "--models", *files]
    assert main([*base, "--report", str(tmp_path / "strict"), "--gate", "int8=0.999"]) == 1
    int8 = report(tmp_path / "strict")["rows"][1]
    assert int8["AP50"] == 1.0 and int8["retained"] < 0.999
    assert main([*base, "--report", str(tmp_path / "loose"), "--gate", f"int8={int8['retained'] - 0.01:.4f}"]) == 0


def test_usage_errors_are_one_line(data, tmp_path, capsys):
    assert main(["validate", "--data", str(data), "--models", str(tmp_path / "none"), "--report", str(tmp_path)]) == 2
    assert main(["validate", "--data", str(data), "--models", str(tmp_path), "--report", str(tmp_path)]) == 2
    d = models(tmp_path / "m", fp32=0.0)
    assert main(["validate", "--data", str(data), "--models", str(d), "--report", str(tmp_path / "r"),
                 "--gate", "fp16=lots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("retinaedge validate: error:") for line in err)


def test_torch_reference_from_a_checkpoint(tmp_path_factory, tmp_path, capsys):
    """The real pipeline: --checkpoint adds the torch FP32 reference; ONNX rows get Polygraphy raw errors."""
    pytest.importorskip("torch")
    pipeline = scenes.build_pipeline(tmp_path_factory.getbasetemp())
    d = tmp_path / "m"
    d.mkdir()
    for key in ("fp32", "fp16"):
        shutil.copy(pipeline[key], d)
    shutil.copy(pipeline["models"] / "spec.json", d)
    rc = main(["validate", "--data", str(pipeline["data"]), "--models", str(d), "--checkpoint",
               str(pipeline["checkpoint"]), "--report", str(tmp_path / "r"), "--batch", "2"])
    rep = report(tmp_path / "r")
    assert rc == (0 if rep["passed"] else 1)
    assert rep["reference"] == "torch-fp32"
    assert [(r["backend"], r["precision"]) for r in rep["rows"]] == [("torch", "fp32"), ("ort", "fp16"),
                                                                     ("ort", "fp32")]
    assert rep["rows"][0]["nms"] == "efficient"  # torch heads + the exported NMS (--reference-nms export)
    ort32 = rep["rows"][2]
    assert ort32["max_abs_diff"] is not None and ort32["max_abs_diff"] < 1e-3
    assert ort32["det_agreement"] >= 0.99 and ort32["batch_consistent"] is True and ort32["pass"] is True
    assert "retinaedge validate — reference torch-fp32" in capsys.readouterr().out
