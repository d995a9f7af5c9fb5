"""deploy/deepstream.py: the nvinfer config (parsed with configparser and checked key by key against the
engine sidecar's spec), labels, engine copy, and the generated bbox parser — compiled with the generated
Makefile against a stand-in for DeepStream's two headers and run on hand-made EfficientNMS outputs.

The engine is a FIXTURE (placeholder bytes + a sidecar JSON with the documented keys), not a real TensorRT
build; the ONNX is a tiny graph ending in an EfficientNMS_TRT node, built here with onnx.helper.
"""

from __future__ import annotations

import configparser
import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from retinaedge.cli import main
from retinaedge.deploy.deepstream import CONFIG_NAME, DeepStreamConfig, write_deepstream_config
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec, PostProcess
from tests.support.engine_fixture import write_engine_fixture


def tiny_spec(**changes: object) -> DetectorSpec:
    """64x64 float32 input, 2 levels, 1 anchor per cell (N = 5), 3 classes, K = 7, efficient NMS."""
    spec = DetectorSpec(
        class_names=("cat", "dog", "traffic light"),
        input_height=64,
        input_width=64,
        input_dtype="float32",
        anchors=AnchorSpec(strides=(32, 64), sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0,)),
        postprocess=PostProcess(max_detections=7, score_threshold=0.3),
        nms="efficient",
    )
    return spec.replace(**changes) if changes else spec


def build_efficient_onnx(path: Path, spec: DetectorSpec) -> Path:
    """Raw heads -> EfficientNMS_TRT, with the export's metadata (the graph the engine is built from)."""
    n, c, k, io = spec.num_anchors, spec.num_classes, spec.postprocess.max_detections, spec.io
    w = np.random.default_rng(0).standard_normal((3, n * (4 + c))).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", [io.input], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["flat"]),
            helper.make_node("Reshape", ["flat", "shape"], ["heads"]),
            helper.make_node("Split", ["heads", "split"], [io.box_deltas, io.cls_logits], axis=2),
            helper.make_node(
                "EfficientNMS_TRT",
                [io.box_deltas, io.cls_logits, "anchors"],
                [io.num_detections, io.detection_boxes, io.detection_scores, io.detection_classes],
                domain="trt.plugins",
                plugin_version="1",
                background_class=-1,
                max_output_boxes=k,
                score_threshold=spec.postprocess.score_threshold,
                iou_threshold=spec.postprocess.iou_threshold,
                score_activation=1,
                class_agnostic=0,
                box_coding=1,
            ),
        ],
        "tiny",
        [helper.make_tensor_value_info(io.input, TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [
            helper.make_tensor_value_info(io.num_detections, TensorProto.INT32, ["batch", 1]),
            helper.make_tensor_value_info(io.detection_boxes, TensorProto.FLOAT, ["batch", k, 4]),
            helper.make_tensor_value_info(io.detection_scores, TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info(io.detection_classes, TensorProto.INT32, ["batch", k]),
        ],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([-1, n, 4 + c], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.array([4, c], dtype=np.int64), "split"),
            numpy_helper.from_array(spec.anchors_cxcywh()[None], "anchors"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt.plugins", 1)]
    )
    helper.set_model_props(
        model, {"retinaedge.spec": spec.to_json(), "retinaedge.precision": "fp32", "retinaedge.nms": "efficient"}
    )
    onnx.save(model, str(path))
    return path


def build_engine_fixture(folder: Path, spec: DetectorSpec, **kw: object) -> Path:
    """FIXTURE engine (tests/support/engine_fixture.py), batch profile (1, 2, 4) unless given."""
    return write_engine_fixture(folder, spec, **{"batch": (1, 2, 4), **kw})  # type: ignore[arg-type]


def read_config(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=True)  # strict: a duplicate key is an error
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


# ---- the config, key by key ------------------------------------------------------------------------------
@pytest.mark.parametrize(("precision", "mode"), [("fp32", "0"), ("int8", "1"), ("fp16", "2")])
@pytest.mark.parametrize("center", [True, False])
def test_config_keys_follow_the_sidecar(tmp_path: Path, precision: str, mode: str, center: bool) -> None:
    spec = tiny_spec(letterbox_center=center)
    onnx_path = build_efficient_onnx(tmp_path / "src.onnx", spec)
    engine = build_engine_fixture(tmp_path, spec, precision=precision, onnx_path=onnx_path)
    out = tmp_path / "ds"
    files = write_deepstream_config(DeepStreamConfig(engine=engine, onnx=onnx_path, out=out, gpu_id=1))

    assert files.config_path == out / CONFIG_NAME
    cp = read_config(files.config_path)
    assert cp.sections() == ["property", "class-attrs-all"]
    p = cp["property"]
    # normalisation is inside the graph: nvinfer must pass raw 0..255 RGB, NCHW
    assert float(p["net-scale-factor"]) == 1.0
    assert [float(v) for v in p["offsets"].split(";")] == [0.0, 0.0, 0.0]
    assert p["model-color-format"] == "0"
    assert p["network-input-order"] == "0"
    assert p["gpu-id"] == "1"
    assert p["network-mode"] == mode
    assert p["network-type"] == "0" and p["process-mode"] == "1"
    assert int(p["batch-size"]) == 4  # sidecar profile 1:2:4, max
    assert int(p["num-detected-classes"]) == spec.num_classes == 3
    assert [int(v) for v in p["infer-dims"].split(";")] == [3, spec.input_height, spec.input_width]
    assert p["maintain-aspect-ratio"] == "1"
    assert p["symmetric-padding"] == ("1" if center else "0")
    assert p["scaling-filter"] == "1"  # bilinear, like runtime.preprocess
    assert p["cluster-mode"] == "4"  # NMS already ran in the engine
    assert p["output-blob-names"].split(";") == [
        "num_detections",
        "detection_boxes",
        "detection_scores",
        "detection_classes",
    ]
    assert float(cp["class-attrs-all"]["pre-cluster-threshold"]) == spec.postprocess.score_threshold

    # referenced files exist (relative to the config's directory, as nvinfer resolves them)
    assert (out / p["model-engine-file"]).read_bytes() == engine.read_bytes()
    assert p["model-engine-file"] == f"model.{precision}.engine"
    assert (out / p["onnx-file"]).read_bytes() == onnx_path.read_bytes()
    assert (out / p["labelfile-path"]).read_text().splitlines() == ["cat", "dog", "traffic light"]
    # the parser named in the config is the one the generated source defines and the Makefile builds
    src = (out / "nvdsinfer_custom_retinaedge.cpp").read_text()
    assert re.search(rf'extern "C" bool {p["parse-bbox-func-name"]}\(', src)
    assert f"CHECK_CUSTOM_PARSE_FUNC_PROTOTYPE({p['parse-bbox-func-name']})" in src
    assert re.search(rf"^{re.escape(p['custom-lib-path'])}: ", (out / "Makefile").read_text(), re.M)


def test_without_onnx_there_is_no_onnx_file_key(tmp_path: Path) -> None:
    engine = build_engine_fixture(tmp_path, tiny_spec())
    files = write_deepstream_config(DeepStreamConfig(engine=engine, out=tmp_path / "ds", batch_size=2))
    p = read_config(files.config_path)["property"]
    assert "onnx-file" not in p
    assert p["batch-size"] == "2"
    assert files.onnx_path is None


# ---- refusals --------------------------------------------------------------------------------------------
def test_uint8_input_engine_is_refused(tmp_path: Path) -> None:
    engine = build_engine_fixture(tmp_path, tiny_spec(input_dtype="uint8"))
    with pytest.raises(ModelError, match=r"takes uint8 images but nvinfer feeds float32; re-export with a float32"):
        write_deepstream_config(DeepStreamConfig(engine=engine, out=tmp_path / "ds"))


@pytest.mark.parametrize("nms", ["onnx", "none"])
def test_non_efficient_engine_is_refused(tmp_path: Path, nms: str) -> None:
    engine = build_engine_fixture(tmp_path, tiny_spec(nms=nms))
    with pytest.raises(ModelError, match=rf"exported with --nms {nms}.*export with --nms efficient"):
        write_deepstream_config(DeepStreamConfig(engine=engine, out=tmp_path / "ds"))


def test_missing_sidecar(tmp_path: Path) -> None:
    engine = build_engine_fixture(tmp_path, tiny_spec())
    engine.with_name(engine.name + ".json").unlink()
    with pytest.raises(ModelError, match=r"engine sidecar .*\.engine\.json' does not exist"):
        write_deepstream_config(DeepStreamConfig(engine=engine, out=tmp_path / "ds"))


def test_missing_engine(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist; build one with retinaedge build"):
        write_deepstream_config(DeepStreamConfig(engine=tmp_path / "none.engine", out=tmp_path / "ds"))


def test_non_writable_out(tmp_path: Path) -> None:
    engine = build_engine_fixture(tmp_path, tiny_spec())
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match="is not writable"):
        write_deepstream_config(DeepStreamConfig(engine=engine, out=blocker / "ds"))


def test_batch_size_outside_profile(tmp_path: Path) -> None:
    engine = build_engine_fixture(tmp_path, tiny_spec())
    with pytest.raises(InputError, match=r"batch_size=8 is outside the engine's batch profile 1:2:4"):
        write_deepstream_config(DeepStreamConfig(engine=engine, out=tmp_path / "ds", batch_size=8))
    with pytest.raises(InputError, match="batch_size=0 must be an integer >= 1"):
        DeepStreamConfig(engine=engine, out=tmp_path / "ds", batch_size=0)


def test_wrong_onnx_is_refused(tmp_path: Path) -> None:
    spec = tiny_spec()
    engine = build_engine_fixture(tmp_path, spec, onnx_path=build_efficient_onnx(tmp_path / "a.onnx", spec))
    other = build_efficient_onnx(tmp_path / "b.onnx", spec.replace(class_names=("x", "y", "z")))
    with pytest.raises(ModelError, match="is not the one engine"):
        write_deepstream_config(DeepStreamConfig(engine=engine, onnx=other, out=tmp_path / "ds"))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = build_engine_fixture(tmp_path, tiny_spec())
    assert main(["export-deepstream", "--engine", str(engine), "--out", str(tmp_path / "ds")]) == 0
    assert (tmp_path / "ds" / CONFIG_NAME).is_file()
    assert "make -C" in capsys.readouterr().out
    bad = build_engine_fixture(tmp_path, tiny_spec(input_dtype="uint8"), precision="fp32")
    assert main(["export-deepstream", "--engine", str(bad), "--out", str(tmp_path / "ds2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "float32" in err


# ---- the generated parser, compiled and run --------------------------------------------------------------
# A stand-in for DeepStream's sources/includes/nvdsinfer_custom_impl.h (+ nvdsinfer.h): the declarations
# the parser uses, copied in shape from DeepStream's headers (NvDsInferLayerInfo with the inferDims/dims
# union, NvDsInferDataType FLOAT=0..INT32=3, NvDsInferParseDetectionParams, NvDsInferObjectDetectionInfo,
# the NvDsInferParseCustomFunc typedef and CHECK_CUSTOM_PARSE_FUNC_PROTOTYPE as DeepStream defines it).
STUB_HEADER = r"""
#pragma once
#include <vector>
#define NVDSINFER_MAX_DIMS 8
typedef struct { unsigned int numDims; unsigned int d[NVDSINFER_MAX_DIMS]; unsigned int numElements; } NvDsInferDims;
typedef enum { FLOAT = 0, HALF = 1, INT8 = 2, INT32 = 3 } NvDsInferDataType;
typedef struct {
  NvDsInferDataType dataType;
  union { NvDsInferDims inferDims; NvDsInferDims dims; };
  int bindingIndex;
  const char *layerName;
  void *buffer;
  int isInput;
} NvDsInferLayerInfo;
typedef struct { unsigned int width; unsigned int height; unsigned int channels; } NvDsInferNetworkInfo;
typedef struct {
  unsigned int classId; float left; float top; float width; float height; float detectionConfidence;
} NvDsInferObjectDetectionInfo;
typedef struct {
  unsigned int numClassesConfigured;
  std::vector<float> perClassPreclusterThreshold;
  std::vector<float> perClassPostclusterThreshold;
  std::vector<float> &perClassThreshold = perClassPreclusterThreshold;
} NvDsInferParseDetectionParams;
typedef bool (*NvDsInferParseCustomFunc)(std::vector<NvDsInferLayerInfo> const &outputLayersInfo,
    NvDsInferNetworkInfo const &networkInfo, NvDsInferParseDetectionParams const &detectionParams,
    std::vector<NvDsInferObjectDetectionInfo> &objectList);
#define CHECK_CUSTOM_PARSE_FUNC_PROTOTYPE(customParseFunc) \
    static void checkFunc_ ## customParseFunc (NvDsInferParseCustomFunc func = customParseFunc) \
        { checkFunc_ ## customParseFunc (); }; \
    extern "C" bool customParseFunc (std::vector<NvDsInferLayerInfo> const &outputLayersInfo, \
           NvDsInferNetworkInfo const &networkInfo, \
           NvDsInferParseDetectionParams const &detectionParams, \
           std::vector<NvDsInferObjectDetectionInfo> &objectList);
"""

# Calls the parser from the built .so through dlopen/dlsym, as nvinfer does, on one frame of K = 4 slots.
DRIVER = r"""
#include <dlfcn.h>
#include <cstdio>
#include <cstring>
#include "nvdsinfer_custom_impl.h"
static NvDsInferLayerInfo layer(const char *name, NvDsInferDataType t, void *buf, unsigned int n) {
  NvDsInferLayerInfo l;
  std::memset(&l, 0, sizeof(l));
  l.dataType = t; l.layerName = name; l.buffer = buf; l.inferDims.numDims = 1; l.inferDims.d[0] = n;
  l.inferDims.numElements = n;
  return l;
}
int main(int argc, char **argv) {
  void *lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) { std::printf("dlopen failed: %s\n", dlerror()); return 2; }
  auto fn = reinterpret_cast<NvDsInferParseCustomFunc>(dlsym(lib, argv[2]));
  if (!fn) { std::printf("dlsym failed\n"); return 3; }
  int num[1] = {4};
  // xyxy in network-input pixels (64 x 64): a normal box, one crossing the border, one of class 5, one
  // below its class threshold; slot 4 would be padding.
  float boxes[16] = {10, 20, 30, 60,   -5, 40, 70, 80,   1, 1, 9, 9,   2, 2, 12, 12};
  float scores[4] = {0.9f, 0.8f, 0.7f, 0.35f};
  int classes[4] = {1, 0, 5, 2};
  std::vector<NvDsInferLayerInfo> layers = {
      layer("detection_scores", FLOAT, scores, 4), layer("detection_classes", INT32, classes, 4),
      layer("num_detections", INT32, num, 1), layer("detection_boxes", FLOAT, boxes, 16)};
  NvDsInferNetworkInfo net = {64, 64, 3};
  NvDsInferParseDetectionParams params;
  params.numClassesConfigured = 3;
  params.perClassPreclusterThreshold = {0.3f, 0.3f, 0.5f};
  std::vector<NvDsInferObjectDetectionInfo> objs;
  bool ok = fn(layers, net, params, objs);
  std::printf("ok=%d n=%zu\n", ok ? 1 : 0, objs.size());
  for (auto &o : objs)
    std::printf("%u %.3f %.3f %.3f %.3f %.3f\n", o.classId, o.detectionConfidence, o.left, o.top, o.width, o.height);
  layers[1].dataType = FLOAT;  // classes as float: refused, not misread
  objs.clear();
  std::printf("wrongtype ok=%d n=%zu\n", fn(layers, net, params, objs) ? 1 : 0, objs.size());
  layers.pop_back();  // detection_boxes missing
  std::printf("missing ok=%d\n", fn(layers, net, params, objs) ? 1 : 0);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("g++") is None, reason="needs make and g++")
def test_parser_builds_with_the_makefile_and_parses_outputs(tmp_path: Path) -> None:
    engine = build_engine_fixture(tmp_path, tiny_spec())
    out = tmp_path / "ds"
    files = write_deepstream_config(DeepStreamConfig(engine=engine, out=out))
    props = files.properties
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "nvdsinfer_custom_impl.h").write_text(STUB_HEADER)
    # the generated Makefile, as a user runs it (headers pointed at the stand-in); -Werror on our code only:
    # -isystem quiets the header's own macro (self-recursive by DeepStream's design)
    flags = f"CXXFLAGS=-O1 -Wall -Wextra -Werror -isystem {inc}"
    subprocess.run(
        ["make", "-C", str(out), f"DS_INC={inc}", f"CUDA_INC={inc}", flags],
        check=True,
        capture_output=True,
        text=True,
    )
    lib = out / props["custom-lib-path"]
    assert lib.is_file()
    # nvinfer dlsym()s the function by name: it must be exported unmangled
    ctypes.CDLL(str(lib))[props["parse-bbox-func-name"]]

    (tmp_path / "driver.cpp").write_text(DRIVER)
    exe = tmp_path / "driver"
    subprocess.run(
        ["g++", "-std=c++14", "-O1", f"-I{inc}", str(tmp_path / "driver.cpp"), "-o", str(exe), "-ldl"],
        check=True,
        capture_output=True,
        text=True,
    )
    run = subprocess.run([str(exe), str(lib), props["parse-bbox-func-name"]], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "ok=1 n=2"
    # hand-computed: (10,20,30,60) -> left 10, top 20, w 20, h 40; (-5,40,70,80) clipped to the 64x64
    # input -> (0,40,64,64) -> w 64, h 24; class 5 >= 3 configured classes and the 0.35 < 0.5 class-2
    # threshold are dropped
    got = [[float(v) for v in line.split()] for line in lines[1:3]]
    np.testing.assert_allclose(got, [[1, 0.9, 10, 20, 20, 40], [0, 0.8, 0, 40, 64, 24]], atol=1e-6)
    assert lines[3] == "wrongtype ok=0 n=0"
    assert lines[4] == "missing ok=0"
    assert "output detection_classes has data type 0, expected 3" in run.stderr
    assert "output detection_boxes not found" in run.stderr
