"""DeepStream (Gst-nvinfer) config, labels and bbox parser for a retinaedge EfficientNMS engine.

``write_deepstream_config`` writes into one self-contained directory::

    config_infer_primary_retinaedge.txt   nvinfer [property] + [class-attrs-all]
    labels.txt                            one class name per line (detector label file format)
    model.<precision>.engine              copy of the engine (and model.<precision>.onnx with --onnx)
    nvdsinfer_custom_retinaedge.cpp       NvDsInferParseRetinaEdge: the bbox parser for our outputs
    Makefile                              builds libnvds_infercustomparser_retinaedge.so against DeepStream

Relative paths in the config (engine, ONNX, labels, parser library) are resolved by nvinfer against the
config file's directory, so the directory can be moved as a whole (to a Jetson, say).

Why these values (all from the engine's sidecar spec; nothing guessed):

* ``net-scale-factor=1`` and ``offsets=0;0;0``: mean/std normalisation lives inside our graph, so nvinfer
  must hand over raw 0..255 RGB (``model-color-format=0``), NCHW (``network-input-order=0``).
* nvinfer feeds the network *float* planar data (Gst-nvinfer docs: "produces final float RGB/BGR/GRAY
  planar data which is passed to the TensorRT engine"), so an engine with a uint8 image input is refused:
  re-export with a float32 input (spec ``input_dtype=float32``) and rebuild.
* ``maintain-aspect-ratio=1`` + ``symmetric-padding`` = ``spec.letterbox_center``: nvinfer letterboxes
  like runtime.preprocess (bilinear scaling: ``scaling-filter=1``). nvinfer pads with black (0), not
  ``spec.letterbox_pad``; the border pixels differ, the geometry does not.
* ``cluster-mode=4`` (no clustering): NMS already ran inside the engine (EfficientNMS_TRT).
* ``network-mode``: 0 fp32, 1 int8, 2 fp16 from the sidecar precision (it matters only if nvinfer rebuilds
  the engine from ``onnx-file``).

The parser. NVIDIA ships no parser for EfficientNMS_TRT outputs with ``xyxy`` pixel boxes and int32 classes
(checked, Dec 2026): deepstream_tao_apps' ``NvDsInferParseCustomEfficientDetTAO``
(post_processor/nvdsinfer_custombboxparser_tao.cpp) finds ``num_detections``, ``detection_boxes``,
``detection_scores``, ``detection_classes`` by name but reads boxes as ``[y1, x1, y2, x2]`` (TF EfficientDet
order) — it would transpose ours; its BatchedNMS parsers read classes as float. ``NvDsInferParseCustomEfficientNMS``
exists only as a community patch to DeepStream's sample parser (YOLOv7 guides), reading outputs by index.
So we generate a ~60-line parser that looks the four outputs up by name, checks their data types and
converts ``xyxy`` (network-input pixels) to nvinfer's left/top/width/height; build it once with ``make``.
"""

from __future__ import annotations

import configparser
import io
import math
from dataclasses import dataclass
from pathlib import Path

from retinaedge.deploy.triton import DeployModel, copy_atomic, labels_text, load_engine_model
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.io import atomic_write_text, ensure_writable_dir

CONFIG_NAME = "config_infer_primary_retinaedge.txt"
LABELS_NAME = "labels.txt"
PARSER_SOURCE = "nvdsinfer_custom_retinaedge.cpp"
PARSER_LIB = "libnvds_infercustomparser_retinaedge.so"
PARSE_FUNC = "NvDsInferParseRetinaEdge"

NETWORK_MODES: dict[str, int] = {"fp32": 0, "int8": 1, "fp16": 2}
"""Gst-nvinfer ``network-mode``: 0 FP32, 1 INT8, 2 FP16."""


@dataclass(frozen=True)
class DeepStreamConfig:
    """What `write_deepstream_config` writes.

    Attributes:
        engine: a TensorRT engine built from an ``--nms efficient`` ONNX (sidecar beside it).
        out: output directory.
        onnx: the ONNX the engine was built from; copied and set as ``onnx-file`` so nvinfer can rebuild
            the engine on another GPU / TensorRT (its sha256 must match the sidecar).
        batch_size: nvinfer ``batch-size`` (usually the number of sources); None = the profile's max.
        gpu_id: nvinfer ``gpu-id``.
    """

    engine: Path
    out: Path
    onnx: Path | None = None
    batch_size: int | None = None
    gpu_id: int = 0

    def __post_init__(self) -> None:
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise InputError(f"batch_size={self.batch_size!r} must be an integer >= 1")
        if not isinstance(self.gpu_id, int) or self.gpu_id < 0:
            raise InputError(f"gpu_id={self.gpu_id!r} must be an integer >= 0")


@dataclass(frozen=True)
class DeepStreamFiles:
    """Files `write_deepstream_config` wrote."""

    config_path: Path
    labels_path: Path
    engine_path: Path
    onnx_path: Path | None
    parser_source: Path
    makefile: Path
    properties: dict[str, str]


def _check_model(model: DeployModel) -> None:
    if model.nms != "efficient":
        raise ModelError(
            f"engine {str(model.path)!r} was exported with --nms {model.nms}; the DeepStream config parses "
            "EfficientNMS_TRT outputs: export with --nms efficient and rebuild the engine"
        )
    if model.spec.input_dtype != "float32":
        raise ModelError(
            f"engine {str(model.path)!r} takes {model.spec.input_dtype} images but nvinfer feeds float32; "
            "re-export with a float32 image input (spec input_dtype='float32') and rebuild the engine"
        )
    names = [t.name for t in model.outputs]
    io_ = model.spec.io
    wanted = [io_.num_detections, io_.detection_boxes, io_.detection_scores, io_.detection_classes]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ModelError(f"engine {str(model.path)!r} has outputs {names}; the parser needs {wanted}")


def _batch_size(model: DeployModel, requested: int | None) -> int:
    prof = model.batch_profile
    if requested is None:
        return prof[2] if prof else 1
    if prof is not None and not prof[0] <= requested <= prof[2]:
        raise InputError(
            f"batch_size={requested} is outside the engine's batch profile {prof[0]}:{prof[1]}:{prof[2]}; "
            f"choose {prof[0]}..{prof[2]} or rebuild with retinaedge build --batch"
        )
    return requested


def nvinfer_properties(
    model: DeployModel, *, engine_file: str, onnx_file: str | None, batch_size: int, gpu_id: int
) -> dict[str, str]:
    """The ``[property]`` keys of the nvinfer config, as strings, in file order."""
    spec = model.spec
    io_ = spec.io
    if model.precision not in NETWORK_MODES:
        raise ModelError(f"precision {model.precision!r} has no nvinfer network-mode; allowed {list(NETWORK_MODES)}")
    props: dict[str, str] = {
        "gpu-id": str(gpu_id),
        "net-scale-factor": "1.0",
        "offsets": "0.0;0.0;0.0",
        "model-color-format": "0",
        "network-input-order": "0",
    }
    if onnx_file is not None:
        props["onnx-file"] = onnx_file
    props.update(
        {
            "model-engine-file": engine_file,
            "labelfile-path": LABELS_NAME,
            "batch-size": str(batch_size),
            "network-mode": str(NETWORK_MODES[model.precision]),
            "network-type": "0",
            "process-mode": "1",
            "gie-unique-id": "1",
            "num-detected-classes": str(spec.num_classes),
            "infer-dims": f"3;{spec.input_height};{spec.input_width}",
            "maintain-aspect-ratio": "1",
            "symmetric-padding": "1" if spec.letterbox_center else "0",
            "scaling-filter": "1",
            "cluster-mode": "4",
            "output-blob-names": ";".join(
                [io_.num_detections, io_.detection_boxes, io_.detection_scores, io_.detection_classes]
            ),
            "parse-bbox-func-name": PARSE_FUNC,
            "custom-lib-path": PARSER_LIB,
        }
    )
    return props


def nvinfer_config_text(model: DeployModel, properties: dict[str, str]) -> str:
    """The nvinfer config file (GKeyFile / INI syntax)."""
    thr = model.spec.postprocess.score_threshold
    if not math.isfinite(thr):
        raise ModelError(f"score_threshold={thr!r} is not finite; fix the spec and re-export")
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keep nvinfer's key case
    cp["property"] = properties
    # EfficientNMS already applied the spec's threshold; the same value here drops nothing more
    cp["class-attrs-all"] = {"pre-cluster-threshold": repr(float(thr))}
    buf = io.StringIO()
    cp.write(buf, space_around_delimiters=False)
    side = model.sidecar or {}
    header = (
        f"# Gst-nvinfer config generated by retinaedge export-deepstream from {model.path.name}\n"
        f"# (precision {model.precision}, TensorRT {side.get('trt_version', '?')} on "
        f"{side.get('device_name', '?')}). Build the parser first: make -C <this directory>\n"
        "# Normalisation is inside the engine: nvinfer passes raw 0..255 RGB (net-scale-factor=1, offsets=0).\n"
    )
    return header + buf.getvalue()


def parser_source(model: DeployModel) -> str:
    """C++ source of ``NvDsInferParseRetinaEdge`` with the spec's output names baked in.

    It follows DeepStream's custom parser API (nvdsinfer_custom_impl.h, ``NvDsInferParseCustomFunc``): for each
    frame it finds the four outputs by name, checks INT32/FLOAT types, reads ``num_detections`` rows of
    ``detection_boxes`` (xyxy, network-input pixels), ``detection_scores`` and ``detection_classes``, keeps
    classes ``< numClassesConfigured`` with score ``>= perClassPreclusterThreshold[class]``, and clips boxes
    to the network input.
    """
    io_ = model.spec.io
    for n in (io_.num_detections, io_.detection_boxes, io_.detection_scores, io_.detection_classes):
        if not n or any(ch in n for ch in '"\\\n\r'):
            raise ModelError(f"output name {n!r} cannot be written into C++ source; rename it in the spec")
    return _PARSER_TEMPLATE.format(
        func=PARSE_FUNC,
        num=io_.num_detections,
        boxes=io_.detection_boxes,
        scores=io_.detection_scores,
        classes=io_.detection_classes,
    )


def makefile_text() -> str:
    """Makefile that builds the parser library against DeepStream's headers (and CUDA's, which they include)."""
    return _MAKEFILE.format(lib=PARSER_LIB, src=PARSER_SOURCE)


def write_deepstream_config(config: DeepStreamConfig) -> DeepStreamFiles:
    """Write the nvinfer config, labels, engine copy and parser sources for an EfficientNMS engine.

    Raises:
        ModelError: missing engine or sidecar, an engine not exported with ``--nms efficient``, a uint8-input
            engine (nvinfer feeds float), or an ONNX that is not the engine's source.
        InputError: a batch size outside the engine's profile, or a non-writable ``out``.
    """
    model = load_engine_model(config.engine, config.onnx)
    _check_model(model)
    batch = _batch_size(model, config.batch_size)
    labels = labels_text(model.spec)
    engine_name = f"model.{model.precision}.engine"
    onnx_name = f"model.{model.precision}.onnx" if model.onnx_path is not None else None
    props = nvinfer_properties(
        model, engine_file=engine_name, onnx_file=onnx_name, batch_size=batch, gpu_id=config.gpu_id
    )
    text = nvinfer_config_text(model, props)
    source = parser_source(model)
    out = ensure_writable_dir(config.out)
    engine_path = out / engine_name
    copy_atomic(model.path, engine_path)
    onnx_path = None
    if model.onnx_path is not None and onnx_name is not None:
        onnx_path = out / onnx_name
        copy_atomic(model.onnx_path, onnx_path)
    labels_path = out / LABELS_NAME
    atomic_write_text(labels_path, labels)
    src_path = out / PARSER_SOURCE
    atomic_write_text(src_path, source)
    makefile = out / "Makefile"
    atomic_write_text(makefile, makefile_text())
    config_path = out / CONFIG_NAME
    atomic_write_text(config_path, text)
    return DeepStreamFiles(
        config_path=config_path,
        labels_path=labels_path,
        engine_path=engine_path,
        onnx_path=onnx_path,
        parser_source=src_path,
        makefile=makefile,
        properties=props,
    )


_PARSER_TEMPLATE = """\
// Generated by retinaedge export-deepstream. Gst-nvinfer bbox parser for EfficientNMS_TRT outputs:
//   {num} (1) int32, {boxes} (K, 4) float32 xyxy in network-input pixels,
//   {scores} (K) float32, {classes} (K) int32   (per frame: nvinfer strips the batch axis).
// Build: make   (DS_INC / CUDA_INC point at DeepStream's sources/includes and CUDA's include dir)
#include <cstring>
#include <iostream>
#include <vector>

#include "nvdsinfer_custom_impl.h"

static const NvDsInferLayerInfo *retinaedgeFindLayer(std::vector<NvDsInferLayerInfo> const &layers,
                                                     const char *name, NvDsInferDataType type) {{
  for (auto const &layer : layers) {{
    if (layer.layerName != nullptr && std::strcmp(layer.layerName, name) == 0) {{
      if (layer.dataType != type) {{
        std::cerr << "{func}: output " << name << " has data type " << layer.dataType << ", expected "
                  << type << std::endl;
        return nullptr;
      }}
      return &layer;
    }}
  }}
  std::cerr << "{func}: output " << name << " not found; list it in output-blob-names" << std::endl;
  return nullptr;
}}

static float retinaedgeClip(float v, float hi) {{ return v < 0.0f ? 0.0f : (v > hi ? hi : v); }}

extern "C" bool {func}(std::vector<NvDsInferLayerInfo> const &outputLayersInfo,
                       NvDsInferNetworkInfo const &networkInfo,
                       NvDsInferParseDetectionParams const &detectionParams,
                       std::vector<NvDsInferObjectDetectionInfo> &objectList) {{
  const NvDsInferLayerInfo *num = retinaedgeFindLayer(outputLayersInfo, "{num}", INT32);
  const NvDsInferLayerInfo *boxes = retinaedgeFindLayer(outputLayersInfo, "{boxes}", FLOAT);
  const NvDsInferLayerInfo *scores = retinaedgeFindLayer(outputLayersInfo, "{scores}", FLOAT);
  const NvDsInferLayerInfo *classes = retinaedgeFindLayer(outputLayersInfo, "{classes}", INT32);
  if (num == nullptr || boxes == nullptr || scores == nullptr || classes == nullptr) return false;

  const int capacity = static_cast<int>(scores->inferDims.numElements);  // K slots per frame
  int count = *static_cast<const int *>(num->buffer);
  if (count > capacity) count = capacity;
  const float *b = static_cast<const float *>(boxes->buffer);
  const float *s = static_cast<const float *>(scores->buffer);
  const int *c = static_cast<const int *>(classes->buffer);
  const float maxX = static_cast<float>(networkInfo.width);
  const float maxY = static_cast<float>(networkInfo.height);

  for (int i = 0; i < count; ++i) {{
    const int cls = c[i];
    if (cls < 0 || static_cast<unsigned int>(cls) >= detectionParams.numClassesConfigured) continue;
    if (static_cast<size_t>(cls) < detectionParams.perClassPreclusterThreshold.size() &&
        s[i] < detectionParams.perClassPreclusterThreshold[cls])
      continue;
    const float x1 = retinaedgeClip(b[4 * i + 0], maxX);
    const float y1 = retinaedgeClip(b[4 * i + 1], maxY);
    const float x2 = retinaedgeClip(b[4 * i + 2], maxX);
    const float y2 = retinaedgeClip(b[4 * i + 3], maxY);
    if (x2 <= x1 || y2 <= y1) continue;
    NvDsInferObjectDetectionInfo obj;
    obj.classId = static_cast<unsigned int>(cls);
    obj.detectionConfidence = s[i];
    obj.left = x1;
    obj.top = y1;
    obj.width = x2 - x1;
    obj.height = y2 - y1;
    objectList.push_back(obj);
  }}
  return true;
}}

CHECK_CUSTOM_PARSE_FUNC_PROTOTYPE({func});
"""

_MAKEFILE = """\
# Builds the Gst-nvinfer bbox parser generated by retinaedge export-deepstream.
#   make                      (DeepStream container / JetPack defaults)
#   make DS_INC=... CUDA_INC=...
DS_INC ?= /opt/nvidia/deepstream/deepstream/sources/includes
CUDA_INC ?= /usr/local/cuda/include
CXX ?= g++
CXXFLAGS ?= -O2 -Wall
PARSER_FLAGS = -std=c++14 -shared -fPIC -I$(DS_INC) -I$(CUDA_INC)

all: {lib}

{lib}: {src}
\t$(CXX) $(CXXFLAGS) $(PARSER_FLAGS) -o $@ $<

clean:
\trm -f {lib}

.PHONY: all clean
"""
