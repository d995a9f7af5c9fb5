"""INT8 quantizers: head outputs kept unquantised, and the ModelOpt process trap (docs/TENSORRT.md)."""

from __future__ import annotations

import hashlib

import onnx
import pytest

from retinaedge.export.int8 import output_tail_nodes, quantize_int8_cpu
from retinaedge.export.lint import lint_onnx
from retinaedge.export.onnx_export import random_images
from retinaedge.runtime.spec import DetectorSpec


def test_output_tail_nodes(pre_nms: onnx.ModelProto) -> None:
    tail = output_tail_nodes(pre_nms)
    by_name = {n.name: n for n in pre_nms.graph.node}
    assert {by_name[t].op_type for t in tail} == {"Reshape", "Transpose", "Concat"}
    with_convs = output_tail_nodes(pre_nms, include_producers=True)
    added = {by_name[t].op_type for t in set(with_convs) - set(tail)}
    assert added == {"Conv"} and len(set(with_convs) - set(tail)) == 4  # cls + box conv on each of 2 levels


def test_int8_cpu_is_identical_whether_or_not_modelopt_ran_first(pre_nms: onnx.ModelProto,
                                                                 tiny_spec: DetectorSpec) -> None:
    calib = random_images(tiny_spec, 4, seed=7)
    first = quantize_int8_cpu(pre_nms, calib, input_name="images", batch=2)
    assert lint_onnx(first).codes("error") >= {"qdq"}  # U8 asymmetric: not for TensorRT
    assert "quantized-scores" not in lint_onnx(first).codes()

    # run ModelOpt in THIS process: it patches ORT's quantization classes in place
    import onnxruntime.quantization.calibrate as ort_calibrate

    original = ort_calibrate.create_calibrator
    import tempfile
    from pathlib import Path

    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory() as tmp:
        src = str(Path(tmp) / "pre.onnx")
        onnx.save(pre_nms, src)
        quantize(onnx_path=src, quantize_mode="int8", calibration_data={"images": calib}, calibration_method="max",
                 calibration_eps=["cpu"], output_path=str(Path(tmp) / "q.onnx"), high_precision_dtype="fp32",
                 log_level="ERROR")
    patched = ort_calibrate.create_calibrator is not original
    second = quantize_int8_cpu(pre_nms, calib, input_name="images", batch=2)
    digest = [hashlib.sha256(m.SerializeToString()).hexdigest() for m in (first, second)]
    assert digest[0] == digest[1], f"int8-cpu changed after ModelOpt ran in-process (patched={patched})"
    if not patched:
        pytest.skip("this ModelOpt did not patch create_calibrator; identity shown but the trap was not armed")
