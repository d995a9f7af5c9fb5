"""``--mixed auto``: sensitivity finds a deliberately broken unit, the greedy search stops at the first passing set,
and the mixed file carries ``retinaedge.keep_high`` and passes the lint.

The broken model is the tiny model with two 1x1 convs appended to ``p3`` (whose level holds most detections): one
copies the 8 channels into 16 and adds a constant 10,000 channel (an outlier channel), the next reads the copies
back and ignores the outlier. The
FP32 function is unchanged (the pseudo ground truth still fits), but the per-tensor INT8 activation scale at the
second conv's input is set by the outlier, so every real value rounds to zero: that unit alone breaks INT8.
(ModelOpt leaves 8-in/8-out convs unquantised, so the broken unit has 16 input channels.)
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from retinaedge.export import mixed
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import DetectorSpec
from tests.support.export_helpers import TinyData, torch_heads

BROKEN_UNIT = "p3.p3.5"


@pytest.fixture(scope="module")
def broken_model(tiny_model: Any) -> Any:
    model = copy.deepcopy(tiny_model)
    c = model.p3[2].out_channels
    expand, contract = torch.nn.Conv2d(c, 2 * c, 1), torch.nn.Conv2d(2 * c, c, 1)
    with torch.no_grad():
        expand.weight.zero_()
        expand.weight[:c, :, 0, 0] = torch.eye(c)
        expand.weight[c:] = 1e-3  # spare channels; non-zero so every weight scale is positive
        expand.bias.zero_()
        expand.bias[c] = 1e4  # the outlier: a constant activation channel of 10,000
        contract.weight.zero_()
        contract.weight[:, :c, 0, 0] = torch.eye(c)  # reads the copies, ignores the spare channels
        contract.bias.zero_()
    model.p3 = torch.nn.Sequential(*model.p3, expand, contract)
    return model


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory: pytest.TempPathFactory, broken_model: Any, tiny_spec: DetectorSpec,
                 tiny_data: TinyData) -> Any:
    from retinaedge.export.config import ExportConfig
    from retinaedge.export.pipeline import export_model

    out = tmp_path_factory.mktemp("mixed")
    config = ExportConfig(checkpoint=None, out_dir=out, precisions=("fp32", "int8"), calib_data=tiny_data.root,
                          calib_images=8, calib_method="max", heldout_images=8, mixed="auto", gate=0.99,
                          mixed_dtype="fp32")
    lines: list[str] = []
    result = export_model(config, model=broken_model, spec=tiny_spec, echo=lines.append)
    return result, lines


def test_broken_model_is_float_identical(broken_model: Any, tiny_model: Any, tiny_spec: DetectorSpec) -> None:
    from retinaedge.runtime.preprocess import preprocess_batch
    from tests.support.export_helpers import smooth_image

    batch, _ = preprocess_batch([smooth_image(np.random.default_rng(3), 64, 64)], tiny_spec)
    a, b = torch_heads(tiny_model, batch), torch_heads(broken_model, batch)
    np.testing.assert_allclose(a["cls_logits"], b["cls_logits"], atol=1e-3)


def test_unit_of_names_blocks() -> None:
    assert mixed.unit_of("/inner/backbone/layer3/layer3.0/conv1/Conv") == "layer3"
    assert mixed.unit_of("/inner/backbone/conv1/Conv") == "stem"
    assert mixed.unit_of("/inner/fpn/lateral.4/Conv") == "fpn.P4"
    assert mixed.unit_of("/inner/fpn/extra.1/Conv") == "fpn.P7"
    assert mixed.unit_of("/inner/fpn/Add") == "fpn.topdown"
    assert mixed.unit_of("/inner/head/cls_tower/cls_tower.0/Conv_3") == "head.cls_tower"
    assert mixed.unit_of("/inner/head/box_deltas/Conv_2") == "head.box_deltas"
    assert mixed.unit_of("/inner/head/box_deltas/Conv_2", "layer") == "inner/head/box_deltas/Conv_2"
    assert mixed.unit_of("Concat_anchors") is None


def test_greedy_stops_at_first_passing_set() -> None:
    calls: list[tuple[str, ...]] = []
    aps = {0: 0.90, 1: 0.95, 2: 0.991, 3: 1.0}

    def evaluate(units: tuple[str, ...]) -> float:
        calls.append(units)
        return aps[len(units)]

    result = mixed.greedy_keep_high(["a", "b", "c", "d"], evaluate, ap_fp32=1.0, gate=0.99, start=0)
    assert result.chosen == ("a", "b")
    assert calls == [(), ("a",), ("a", "b")]  # never tried the 3-unit set
    assert [s.passed for s in result.steps] == [False, False, True]
    none = mixed.greedy_keep_high(["a", "b"], lambda u: 0.5, ap_fp32=1.0, gate=0.99, max_units=1)
    assert none.chosen is None and len(none.steps) == 1
    with pytest.raises(InputError, match="gate"):
        mixed.greedy_keep_high(["a"], evaluate, ap_fp32=1.0, gate=1.5)


def test_sensitivity_ranks_the_broken_unit_first(mixed_export: Any) -> None:
    result, lines = mixed_export
    sens = json.loads((result.out_dir / "sensitivity.json").read_text())
    units = sens["units"]
    assert units[0]["unit"] == BROKEN_UNIT, [(u["unit"], round(u["score"], 4)) for u in units]
    first = units[0]
    assert first["delta_only"] > 0.05 and first["gain_all_but"] > 0.05
    assert first["raw_only"]["cls_logits"]["mean_abs"] > max(u["raw_only"]["cls_logits"]["mean_abs"]
                                                            for u in units[1:])
    assert sens["retained_ptq"] < 0.99 <= sens["retained_mixed"]
    assert any(line.startswith("sensitivity [") for line in lines)  # the progress bar


def test_search_keeps_the_fewest_and_writes_keep_high(mixed_export: Any) -> None:
    from retinaedge.export.lint import lint_onnx
    from retinaedge.runtime.onnxinfo import META_KEEP_HIGH, metadata_of
    from retinaedge.runtime.ort_runner import OrtRunner

    result, _ = mixed_export
    record = result.calibration["mixed"]
    assert record["chosen_units"] == [BROKEN_UNIT]
    assert [s["k"] for s in record["search"]] == [0, 1] and record["search"][-1]["passed"]
    path = result.files["int8-mixed"]
    assert path.name == "model.int8-mixed.onnx"
    model = onnx.load(str(path))
    keep = json.loads(metadata_of(model)[META_KEEP_HIGH])
    assert keep == {"nodes": ["/inner/p3/p3.5/Conv"], "dtype": "fp32"}
    fp32_names = {n.name for n in onnx.load(str(result.files["fp32"])).graph.node}
    assert set(keep["nodes"]) <= fp32_names
    # ModelOpt kept the unit out of INT8: nothing quantised feeds that node
    assert "/inner/p3/p3.5/Conv" not in mixed.quantized_nodes(model)
    assert "/inner/p3/p3.5/Conv" in mixed.quantized_nodes(onnx.load(str(result.files["int8"])))
    exported = json.loads((result.out_dir / "export.json").read_text())
    assert exported["keep_high"] == keep
    assert lint_onnx(path, target_trt_majors=(10, 11)).ok
    assert result.lint["int8-mixed"].ok
    assert (result.out_dir / "sensitivity.png").stat().st_size > 1000
    assert OrtRunner(path=path).precision == "int8-mixed"
    assert OrtRunner(path=result.files["int8"]).precision == "int8"


def test_bypass_all_nodes_restores_fp32(pre_nms: onnx.ModelProto, tiny_spec: DetectorSpec) -> None:
    from retinaedge.export.int8 import quantize_int8_tensorrt
    from retinaedge.export.onnx_export import random_images
    from retinaedge.export.pipeline import run_pre_nms

    batch = random_images(tiny_spec, 4, seed=2)
    qdq = quantize_int8_tensorrt(pre_nms, batch, input_name="images", method="max", opset=17)
    quant = mixed.quantized_nodes(qdq)
    assert quant
    back = mixed.bypass_qdq(qdq, pre_nms, quant)
    assert not any(n.op_type in mixed.QDQ_OPS for n in back.graph.node)
    ref = run_pre_nms(pre_nms, batch, input_name="images")
    got = run_pre_nms(back, batch, input_name="images")
    np.testing.assert_allclose(got["cls_logits"], ref["cls_logits"], rtol=1e-5, atol=1e-5)
    err = mixed.raw_error(ref, run_pre_nms(qdq, batch, input_name="images"), ["cls_logits"])
    assert err["cls_logits"]["max_abs"] > 0


def test_config_refuses_mixed_without_int8(tmp_path: Any) -> None:
    from retinaedge.export.config import ExportConfig

    with pytest.raises(InputError, match="add int8"):
        ExportConfig(checkpoint=None, out_dir=tmp_path, precisions=("fp32",), mixed="auto")
    with pytest.raises(InputError, match="gate"):
        ExportConfig(checkpoint=None, out_dir=tmp_path, gate=1.5)
    with pytest.raises(InputError, match="mixed_unit"):
        ExportConfig(checkpoint=None, out_dir=tmp_path, mixed_unit="conv")  # type: ignore[arg-type]
