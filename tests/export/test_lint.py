"""The TensorRT-compatibility lint: fed clean files and files with the faults it must catch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from retinaedge.export import surgery
from retinaedge.export.lint import SUPPORTED_OPS, lint_onnx
from retinaedge.export.onnx_export import set_metadata
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import DetectorSpec


def _qdq_model(zero_point: np.ndarray, *, target: str | None = None, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(zero_point, "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="act_q"),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="act_dq")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if target:
        model.metadata_props.add(key="retinaedge.target", value=target)
    return model


def test_exported_graphs_are_clean(pre_nms: onnx.ModelProto, tiny_spec: DetectorSpec) -> None:
    for nms in ("efficient", "onnx", "none"):
        report = lint_onnx(surgery.finalize(pre_nms, tiny_spec, nms=nms, precision="fp32"))
        assert report.ok, [str(f) for f in report.findings]
        assert "TensorRT 8/10/11: OK" in report.summary()


def test_symmetric_int8_qdq_passes() -> None:
    assert lint_onnx(_qdq_model(np.array(0, np.int8))).ok


def test_asymmetric_zero_point_is_an_error_naming_the_node() -> None:
    report = lint_onnx(_qdq_model(np.array(128, np.uint8)))
    assert not report.ok
    assert {f.node for f in report.errors} == {"act_q", "act_dq"}
    assert all(f.code == "qdq" and "uint8" in f.message for f in report.errors)
    nonzero = lint_onnx(_qdq_model(np.array(3, np.int8)))
    assert [f.node for f in nonzero.errors] == ["act_q", "act_dq"] and "[3], not 0" in nonzero.errors[0].message


def test_asymmetric_is_info_for_a_cpu_target_file() -> None:
    report = lint_onnx(_qdq_model(np.array(128, np.uint8), target="cpu"))
    assert report.ok and report.cpu_only
    assert "qdq" in report.codes("info") and "CPU-only" in report.summary()


def _with_plugin_attrs(model: onnx.ModelProto, **attrs: object) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    (node,) = [n for n in m.graph.node if n.op_type == "EfficientNMS_TRT"]
    for a in list(node.attribute):
        if a.name in attrs:
            node.attribute.remove(a)
    for k, v in attrs.items():
        if v is not None:
            node.attribute.append(helper.make_attribute(k, v))
    return m


@pytest.mark.parametrize(("attrs", "needle"), [
    ({"iou_threshold": 0.0}, "iou_threshold=0.0"),
    ({"score_threshold": -0.1}, "score_threshold=-0.1"),
    ({"max_output_boxes": 0}, "max_output_boxes=0"),
    ({"score_activation": 2}, "score_activation=2"),
    ({"box_coding": 3}, "box_coding=3"),
    ({"plugin_version": "2"}, "plugin_version='2'"),
    ({"max_output_boxes": 100.0}, "has type float"),
    ({"iou_threshold": None}, "'iou_threshold' is missing"),
])
def test_bad_plugin_attribute_is_an_error(pre_nms: onnx.ModelProto, tiny_spec: DetectorSpec,
                                          attrs: dict[str, object], needle: str) -> None:
    good = surgery.finalize(pre_nms, tiny_spec, nms="efficient", precision="fp32")
    report = lint_onnx(_with_plugin_attrs(good, **attrs))
    assert [f.node for f in report.errors] == ["efficient_nms"]
    assert needle in report.errors[0].message


def test_low_score_threshold_is_a_warning(pre_nms: onnx.ModelProto, tiny_spec: DetectorSpec) -> None:
    good = surgery.finalize(pre_nms, tiny_spec, nms="efficient", precision="fp32")
    report = lint_onnx(_with_plugin_attrs(good, score_threshold=0.001))
    assert report.ok and "dense kernel" in report.warnings[0].message


def test_unsupported_op_and_opset_per_trt_major() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    model = helper.make_model(helper.make_graph([helper.make_node("Unique", ["x"], ["y"], name="uniq")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    report = lint_onnx(model)
    assert ("unsupported-op", "uniq") in {(f.code, f.node) for f in report.errors}
    opset = [f for f in report.errors if f.code == "opset"]
    assert len(opset) == 1 and "TRT 8: <= 17" in opset[0].message and "TRT 10" not in opset[0].message
    assert lint_onnx(model, target_trt_majors=(10, 11)).codes("error") == {"unsupported-op"}
    # the lists differ where onnx-tensorrt's docs differ: CastLike arrived after 8.6
    assert "CastLike" not in SUPPORTED_OPS[8] and "CastLike" in SUPPORTED_OPS[10]
    with pytest.raises(InputError, match="target_trt_majors"):
        lint_onnx(model, target_trt_majors=(9,))


def test_checker_failure_is_reported() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    bad = helper.make_model(helper.make_graph([helper.make_node("Relu", ["missing"], ["y"], name="r")], "g", [x], [y]),
                            opset_imports=[helper.make_opsetid("", 17)])
    bad.ir_version = 8
    assert "checker" in lint_onnx(bad).codes("error")


def test_quantized_scores_are_an_error(pre_nms: onnx.ModelProto, tiny_spec: DetectorSpec) -> None:
    """A DequantizeLinear right before the plugin's score input (through Reshape-like ops) is flagged."""
    model = surgery.finalize(pre_nms, tiny_spec, nms="efficient", precision="int8")
    g = model.graph
    (plugin,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    score = plugin.input[1]
    g.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "s_scale"),
                          numpy_helper.from_array(np.array(0, np.int8), "s_zp")])
    idx = list(g.node).index(plugin)
    g.node.insert(idx, helper.make_node("DequantizeLinear", ["s_q", "s_scale", "s_zp"], ["s_dq"], name="score_dq"))
    g.node.insert(idx, helper.make_node("QuantizeLinear", [score, "s_scale", "s_zp"], ["s_q"], name="score_q"))
    plugin.input[1] = "s_dq"
    set_metadata(model, tiny_spec, precision="int8", nms="efficient")
    report = lint_onnx(model)
    assert [(f.code, f.node) for f in report.errors] == [("quantized-scores", "score_dq")]
