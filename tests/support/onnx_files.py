"""Tiny ONNX files for the metadata and dispatch tests (tests/runtime/test_onnxinfo.py, test_models.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from retinaedge.runtime.spec import AnchorSpec, DetectorSpec


def make_spec(**kw) -> DetectorSpec:
    base = dict(class_names=("a", "b"), input_height=64, input_width=64,
                anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0,), aspect_ratios=(1.0,)))
    base.update(kw)
    return DetectorSpec(**base)


def write_onnx(path, metadata=None, *, op="Cast", fp16_weight=False):
    """images (B,3,64,64) uint8 -> Cast -> "cls_logits"; ``op`` adds one node of that type (a Q/DQ or the plugin
    as a graph would hold it), ``fp16_weight`` one FLOAT16 initializer."""
    nodes = [helper.make_node("Cast", ["images"], ["cls_logits"], to=TensorProto.FLOAT)]
    inits = []
    if op != "Cast":
        nodes.append(helper.make_node(op, ["cls_logits"], ["extra"]))
    if fp16_weight:
        inits.append(numpy_helper.from_array(np.ones(3, np.float16), "w16"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["B", 3, 64, 64])],
        [helper.make_tensor_value_info("cls_logits", TensorProto.FLOAT, ["B", 3, 64, 64])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path
