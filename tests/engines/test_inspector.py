"""The engine-inspector reading and the per-path rule (`retinaedge.engines.inspector`), on JSON in the shapes
NVIDIA documents for TensorRT 8.6 / 10.x and 11.x; every sample says where its shape comes from."""

from __future__ import annotations

import json

import pytest
from fake_trt import FP16, FP32, INT8_NHWC16, UINT8, UINT8_NHWC, inspector_json, split_format

from retinaedge.engines.capability import BuildPath
from retinaedge.engines.inspector import check, layer_precision_shares, summarize, tensor_type
from retinaedge.runtime.errors import EngineBuildError

# 8.6/10.x shape, trimmed from trt-engine-explorer's examples/pytorch/resnet/A100/qat/resnet-qat.onnx.engine.graph.json
# (NVIDIA/TensorRT v10.13.0; the same file at v10.3.0)
TREX_QAT = {"Layers": [
    {"Name": "QuantizeLinear_2", "LayerType": "Reformat",
     "Inputs": [{"Name": "input.1", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                 "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "onnx::DequantizeLinear_125", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                  "Format/Datatype": "Row major Int8 format"}]},
    {"Name": "conv1.weight + QuantizeLinear_7 + Conv_9 + MaxPool_12", "LayerType": "ConvActPool",
     "Inputs": [{"Name": "onnx::DequantizeLinear_125", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                 "Format/Datatype": "Row major Int8 format"}],
     "Outputs": [{"Name": "onnx::DequantizeLinear_140", "Location": "Device", "Dimensions": [32, 64, 56, 56],
                  "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
    {"Name": "fc", "LayerType": "CaskGemmConvolution",
     "Inputs": [{"Name": "x", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
     "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}]},
    {"Name": "head", "LayerType": "Convolution",
     "Inputs": [{"Name": "z", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
     "Outputs": []},
], "Bindings": ["input.1", "output"]}

# 8.6/10.x shape, the first two and last three of the 36 layers of trt-engine-explorer's
# examples/pytorch/resnet/A100/fp16/resnet.onnx.engine.graph.json (NVIDIA/TensorRT v10.3.0), verbatim
TREX_FP16 = {"Layers": [
    {"Name": "Reformatting CopyNode for Input Tensor 0 to Conv_0 + Relu_1", "LayerType": "Reformat",
     "Inputs": [{"Name": "input.1", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                 "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "Reformatted Input Tensor 0 to Conv_0 + Relu_1", "Location": "Device",
                  "Dimensions": [32, 3, 224, 224],
                  "Format/Datatype": "Channel major FP16 format where channel % 4 == 0"}]},
    {"Name": "Conv_0 + Relu_1", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "Reformatted Input Tensor 0 to Conv_0 + Relu_1", "Location": "Device",
                 "Dimensions": [32, 3, 224, 224],
                 "Format/Datatype": "Channel major FP16 format where channel % 4 == 0"}],
     "Outputs": [{"Name": "onnx::MaxPool_125", "Location": "Device", "Dimensions": [32, 64, 112, 112],
                  "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
    {"Name": "Reformatting CopyNode for Input Tensor 0 to reshape_after_Gemm_48", "LayerType": "NoOp",
     "Inputs": [{"Name": "Gemm_48_out_region", "Location": "Device", "Dimensions": [32, 1000, 1, 1],
                 "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
     "Outputs": [{"Name": "Reformatted Input Tensor 0 to reshape_after_Gemm_48", "Location": "Device",
                  "Dimensions": [32, 1000, 1, 1], "Format/Datatype": "Row major linear FP16 format"}]},
    {"Name": "reshape_after_Gemm_48", "LayerType": "NoOp",
     "Inputs": [{"Name": "Reformatted Input Tensor 0 to reshape_after_Gemm_48", "Location": "Device",
                 "Dimensions": [32, 1000, 1, 1], "Format/Datatype": "Row major linear FP16 format"}],
     "Outputs": [{"Name": "Reformatted Output Tensor 0 to reshape_after_Gemm_48", "Location": "Device",
                  "Dimensions": [32, 1000], "Format/Datatype": "Row major linear FP16 format"}]},
    {"Name": "Reformatting CopyNode for Output Tensor 0 to reshape_after_Gemm_48", "LayerType": "Reformat",
     "Inputs": [{"Name": "Reformatted Output Tensor 0 to reshape_after_Gemm_48", "Location": "Device",
                 "Dimensions": [32, 1000], "Format/Datatype": "Row major linear FP16 format"}],
     "Outputs": [{"Name": "191", "Location": "Device", "Dimensions": [32, 1000],
                  "Format/Datatype": "Row major linear FP32"}]},
], "Bindings": ["input.1", "191"]}

# a Myelin region as 8.6/10.x print it: the "{ForeignNode[first...last]}" name (NVIDIA/TensorRT issue 3143's
# profile) and LayerType "Myelin" (trt-engine-explorer trex/colors.py at v10.3.0 colours that layer type); only its
# boundary tensors are listed
MYELIN = {"Name": "{ForeignNode[Conv_0...Concat_198]}", "LayerType": "Myelin",
          "Inputs": [{"Name": "images", "Dimensions": [1, 3, 64, 64], "Format/Datatype": UINT8}],
          "Outputs": [{"Name": "cls_logits", "Dimensions": [1, 20, 3], "Format/Datatype": FP32}]}

# a DLA engine: the layer names of NVIDIA/TensorRT issue 3143's DLA profile ("images to nvm",
# "{ForeignNode[Conv_0...Concat_198]}", "head_3 from nvm", "images copy finish"); the DLA region reads what the
# "to nvm" copy wrote. Its LayerType is in no NVIDIA source read, so it is left unknown here (make gpu-check dumps
# a real one) and the DLA is told by the NVM copy feeding it.
DLA_LAYERS = [
    {"Name": "images to nvm", "LayerType": "Reformat",
     "Inputs": [{"Name": "images", "Format/Datatype": FP16}],
     "Outputs": [{"Name": "images_nvm", "Format/Datatype": FP16}]},
    {"Name": "{ForeignNode[Conv_0...Concat_198]}", "LayerType": "unknown",
     "Inputs": [{"Name": "images_nvm", "Format/Datatype": FP16}],
     "Outputs": [{"Name": "head_3_nvm", "Format/Datatype": FP16}]},
    {"Name": "head_3 from nvm", "LayerType": "Reformat",
     "Inputs": [{"Name": "head_3_nvm", "Format/Datatype": FP16}],
     "Outputs": [{"Name": "head_3", "Format/Datatype": FP16}]},
    {"Name": "images copy finish", "LayerType": "unknown", "Inputs": [], "Outputs": []},
    {"Name": "gpu_tail", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "head_3", "Format/Datatype": FP16}],
     "Outputs": [{"Name": "out", "Format/Datatype": FP16}]},
]


def test_trex_shapes():
    shares, n = layer_precision_shares(json.dumps(TREX_QAT))
    # the Q of the network input is a Reformat: no math precision, left out
    assert n == 4 and shares == {"fp32": 0.0, "fp16": 0.3333, "int8": 0.6667, "other": 0.0}
    s = summarize(json.dumps(TREX_FP16))
    assert (s.num_layers, s.math_layers, s.excluded) == (5, 1, 4) and s.shares["fp16"] == 1.0
    assert s.schema == "8.6/10.x" and s.io_tensors == ("input.1", "191")


def test_trt11_shape_split_and_io_tensors():
    # the same layers as TensorRT 11 writes them (fake_trt.split_format: DataType + Format; I/O Tensors)
    text = inspector_json("11.1", TREX_FP16["Layers"], ["input.1", "191"])
    assert '"Format/Datatype"' not in text and '"I/O Tensors"' in text
    s = summarize(text)
    assert s.schema == "11.x" and s.io_tensors == ("input.1", "191") and s.shares["fp16"] == 1.0
    # NVIDIA's v11.1 inspector-JSON schema (.agents/skills/trt-perf-analysis/schemas/analyze-data.schema.json)
    # spells the layer-tensor key "Datatype": read too
    assert tensor_type({"Name": "x", "Datatype": "Half", "Format": "Channel major FP16 format"}) == "fp16"


@pytest.mark.parametrize(
    ("tensor", "token"),
    [
        ({"Format/Datatype": UINT8}, "uint8"), ({"Format/Datatype": UINT8_NHWC}, "uint8"),
        ({"Format/Datatype": "Row major Int8 format"}, "int8"), ({"Format/Datatype": INT8_NHWC16}, "int8"),
        ({"Format/Datatype": "Half"}, "fp16"), ({"Format/Datatype": "Float"}, "fp32"),
        ({"Format/Datatype": "Row major linear BFloat16 format"}, "bf16"),
        ({"Format/Datatype": "Row major linear Int32"}, "int32"),
        (split_format(UINT8), "uint8"), ({"DataType": "Int8", "Format": "Row major linear FP32"}, "int8"),
        ({"DataType": "kHALF"}, "fp16"), ({"DataType": "kUINT8"}, "uint8"),
        ({"Name": "no type"}, None),
    ],
)
def test_type_tokens_are_exact(tensor, token):
    assert tensor_type(tensor) == token


def test_uint8_input_and_casts_left_out():
    cast = {"Name": "images/Cast", "LayerType": "Cast", "Inputs": [{"Name": "images", "Format/Datatype": UINT8}],
            "Outputs": [{"Name": "x", "Format/Datatype": FP32}]}
    conv = {"Name": "conv", "LayerType": "CaskConvolution", "Inputs": [{"Name": "x", "Format/Datatype": FP32}]}
    s = summarize(json.dumps({"Layers": [cast, conv], "Bindings": ["images"]}))
    assert s.shares["fp32"] == 1.0 and s.shares["int8"] == 0.0 and s.excluded == 1
    # a Myelin region reading the uint8 input: typed by its first math-typed boundary tensor (the FP32 output)
    s = summarize(json.dumps({"Layers": [MYELIN], "Bindings": ["images"]}))
    assert s.shares["fp32"] == 1.0 and s.opaque == 1


def test_dla_share():
    s = summarize(json.dumps({"Layers": DLA_LAYERS, "Bindings": ["images", "head_3"]}))
    assert (s.math_layers, s.dla_layers, s.dla_share, s.excluded) == (2, 1, 0.5, 3)


def test_layer_names_only_cannot_verify():
    # ProfilingVerbosity.LAYER_NAMES_ONLY gives names, not dicts
    with pytest.raises(EngineBuildError, match="DETAILED"):
        summarize(json.dumps({"Layers": ["conv1", "relu1"]}))
    with pytest.raises(EngineBuildError, match="not the expected JSON"):
        summarize("Layers: conv1")


def _summary(fp32: int, fp16: int, int8: int, opaque: bool = False) -> object:
    formats = [FP32] * fp32 + [FP16] * fp16 + [INT8_NHWC16] * int8
    layers = [{"Name": f"l{i}", "LayerType": "Myelin" if opaque and i == 0 else "CaskConvolution",
               "Inputs": [{"Format/Datatype": f}]} for i, f in enumerate(formats)]
    return summarize(json.dumps({"Layers": layers, "Bindings": []}))


STRONG = {p: BuildPath("strongly-typed", p) for p in ("fp32", "fp16", "int8")}
WEAK_FP32 = BuildPath("weakly-typed", "fp32")
WEAK_FP16 = BuildPath("weakly-typed", "fp16", fp16_flag=True)
WEAK_CAL = BuildPath("weakly-typed", "int8", fp16_flag=True, int8_flag=True, calibrator=True)
WEAK_QDQ = BuildPath("weakly-typed", "int8", fp16_flag=True, int8_flag=True)


@pytest.mark.parametrize(
    ("path", "counts", "qdq", "outcome"),
    [
        (STRONG["fp32"], (4, 0, 0), False, "ok"), (STRONG["fp32"], (3, 1, 0), False, "fail"),
        (STRONG["fp16"], (1, 3, 0), False, "ok"), (STRONG["fp16"], (4, 0, 0), False, "fail"),
        (STRONG["fp16"], (4, 0, 0, True), False, "warn"), (STRONG["fp16"], (1, 2, 1), False, "fail"),
        (STRONG["int8"], (1, 1, 2), True, "ok"), (STRONG["int8"], (2, 2, 0), True, "fail"),
        (WEAK_FP32, (4, 0, 0), False, "ok"), (WEAK_FP32, (3, 1, 0), False, "fail"),
        (WEAK_FP16, (1, 3, 0), False, "ok"), (WEAK_FP16, (4, 0, 0), False, "warn"),
        (WEAK_FP16, (1, 2, 1), False, "fail"),
        (WEAK_CAL, (1, 1, 2), False, "ok"), (WEAK_CAL, (2, 2, 0), False, "warn"),
        (WEAK_QDQ, (1, 1, 2), True, "ok"), (WEAK_QDQ, (2, 2, 0), True, "fail"),
        (WEAK_QDQ, (2, 2, 0, True), True, "warn"),
    ],
)
def test_rule_per_path(path, counts, qdq, outcome):
    summary = _summary(*counts)
    if outcome == "fail":
        with pytest.raises(EngineBuildError, match=f"a {path.precision} engine was requested"):
            check(path, summary, explicit_quantization=qdq)
    else:
        warnings = check(path, summary, explicit_quantization=qdq)
        assert bool(warnings) == (outcome == "warn")
