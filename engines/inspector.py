"""What a built engine's layers run in, read from the engine inspector's JSON, and the rule a build must meet.

``EngineInspector.get_engine_information(LayerInformationFormat.JSON)`` (needs ``ProfilingVerbosity.DETAILED``)
has two shapes, and this module reads both:

* TensorRT 8.6 / 10.x: ``{"Layers": [...], "Bindings": ["input", ...]}``; each layer tensor carries one
  ``"Format/Datatype"`` string, e.g. ``"Row major linear FP32"``, ``"Channel major FP16 format where channel % 8
  == 0"``, ``"Row major linear UInt8 format"`` (the long names trt-engine-explorer lists in
  ``tools/experimental/trt-engine-explorer/trex/activations.py`` ``_regionFormatDict``, NVIDIA/TensorRT v10.3.0),
  or, inside Myelin regions, a bare kgen type name (``"Float"``, ``"Half"``, ``"Int8"``, ``"UInt8"``: the same
  table's "kgen formats"; ``Format/Datatype: Float`` in samples/sampleEditableTimingCache/README.md at v11.1).
* TensorRT 11.x: the 10.x-to-11.x migration guide ("Migrating IEngineInspector Usage", docs.nvidia.com
  tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-IEngineInspector.html) replaces ``Bindings`` by
  ``"I/O Tensors"`` (objects with ``Name``, ``IOMode``, ``DataType`` such as ``"Float"``, ``Dimensions``, and a
  ``Format`` such as ``"Row major linear FP32 format (kLINEAR)"``) and splits ``Format/DataType`` into separate
  fields; NVIDIA's own v11.1 inspector-JSON schema (``.agents/skills/trt-perf-analysis/schemas/
  analyze-data.schema.json``) spells the layer-tensor keys ``Datatype`` and ``Format``. Both spellings are read.

A tensor's type is its **exact type token** (``Int8`` is INT8, ``UInt8`` is not; ``Half`` is FP16, ``Float`` is
FP32), from ``DataType``/``Datatype`` when present, else from the format string -- never a substring test (a
uint8 input reads ``...UInt8 format``, which contains ``Int8``).

What counts (`summarize`):

* a layer's precision is that of its first input with a math type (FP32/FP16/INT8/BF16/FP8), else of its first
  such output (TREx ``trex/layer.py`` also reads a layer's precision from its tensors);
* layers with no math precision are left out of the shares: data movement and conversions (``Reformat`` -- which
  is also how the network-input casts and the Q of the input show, ``Shuffle``, ``Cast``, ``Quantize``,
  ``Dequantize``, ``Identity``, ``NoOp``, ``Constant``, ``TrainStation``: the layer-type names of TREx
  ``trex/colors.py`` and ``engine_plan.py`` at v10.3.0, which also ignores ``Constant``/``NoOp``), shape
  computations (``shape_call``: TREx v11.0 ``engine_plan.py`` drops them too), plugins (``PluginV2``/``PluginV3``:
  their math is theirs, EfficientNMS is pinned FP32 separately) and the DLA's NVM copies (``<tensor> to nvm``,
  ``<tensor> from nvm``, ``<tensor> copy finish``: the profile names of a DLA engine, NVIDIA/TensorRT issue 3143);
* Myelin ``{ForeignNode[...]}`` regions (LayerType ``Myelin``: TREx ``trex/colors.py`` v10.3.0) show only their
  boundary tensors, so their internal precision is unknown: they are counted by their boundary but reported
  as ``opaque``;
* a layer is on the DLA when its LayerType or tactic names the DLA, or when it reads a tensor that a
  ``to nvm`` copy wrote (the DLA region of issue 3143's profile sits between those copies).

The rule (`check`), per build path -- a build fails only where TensorRT could not legally have done what it did:

* **strongly typed** (types come from the ONNX and TensorRT must keep them): fp32 ONNX -> no FP16/INT8 layer;
  fp16 ONNX -> no INT8 layer and some FP16 layer; Q/DQ ONNX -> some INT8 layer. A missing FP16/INT8 layer only
  warns when opaque Myelin regions could hold it;
* **weakly typed, no flags** (fp32): no FP16/INT8 layer;
* **weakly typed FP16** (``BuilderFlag.FP16`` *allows* FP16, it does not force it): no INT8 layer; all-FP32 is
  legal (a small network may time faster in FP32) and warns;
* **weakly typed INT8 with a calibrator** (implicit quantization also only allows INT8): no INT8 layer warns;
* **weakly typed INT8 from a Q/DQ ONNX** (explicit quantization: Q/DQ make TensorRT run the quantized layers in
  INT8): some INT8 layer, unless opaque Myelin regions could hold it (warns).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from retinaedge.engines.capability import BuildPath
from retinaedge.runtime.errors import EngineBuildError

SHARE_KEYS = ("fp32", "fp16", "int8", "other")

_TYPE_WORDS = {
    "fp32": "fp32", "float": "fp32", "fp16": "fp16", "half": "fp16", "int8": "int8", "uint8": "uint8",
    "bfloat16": "bf16", "bf16": "bf16", "fp8": "fp8", "int4": "int4", "fp4": "fp4", "fp4e2m1": "fp4",
    "int32": "int32", "int64": "int64", "int16": "int16", "uint16": "uint16", "uint32": "uint32",
    "uint64": "uint64", "bool": "bool", "double": "fp64",
    # C++ enum spellings (nvinfer1::DataType), should a release print those
    "kfloat": "fp32", "khalf": "fp16", "kint8": "int8", "kuint8": "uint8", "kbf16": "bf16", "kfp8": "fp8",
    "kint32": "int32", "kint64": "int64", "kbool": "bool", "kint4": "int4", "kfp4": "fp4",
}
_MATH_TYPES = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "bf16": "other", "fp8": "other", "fp64": "other",
               "int4": "other", "fp4": "other"}
_NO_MATH_LAYER_TYPES = {"reformat", "shuffle", "cast", "quantize", "dequantize", "identity", "noop", "constant",
                        "trainstation", "shape_call", "shape", "pluginv2", "pluginv3", "plugin"}
_NVM_COPY = re.compile(r".+ (to nvm|from nvm|copy finish)$")


def tensor_type(tensor: dict[str, Any]) -> str | None:
    """The type token of one inspector tensor (``fp32``, ``fp16``, ``int8``, ``uint8``, ``int32`` ...), or None.

    ``DataType`` / ``Datatype`` (TensorRT 11.x) win over the combined ``Format/Datatype`` (8.6 / 10.x) and the
    11.x ``Format``; within a string the first word that *is* a type name decides.
    """
    for key in ("DataType", "Datatype", "Format/Datatype", "Format"):
        value = tensor.get(key)
        if isinstance(value, str):
            for word in re.split(r"[^A-Za-z0-9]+", value):
                token = _TYPE_WORDS.get(word.lower())
                if token is not None:
                    return token
    return None


def _tensors(layer: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = layer.get(key)
    return [t for t in value if isinstance(t, dict)] if isinstance(value, list) else []


@dataclass(frozen=True)
class LayerSummary:
    """What the inspector says about an engine's layers.

    Attributes:
        shares: share of the math layers per precision (`SHARE_KEYS`), summing to 1.
        num_layers: layers the inspector listed.
        math_layers: layers with a math precision (the shares' denominator).
        excluded: layers left out (data movement, casts, shape, plugins, NVM copies).
        opaque: Myelin ``ForeignNode`` regions among the math layers (boundary tensors only).
        dla_layers: math layers on the DLA.
        schema: ``"8.6/10.x"`` (``Bindings``, ``Format/Datatype``) or ``"11.x"`` (``I/O Tensors``).
        io_tensors: the engine's I/O tensor names, from either shape.
    """

    shares: dict[str, float]
    num_layers: int
    math_layers: int
    excluded: int = 0
    opaque: int = 0
    dla_layers: int = 0
    schema: str = "8.6/10.x"
    io_tensors: tuple[str, ...] = field(default=())

    @property
    def dla_share(self) -> float:
        return round(self.dla_layers / self.math_layers, 4) if self.math_layers else 0.0


def summarize(engine_information: str) -> LayerSummary:
    """Read ``get_engine_information(LayerInformationFormat.JSON)`` in the 8.6/10.x or the 11.x shape.

    Raises:
        EngineBuildError: if it is not that JSON, or its layers carry no types (verbosity not DETAILED).
    """
    try:
        data = json.loads(engine_information)
        layers = data.get("Layers", [])
    except (json.JSONDecodeError, AttributeError):
        raise EngineBuildError(
            f"engine inspector output is not the expected JSON ({engine_information[:80]!r}); cannot verify "
            "the engine's precision"
        ) from None
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        raise EngineBuildError(
            "engine inspector reported no per-layer types (profiling verbosity is not DETAILED?); cannot "
            "verify the engine's precision"
        )
    if isinstance(data.get("I/O Tensors"), list):
        schema = "11.x"
        io_names = tuple(str(t.get("Name")) for t in data["I/O Tensors"] if isinstance(t, dict))
    else:
        schema = "8.6/10.x"
        io_names = tuple(str(t) for t in data.get("Bindings", []) if isinstance(t, str))
    nvm_out = {str(t.get("Name")) for layer in layers if str(layer.get("Name", "")).endswith(" to nvm")
               for t in _tensors(layer, "Outputs")}  # what the DLA reads
    counts = dict.fromkeys(SHARE_KEYS, 0)
    excluded = opaque = dla = 0
    for layer in layers:
        name, kind = str(layer.get("Name", "")), str(layer.get("LayerType", ""))
        if kind.lower() in _NO_MATH_LAYER_TYPES or _NVM_COPY.match(name):
            excluded += 1
            continue
        inputs, outputs = _tensors(layer, "Inputs"), _tensors(layer, "Outputs")
        precision = "other"
        for t in (*inputs, *outputs):
            token = tensor_type(t)
            if token in _MATH_TYPES:
                precision = _MATH_TYPES[token]
                break
        counts[precision] += 1
        opaque += kind.lower() == "myelin" or "ForeignNode[" in name
        dla += ("dla" in kind.lower() or "dla" in str(layer.get("TacticName", "")).lower()
                or any(str(t.get("Name")) in nvm_out for t in inputs))
    n = sum(counts.values())
    shares = {k: round(v / n, 4) for k, v in counts.items()} if n else {**dict.fromkeys(SHARE_KEYS, 0.0), "other": 1.0}
    return LayerSummary(shares=shares, num_layers=len(layers), math_layers=n, excluded=excluded, opaque=opaque,
                        dla_layers=dla, schema=schema, io_tensors=io_names)


def layer_precision_shares(engine_information: str) -> tuple[dict[str, float], int]:
    """``(shares, num_layers)`` of `summarize` (shares over the layers that have a math precision)."""
    s = summarize(engine_information)
    return s.shares, s.num_layers


def check(path: BuildPath, summary: LayerSummary, *, explicit_quantization: bool = False) -> list[str]:
    """Apply the module docstring's rule for ``path`` to ``summary``.

    Args:
        path: the build path taken.
        summary: from `summarize`.
        explicit_quantization: the weakly-typed INT8 build is from a Q/DQ ONNX (no calibrator).

    Returns:
        Warnings (legal but worth saying: e.g. an FP16 build TensorRT ran all in FP32).

    Raises:
        EngineBuildError: naming the shares found, when TensorRT could not legally have built these layers.
    """
    fp16, int8 = summary.shares.get("fp16", 0.0), summary.shares.get("int8", 0.0)
    found = ", ".join(f"{k} {v:.0%}" for k, v in summary.shares.items())
    where = f" ({summary.opaque} Myelin ForeignNode region(s) show only their boundary types)" if summary.opaque else ""

    def fail(why: str) -> EngineBuildError:
        return EngineBuildError(
            f"a {path.precision} engine was requested ({path.describe()}) but TensorRT built layers {found}: {why}; "
            "refusing to write it (check the ONNX kind and the build path, or build another precision)"
        )

    warnings: list[str] = []
    strong = path.name == "strongly-typed"
    if path.precision == "fp32":
        if fp16 or int8:
            raise fail("no FP16/INT8 layer may appear without precision flags or reduced-precision ONNX types")
    elif path.precision == "fp16":
        if int8:
            raise fail("an FP16 build may not contain INT8 layers")
        if not fp16:
            if strong and not summary.opaque:
                raise fail("an FP16 ONNX built strongly typed must give FP16 layers")
            warnings.append(_none_of("fp16", where, forced=strong, allows="BuilderFlag.FP16 allows FP16 but does not "
                                     "force it; TensorRT found FP32 faster for every layer"))
    elif not int8:
        forced = strong or explicit_quantization
        if forced and not summary.opaque:
            raise fail("a Q/DQ ONNX must give INT8 layers")
        warnings.append(_none_of("int8", where, forced=forced,
                                 allows="BuilderFlag.INT8 with a calibrator allows INT8 but does not force it"))
    return warnings


def _none_of(precision: str, where: str, *, forced: bool, allows: str) -> str:
    """The warning for a build with no layer of its precision that TensorRT may legally have built: forced types
    hidden in Myelin regions, or a flag that only allows the precision."""
    why = f"its {precision.upper()} may be inside the Myelin regions" if forced else allows
    return f"{precision} build has no {precision.upper()} layer{where}: {why}"
