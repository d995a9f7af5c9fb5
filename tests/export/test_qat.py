"""``retinaedge qat`` (export/qat.py) on a tiny trained RetinaNet: the Q/DQ export passes the lint and matches
ModelOpt ONNX PTQ's structure, the run resumes to the same end state as an uninterrupted one, bad input fails in
one line.

The source checkpoint is trained for 2 epochs by the project's trainer on a 6-image synthetic set at 64 px
(8 channels, 2 FPN levels): seconds per run on one thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("modelopt.torch.quantization")

from retinaedge.runtime.errors import InputError, ModelError  # noqa: E402

TINY = [
    "num_threads=1", "eval_batch_size=4", "log_every=1", "eval_every=1", "epochs=2", "amp=false",
    "model.fpn_channels=8", "model.head_channels=8", "model.head_depth=1", "model.gn_groups=4",
    "model.channels_last=false", "model.trainable_layers=0",
    "data.input_size=64", "data.progressive_size=0", "data.batch_size=2", "data.workers=0",
    "anchors.strides=[8, 16]", "anchors.sizes=[12, 24]",
    "optim.warmup_iters=2",
]


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def qat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retinaedge.train.data.synth import write_synthetic_coco

    root = tmp_path_factory.mktemp("qatsynth")
    write_synthetic_coco(root, train=6, val=3, size=64, seed=0)  # 3 steps per epoch at batch 2
    return root


@pytest.fixture(scope="module")
def source_ckpt(tmp_path_factory: pytest.TempPathFactory, qat_data: Path) -> Path:
    from retinaedge.train.config import load_config
    from retinaedge.train.trainer import train

    out = tmp_path_factory.mktemp("qatsrc") / "run"
    with torch.random.fork_rng():
        train(load_config("edge", TINY), data=qat_data, out=out, log=_quiet, progress=False)
    return out / "ckpt_best.pt"


def _config(ckpt: Path, data: Path, out: Path, **kw: Any) -> Any:
    from retinaedge.export.qat import QatConfig

    base: dict[str, Any] = dict(checkpoint=ckpt, data=data, out=out, epochs=2, calib_images=4, warmup_iters=1,
                                lr_scale=0.1)
    base.update(kw)
    return QatConfig(**base)


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory, source_ckpt: Path, qat_data: Path) -> Any:
    from retinaedge.export.qat import run_qat

    out = tmp_path_factory.mktemp("qat") / "run"
    lines: list[str] = []
    result = run_qat(_config(source_ckpt, qat_data, out, epochs=1), echo=lines.append, progress=False)
    return result, lines


def test_qat_export_passes_the_lint_and_reads_as_int8(qat_run: Any) -> None:
    from retinaedge.export.lint import lint_onnx
    from retinaedge.runtime.onnxinfo import describe_onnx

    result, lines = qat_run
    assert result.onnx == result.out / "export" / "model.int8.onnx"
    report = lint_onnx(result.onnx, target_trt_majors=(10, 11))
    assert report.ok, report.summary()
    assert not report.errors and not report.warnings, [str(f) for f in report.errors + report.warnings]
    info = describe_onnx(result.onnx)
    assert info.precision == "int8" and info.target == "tensorrt" and info.nms == "efficient"
    model = onnx.load(str(result.onnx))
    # the EfficientNMS_TRT tail, appended as for every export
    assert sum(n.op_type == "EfficientNMS_TRT" for n in model.graph.node) == 1
    assert (result.out / "export" / "spec.json").is_file() and (result.out / "export" / "export.json").is_file()
    assert result.qdq["zero_point_dtypes"] == ["int8"]
    assert any(line.startswith("qat: wrote") for line in lines)


def test_qat_qdq_matches_modelopt_onnx_ptq_structurally(qat_run: Any, qat_data: Path) -> None:
    from retinaedge.export import mixed, qat
    from retinaedge.export.calib import load_calibration_set
    from retinaedge.export.int8 import output_tail_nodes, quantize_int8_tensorrt
    from retinaedge.export.onnx_export import export_onnx
    from retinaedge.export.pipeline import run_pre_nms
    from retinaedge.export.surgery import prepare_pre_nms
    from retinaedge.runtime.calibration import calibration_images
    from retinaedge.train.checkpoint import load_checkpoint

    result, _ = qat_run
    model, spec, _ = qat.load_qat_checkpoint(result.out)
    qat_pre = qat.qat_pre_nms(model, spec, opset=17)  # check_qdq: symmetric int8, zero point 0, per-channel
    qat.check_qdq(qat_pre)  # weights on axis 0, per-tensor activations, an unquantised tail
    state = torch.load(result.out / "qat_state.pt", weights_only=True)
    fp32, _, _ = load_checkpoint(state["source"]["checkpoint"])
    pre = prepare_pre_nms(export_onnx(fp32, spec, opset=17), spec)
    calib = load_calibration_set(calibration_images(qat_data), spec, limit=4)
    ptq = quantize_int8_tensorrt(pre, calib.batch, input_name=spec.io.input, method="max", opset=17)
    # the same excluded tail: the pass-through nodes before cls_logits/box_deltas, none reading a DequantizeLinear
    assert set(output_tail_nodes(qat_pre)) == set(output_tail_nodes(pre))
    for q in (qat_pre, ptq):
        assert not set(output_tail_nodes(q)) & set(mixed.quantized_nodes(q))
    # BatchNorm folded before quantising, as torch.onnx folds it before PTQ: the same compute nodes as FP32
    import collections

    def ops(m: onnx.ModelProto) -> collections.Counter[str]:
        return collections.Counter(n.op_type for n in m.graph.node if n.op_type not in qat.QDQ_OPS)

    assert ops(qat_pre) == ops(pre), (ops(qat_pre), ops(pre))
    # every Conv ModelOpt ONNX quantises is quantised by QAT too (node names as torch.onnx wrote them)
    convs = {n.name for n in pre.graph.node if n.op_type == "Conv"}
    assert {n for n in mixed.quantized_nodes(ptq) if n in convs} <= set(mixed.quantized_nodes(qat_pre))
    # and the residual Adds' shortcut input (input 1), as ModelOpt ONNX puts it for TensorRT's conv+add fusion
    dq_out = {o for n in qat_pre.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    residual = [n for n in qat_pre.graph.node if n.op_type == "Add" and "/backbone/" in n.name]
    assert len(residual) == 8 and all(n.input[1] in dq_out and n.input[0] not in dq_out for n in residual)
    ptq_adds = {n for n in mixed.quantized_nodes(ptq) if "/backbone/" in n and n.endswith("Add")}
    assert ptq_adds <= {n.name for n in residual}
    # the exported Q/DQ computes what the fake-quantised torch model computes
    with torch.no_grad():
        ref = model(torch.from_numpy(calib.batch))["cls_logits"].numpy()
    got = run_pre_nms(qat_pre, calib.batch, input_name=spec.io.input)["cls_logits"]
    np.testing.assert_allclose(got, ref, atol=0.05 * float(np.abs(ref).max()) + 1e-3)


def test_qat_resume_gives_the_same_end_state(source_ckpt: Path, qat_data: Path, tmp_path: Path) -> None:
    from retinaedge.export.qat import run_qat

    full = run_qat(_config(source_ckpt, qat_data, tmp_path / "full"), echo=_quiet, progress=False, export=False)
    assert full.metrics["step"] == 6
    part = run_qat(_config(source_ckpt, qat_data, tmp_path / "part", stop_after_steps=4), echo=_quiet,
                   progress=False, export=False)
    assert part.metrics["step"] == 4
    lines: list[str] = []
    resumed = run_qat(_config(source_ckpt, qat_data, tmp_path / "part", resume=True), echo=lines.append,
                      progress=False, export=False)
    assert resumed.metrics["step"] == 6
    assert any("resuming" in line for line in lines)
    a = torch.load(tmp_path / "full" / "ckpt_last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "ckpt_last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert any(k.endswith("input_quantizer._amax") for k in a["model"])  # the quantisers travel in the checkpoint
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, st in a["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][k][name]), (k, name)
    assert resumed.metrics["AP"] == full.metrics["AP"]


def test_bad_input_fails_in_one_line_naming_the_value(source_ckpt: Path, qat_data: Path, tmp_path: Path) -> None:
    from retinaedge.export.qat import QatConfig, run_qat

    missing = tmp_path / "nope" / "ckpt_best.pt"
    with pytest.raises(ModelError) as e:
        run_qat(_config(missing, qat_data, tmp_path / "a"), echo=_quiet, progress=False)
    assert str(missing) in str(e.value) and "pass RUN/ckpt_best.pt" in str(e.value) and "\n" not in str(e.value)
    train_run = source_ckpt.parent  # a training run, not a QAT run
    with pytest.raises(InputError) as e:
        run_qat(_config(source_ckpt, qat_data, train_run, resume=True), echo=_quiet, progress=False)
    msg = str(e.value)
    assert str(train_run) in msg and "not a QAT run" in msg and "drop --resume" in msg and "\n" not in msg
    with pytest.raises(InputError, match="already holds a training run"):
        run_qat(_config(source_ckpt, qat_data, train_run), echo=_quiet, progress=False)
    with pytest.raises(InputError, match="nothing to resume"):
        run_qat(_config(source_ckpt, qat_data, tmp_path / "empty", resume=True), echo=_quiet, progress=False)
    with pytest.raises(InputError, match="minutes"):
        QatConfig(checkpoint=source_ckpt, data=qat_data, out=tmp_path, minutes=0)
