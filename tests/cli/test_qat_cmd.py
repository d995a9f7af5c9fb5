"""``retinaedge qat``: a tiny end-to-end run through the CLI and its one-line errors (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("modelopt.torch.quantization")

from retinaedge.cli import main  # noqa: E402

TINY = [
    "num_threads=1", "eval_batch_size=4", "log_every=1", "eval_every=1", "epochs=1", "amp=false",
    "model.fpn_channels=8", "model.head_channels=8", "model.head_depth=1", "model.gn_groups=4",
    "model.channels_last=false", "model.trainable_layers=0",
    "data.input_size=64", "data.progressive_size=0", "data.batch_size=2", "data.workers=0",
    "anchors.strides=[8, 16]", "anchors.sizes=[12, 24]", "optim.warmup_iters=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from retinaedge.train.config import load_config
    from retinaedge.train.data.synth import write_synthetic_coco
    from retinaedge.train.trainer import train

    root = tmp_path_factory.mktemp("qatcli")
    write_synthetic_coco(root / "data", train=4, val=2, size=64, seed=0)
    with torch.random.fork_rng():
        train(load_config("edge", TINY), data=root / "data", out=root / "run", log=lambda _: None, progress=False)
    return root / "data", root / "run"


def test_qat_runs_and_writes_the_int8_onnx(trained: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data, run = trained
    out = tmp_path / "qat"
    rc = main(["qat", "--checkpoint", str(run / "ckpt_best.pt"), "--data", str(data), "--out", str(out),
               "--epochs", "1", "--calib-images", "2"])
    text = capsys.readouterr().out
    assert rc == 0, text
    for name in ("qat_state.pt", "ckpt_last.pt", "metrics.json", "export/model.int8.onnx", "export/spec.json"):
        assert (out / name).is_file(), name
    assert "QAT best AP" in text and "TensorRT 10/11: OK" in text


def test_missing_checkpoint_is_one_line_naming_it(trained: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = trained
    missing = tmp_path / "no" / "ckpt_best.pt"
    rc = main(["qat", "--checkpoint", str(missing), "--data", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and str(missing) in err and "pass RUN/ckpt_best.pt" in err


def test_resume_of_a_training_run_is_one_line(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = trained
    rc = main(["qat", "--checkpoint", str(run / "ckpt_best.pt"), "--data", str(data), "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and str(run) in err and "not a QAT run" in err and "drop --resume" in err


def test_qat_is_listed_and_bad_minutes_refused(trained: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data, run = trained
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "qat" in capsys.readouterr().out
    rc = main(["qat", "--checkpoint", str(run / "ckpt_best.pt"), "--data", str(data), "--out", str(tmp_path / "m"),
               "--minutes", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--minutes 0.0 must be > 0" in err
