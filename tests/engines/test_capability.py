"""Capability detection and build-path choice per TensorRT flavour (namespaces of the real binding names)."""

from __future__ import annotations

import enum

import pytest

from retinaedge.engines.capability import BuildPath, choose_path, detect
from retinaedge.runtime.errors import EngineBuildError, InputError
from tests.support.trt_namespaces import FLAVOURS, namespace


def test_detect_per_flavour():
    c86, c103, c111 = (detect(namespace(f)) for f in FLAVOURS)
    # TensorRT 8.6 (JetPack 5): weakly typed only, explicit batch flag still required, both execution APIs
    assert (c86.major, c86.strongly_typed, c86.needs_explicit_batch) == (8, False, True)
    assert c86.weak_fp16 and c86.weak_int8 and c86.int8_calibrator and c86.weakly_typed
    assert c86.tensor_api and c86.bindings_api and not c86.timing_cache_miss_error
    # TensorRT 10.3 (JetPack 6): both typings; EXPLICIT_BATCH exists but is not needed; no bindings API
    assert (c103.major, c103.strongly_typed, c103.needs_explicit_batch) == (10, True, False)
    assert c103.weak_fp16 and c103.weak_int8 and c103.int8_calibrator
    assert c103.tensor_api and not c103.bindings_api and c103.timing_cache_miss_error
    # TensorRT 11: strongly typed only
    assert (c111.major, c111.strongly_typed, c111.needs_explicit_batch) == (11, True, False)
    assert not (c111.weak_fp16 or c111.weak_int8 or c111.int8_calibrator or c111.weakly_typed)
    for c in (c86, c103, c111):
        assert c.dla and c.version_compatible and c.hardware_compatible and c.engine_inspector


def test_detection_is_by_feature_not_version_string():
    # a 10.x-numbered module without the precision flags is treated as strongly-typed only ...
    ns = namespace("10.3", version="10.99.0")
    ns.BuilderFlag = enum.IntEnum("BuilderFlag", ["GPU_FALLBACK", "VERSION_COMPATIBLE"])
    caps = detect(ns)
    assert caps.major == 10 and not caps.weak_fp16 and not caps.weakly_typed
    # ... and an unparsable version does not matter at all
    caps = detect(namespace("8.6", version="dev-build"))
    assert caps.major == -1 and caps.weak_int8 and not caps.strongly_typed


@pytest.mark.parametrize(
    ("flavour", "precision", "kind", "expected"),
    [
        ("8.6", "auto", "fp32", BuildPath("weakly-typed", "fp32")),
        ("8.6", "fp16", "fp32", BuildPath("weakly-typed", "fp16", fp16_flag=True)),
        ("8.6", "int8", "fp32", BuildPath("weakly-typed", "int8", fp16_flag=True, int8_flag=True, calibrator=True)),
        ("8.6", "auto", "fp16", BuildPath("weakly-typed", "fp16", fp16_flag=True)),
        ("8.6", "auto", "qdq", BuildPath("weakly-typed", "int8", fp16_flag=True, int8_flag=True)),
        ("10.3", "auto", "fp32", BuildPath("strongly-typed", "fp32")),
        ("10.3", "fp16", "fp32", BuildPath("weakly-typed", "fp16", fp16_flag=True)),
        ("10.3", "int8", "fp32", BuildPath("weakly-typed", "int8", fp16_flag=True, int8_flag=True, calibrator=True)),
        ("10.3", "fp16", "fp16", BuildPath("strongly-typed", "fp16")),
        ("10.3", "int8", "qdq", BuildPath("strongly-typed", "int8")),
        ("11.1", "fp32", "fp32", BuildPath("strongly-typed", "fp32")),
        ("11.1", "auto", "fp16", BuildPath("strongly-typed", "fp16")),
        ("11.1", "auto", "qdq", BuildPath("strongly-typed", "int8")),
    ],
)
def test_choose_path(flavour, precision, kind, expected):
    assert choose_path(detect(namespace(flavour)), precision, kind) == expected


@pytest.mark.parametrize(
    ("flavour", "precision", "kind", "strongly", "needle"),
    [
        # TensorRT 11 cannot make FP16/INT8 from the FP32 ONNX: no flags, no calibrator -> name the right file
        ("11.1", "fp16", "fp32", None, "model.fp16.onnx"),
        ("11.1", "int8", "fp32", None, "model.int8.onnx"),
        ("11.1", "fp32", "fp32", False, "strongly typed networks only"),
        ("8.6", "fp16", "fp16", True, "no NetworkDefinitionCreationFlag.STRONGLY_TYPED"),
        ("10.3", "fp16", "fp32", True, "needs model.fp16.onnx"),
        # an ONNX's own types cannot be overridden by asking for another precision
        ("10.3", "fp32", "fp16", None, "gives fp16 only"),
        ("11.1", "fp16", "qdq", None, "gives int8 only"),
    ],
)
def test_choose_path_refuses_what_it_cannot_honour(flavour, precision, kind, strongly, needle):
    with pytest.raises(EngineBuildError) as e:
        choose_path(detect(namespace(flavour)), precision, kind, strongly_typed=strongly)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_choose_path_forced_typing():
    caps = detect(namespace("10.3"))
    assert choose_path(caps, "fp32", "fp32", strongly_typed=False) == BuildPath("weakly-typed", "fp32")
    assert choose_path(caps, "auto", "fp16", strongly_typed=False).fp16_flag
    assert choose_path(caps, "auto", "qdq", strongly_typed=True) == BuildPath("strongly-typed", "int8")


def test_choose_path_rejects_unknown_values():
    caps = detect(namespace("10.3"))
    with pytest.raises(InputError, match="bf16"):
        choose_path(caps, "bf16", "fp32")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="int4"):
        choose_path(caps, "auto", "int4")  # type: ignore[arg-type]


def test_describe_says_which_path():
    assert "weakly-typed" in BuildPath("weakly-typed", "int8", True, True, True).describe()
    assert "FP16+INT8" in BuildPath("weakly-typed", "int8", True, True, True).describe()
    assert "types from the ONNX" in BuildPath("strongly-typed", "fp16").describe()


# ---- issue 13 item 9: STRONGLY_TYPED is "deprecated and ignored" on TensorRT 11 ------------------------------
# include/NvInfer.h at NVIDIA/TensorRT v11.1, enum NetworkDefinitionCreationFlag:
#   "\deprecated Deprecated in TensorRT 11.0. Strongly typed mode is always enabled.
#    This flag is retained for API compatibility but is ignored."   kSTRONGLY_TYPED TRT_DEPRECATED_ENUM = 0,
# so strong typing is keyed on TRT >= 11 or on the absence of BuilderFlag.FP16, never on that flag alone.
def test_trt11_without_the_deprecated_flag_is_still_strongly_typed():
    ns = namespace("11.1", version="11.9.0")
    ns.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", ["PREFER_AOT_PYTHON_PLUGINS"])
    caps = detect(ns)
    assert caps.strongly_typed and not caps.strongly_typed_flag and not caps.weakly_typed
    assert choose_path(caps, "auto", "fp16") == BuildPath("strongly-typed", "fp16")


def test_a_release_that_drops_fp16_and_the_flag_builds_strongly_typed():
    # a 10.x-numbered module with neither BuilderFlag.FP16 nor STRONGLY_TYPED: strong typing is the only mode left
    ns = namespace("10.3", version="10.99.0")
    ns.BuilderFlag = enum.IntEnum("BuilderFlag", ["GPU_FALLBACK", "VERSION_COMPATIBLE"])
    ns.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH"])
    caps = detect(ns)
    assert caps.strongly_typed and not caps.strongly_typed_flag
    assert choose_path(caps, "auto", "qdq") == BuildPath("strongly-typed", "int8")


def test_the_flag_is_set_only_where_networks_are_weakly_typed_by_default():
    c86, c103, c111 = (detect(namespace(f)) for f in FLAVOURS)
    assert (c86.strongly_typed_flag, c103.strongly_typed_flag, c111.strongly_typed_flag) == (False, True, False)
