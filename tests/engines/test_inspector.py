"""The engine-inspector reading and the per-path rule (`retinaedge.engines.inspector`), on JSON in the shapes
NVIDIA documents for TensorRT 8.6 / 10.x and 11.x; every sample says where its shape comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retinaedge.engines.capability import BuildPath
from retinaedge.engines.inspector import check, layer_precision_shares, summarize, tensor_type
from retinaedge.runtime.errors import EngineBuildError
from tests.support.fake_trt import (
    DLA_LAYERS,
    FP16,
    FP32,
    INT8_NHWC16,
    UINT8,
    UINT8_NHWC,
    inspector_json,
    split_format,
)

DATA = Path(__file__).parent / "data"


def trex(name: str) -> str:
    """trt-engine-explorer's example inspector JSON, verbatim (NVIDIA/TensorRT v10.3.0 and v8.6.1,
    tools/experimental/trt-engine-explorer/examples/pytorch/resnet/A100/<name>; tests/engines/data/README.md)."""
    return (DATA / f"trex-resnet-{name}.graph.json").read_text()


# a Myelin region as 8.6/10.x print it: the "{ForeignNode[first...last]}" name (NVIDIA/TensorRT issue 3143's
# profile) and LayerType "Myelin" (trt-engine-explorer trex/colors.py at v10.3.0 colours that layer type); only its
# boundary tensors are listed
MYELIN = {"Name": "{ForeignNode[Conv_0...Concat_198]}", "LayerType": "Myelin",
          "Inputs": [{"Name": "images", "Dimensions": [1, 3, 64, 64], "Format/Datatype": UINT8}],
          "Outputs": [{"Name": "cls_logits", "Dimensions": [1, 20, 3], "Format/Datatype": FP32}]}



@pytest.mark.parametrize(("name", "shares", "counts"), [
    ("fp32", {"fp32": 1.0, "fp16": 0.0, "int8": 0.0, "other": 0.0}, (32, 23, 9)),
    ("fp16", {"fp32": 0.0, "fp16": 1.0, "int8": 0.0, "other": 0.0}, (36, 23, 13)),
    ("qat", {"fp32": 0.0435, "fp16": 0.0435, "int8": 0.913, "other": 0.0}, (37, 23, 14)),
])
def test_trex_engines_in_both_shapes(name, shares, counts):
    # the FP16 engine's input/output Reformats (FP32 <-> FP16) and NoOps are left out: 100 % FP16, not 2/36 FP32
    text = trex(name)
    data = json.loads(text)
    for shape in ("8.6/10.x", "11.x"):
        s = summarize(text)
        assert s.schema == shape and s.shares == shares and (s.num_layers, s.math_layers, s.excluded) == counts
        assert s.io_tensors == tuple(data["Bindings"])
        text = inspector_json("11.1", data["Layers"], data["Bindings"])  # the 11.x shape of the same engine
        assert '"Format/Datatype"' not in text and '"I/O Tensors"' in text
    assert layer_precision_shares(trex(name)) == (shares, counts[0])


def test_trt11_layer_tensor_key_spellings():
    # the migration guide's I/O Tensors use "DataType"; NVIDIA's v11.1 inspector-JSON schema
    # (.agents/skills/trt-perf-analysis/schemas/analyze-data.schema.json) spells layer tensors "Datatype" + "Format"
    assert tensor_type({"Name": "x", "DataType": "Half", "Format": "Channel major FP16 format"}) == "fp16"
    assert tensor_type({"Name": "x", "Datatype": "Int8", "Format": "Row major linear FP32 format (kLINEAR)"}) == "int8"


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
