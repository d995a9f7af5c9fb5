"""`OrtRunner`: an exported ONNX model on ONNX Runtime (CPU by default), with EfficientNMS_TRT emulated.

ONNX Runtime has no kernel for TensorRT's ``EfficientNMS_TRT`` plugin node. For an ``efficient`` graph the
runner therefore cuts the graph at the plugin's inputs (they become the graph outputs, the node is dropped),
runs the cut graph in ORT, and applies `retinaedge.runtime.nms.efficient_nms` with the node's own attributes
and anchors constant: the same four ``detection_*`` tensors a TensorRT engine returns. Graphs without the
plugin (``onnx`` / ``none`` NMS modes, or any graph with detection outputs) run unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from retinaedge.runtime._lazy import require
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.nms import efficient_nms
from retinaedge.runtime.onnxinfo import PLUGIN_OP, describe_onnx, load_onnx_model
from retinaedge.runtime.runner import Backend, Precision, Runner
from retinaedge.runtime.spec import DetectorSpec

if TYPE_CHECKING:
    import onnx

PLUGIN_DOMAINS = ("", "trt.plugins")
_PLACEHOLDER_SPEC = DetectorSpec(class_names=("object",))
"""`_precision_of` needs no spec; this stands in so a file without one still reports its precision."""
# the plugin's own defaults (EfficientNMSParameters) for attributes a node leaves out
_PLUGIN_DEFAULTS: dict[str, Any] = {
    "score_threshold": 0.5, "iou_threshold": 0.5, "max_output_boxes": 100, "background_class": -1,
    "score_activation": 0, "class_agnostic": 0, "box_coding": 0,
}
_NP_TYPES: dict[str, type[np.generic]] = {
    "tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16,
}


@dataclass(frozen=True)
class PluginNode:
    """What the runner needs from an ``EfficientNMS_TRT`` node.

    Attributes:
        boxes: name of the boxes/deltas input tensor, (B, N, 4).
        scores: name of the scores/logits input tensor, (B, N, C).
        anchors: name of the anchors input, or None when the node has two inputs.
        anchors_value: the anchors (1, N, 4) when they are a constant (initializer or Constant node).
        attrs: keyword arguments for `efficient_nms` (thresholds, K, flags, box coding).
    """

    boxes: str
    scores: str
    anchors: str | None
    anchors_value: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)


class OrtRunner(Runner):
    """Run an exported ``.onnx`` with ONNX Runtime.

    Construction reads the file's metadata (spec, precision) and nothing else; `activate` creates the
    session.

    Args:
        path: the ``.onnx`` file.
        spec: the detector spec; default: the ``retinaedge.spec`` metadata, else ``spec.json`` beside the file.
        providers: ORT execution providers, in priority order; each must be available (no silent fallback).
        threads: intra-op threads (default: ORT's choice, one per core).
        spin: let idle intra-op threads busy-wait for work (ORT's default). Lowest latency when the model
            has the cores to itself; turn it off when other threads share them (the video pipeline's decoder
            and writer), or the spinning starves them.
        raw: return the raw heads ``{spec.io.cls_logits: (B, N, C), spec.io.box_deltas: (B, N, 4)}`` (for an
            ``efficient`` graph: the plugin's inputs; otherwise the tensors of those names) instead of the
            graph's detection outputs.
        name: label in reports (default ``ort-<precision>:<file name>``).

    Raises:
        ModelError: the file is missing or unreadable, holds no spec, or an unknown precision.
        MissingDependencyError: onnx is not installed.
    """

    backend: Backend = "ort"

    def __init__(
        self,
        *,
        path: str | Path,
        spec: DetectorSpec | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        spin: bool = True,
        raw: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads={threads!r} must be a positive integer or None (ORT's default)")
        if isinstance(providers, str) or not providers:
            raise InputError(f"providers={providers!r} must be a non-empty sequence such as ['CPUExecutionProvider']")
        self.path = Path(path)
        self.providers = tuple(providers)
        self.threads = threads
        self.spin = spin
        self.raw = raw
        model = load_onnx_model(self.path, load_external_data=False)
        self.info = describe_onnx(self.path, model=model, spec=spec)
        self.source = str(self.path)
        self.metadata = self.info.metadata
        self.spec = self.info.spec
        # runtime.runner.Precision does not list int8-mixed yet (not this module's file)
        self.precision = cast(Precision, self.info.precision)
        self.nms_mode = self.info.nms
        self.target = self.info.target
        self.keep_high = self.info.keep_high
        self.plugin = find_plugin(model, self.path)
        self.name = name or f"ort-{self.precision}:{self.path.name}"
        self._session: Any = None
        self._input_name = ""
        self._input_dtype: type[np.generic] = np.uint8
        self._fetch: list[str] = []

    @property
    def on_host_cpu(self) -> bool:
        return all(p == "CPUExecutionProvider" for p in self.providers)

    def share_cores(self) -> None:
        self.spin = False  # read when the session is created

    # ---- lifecycle -----------------------------------------------------------------------------
    def activate_impl(self) -> None:
        ort = require("onnxruntime", purpose="running ONNX models")
        available = list(ort.get_available_providers())
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise ModelError(
                f"ONNX Runtime providers {missing} are not available here; available: {available}"
            )
        model_source, fetch = self._session_model()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; a failure is raised below as one line
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(model_source, sess_options=options, providers=list(self.providers))
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise ModelError(
                f"ONNX Runtime cannot load {str(self.path)!r} ({type(e).__name__}: {_first_line(e)})"
            ) from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(
                f"{str(self.path)!r} has inputs {[i.name for i in inputs]}; a detector takes one image batch"
            )
        self._check_input(inputs[0])
        self._session = session
        self._input_name = inputs[0].name
        self._input_dtype = _NP_TYPES.get(inputs[0].type, np.float32)
        self._fetch = fetch if fetch is not None else [o.name for o in session.get_outputs()]

    def deactivate_impl(self) -> None:
        self._session = None

    # ---- inference -----------------------------------------------------------------------------
    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name: the four ``detection_*`` for ``efficient`` graphs (emulated plugin), the graph's
        own outputs otherwise, or the raw heads with ``raw=True`` (see the class doc)."""
        if batch.dtype != self._input_dtype:
            if self._input_dtype == np.uint8:
                raise InputError(
                    f"batch dtype {batch.dtype} but the model takes uint8 pixels; preprocess with the model's spec"
                )
            batch = batch.astype(self._input_dtype)
        values = self._session.run(self._fetch, {self._input_name: np.ascontiguousarray(batch)})
        out = dict(zip(self._fetch, values, strict=True))
        io = self.spec.io
        plugin = self.plugin
        if plugin is None:
            if self.raw:
                return {io.cls_logits: out[io.cls_logits], io.box_deltas: out[io.box_deltas]}
            return out
        if self.raw:
            return {io.cls_logits: out[plugin.scores], io.box_deltas: out[plugin.boxes]}
        anchors = plugin.anchors_value if plugin.anchors_value is not None or plugin.anchors is None \
            else out[plugin.anchors]
        num, boxes, scores, classes = efficient_nms(out[plugin.boxes], out[plugin.scores], anchors, **plugin.attrs)
        return {io.num_detections: num, io.detection_boxes: boxes, io.detection_scores: scores,
                io.detection_classes: classes}

    # ---- helpers -------------------------------------------------------------------------------
    def _session_model(self) -> tuple[str | bytes, list[str] | None]:
        """What ORT should load (the file itself, or the bytes of a cut graph) and the outputs to fetch
        (None: all of the file's outputs)."""
        io = self.spec.io
        plugin = self.plugin
        if plugin is None and not self.raw:
            return str(self.path), None
        model = load_onnx_model(self.path)
        if plugin is not None:
            wanted = [plugin.boxes, plugin.scores]
            if plugin.anchors is not None and plugin.anchors_value is None:
                wanted.append(plugin.anchors)
        else:
            wanted = [io.cls_logits, io.box_deltas]
            produced = {o for n in model.graph.node for o in n.output} | {o.name for o in model.graph.output}
            absent = [w for w in wanted if w not in produced]
            if absent:
                raise ModelError(
                    f"raw=True needs tensors {absent} but {str(self.path)!r} has none of that name (outputs: "
                    f"{[o.name for o in model.graph.output]}); export with --nms efficient or none"
                )
        cut_graph(model, wanted)
        return model.SerializeToString(), wanted

    def _check_input(self, arg: Any) -> None:
        shape = list(arg.shape)
        expected = [3, self.spec.input_height, self.spec.input_width]
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)):
            raise ModelError(
                f"{str(self.path)!r} input {arg.name!r} has shape {shape}; the spec says (B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}); is this the spec it was exported with?"
            )
        if arg.type not in _NP_TYPES:
            raise ModelError(
                f"{str(self.path)!r} input {arg.name!r} has type {arg.type}; allowed: {sorted(_NP_TYPES)}"
            )


def find_plugin(model: onnx.ModelProto, path: Path | str = "<model>") -> PluginNode | None:
    """The ``EfficientNMS_TRT`` node of a graph, or None.

    Raises:
        ModelError: more than one such node, an unsupported ``plugin_version`` or attribute value.
    """
    onnx_mod = require("onnx", purpose="reading ONNX models")
    nodes = [n for n in model.graph.node if n.op_type == PLUGIN_OP and n.domain in PLUGIN_DOMAINS]
    if not nodes:
        return None
    if len(nodes) > 1:
        raise ModelError(f"{str(path)!r} has {len(nodes)} {PLUGIN_OP} nodes; an exported detector has one")
    node = nodes[0]
    attrs = dict(_PLUGIN_DEFAULTS)
    version = "1"
    for a in node.attribute:
        value = onnx_mod.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        if a.name == "plugin_version":
            version = str(value)
        elif a.name in attrs:
            attrs[a.name] = value
    if version != "1":
        raise ModelError(f"{str(path)!r}: {PLUGIN_OP} plugin_version={version!r}; this runtime emulates '1' only")
    if len(node.input) < 2:
        raise ModelError(f"{str(path)!r}: {PLUGIN_OP} node {node.name!r} has inputs {list(node.input)}; needs 2 or 3")
    kwargs = {
        "score_threshold": float(attrs["score_threshold"]),
        "iou_threshold": float(attrs["iou_threshold"]),
        "max_output_boxes": int(attrs["max_output_boxes"]),
        "background_class": int(attrs["background_class"]),
        "score_activation": bool(attrs["score_activation"]),
        "class_agnostic": bool(attrs["class_agnostic"]),
        "box_coding": int(attrs["box_coding"]),
    }
    anchors = node.input[2] if len(node.input) > 2 and node.input[2] else None
    value = _constant_value(model, anchors) if anchors else None
    return PluginNode(boxes=node.input[0], scores=node.input[1], anchors=anchors, anchors_value=value, attrs=kwargs)


def cut_graph(model: onnx.ModelProto, outputs: Sequence[str]) -> None:
    """Make ``outputs`` the graph's outputs and drop every node not needed to compute them (in place).

    Used to run the part of an ``efficient`` graph before ``EfficientNMS_TRT``: the plugin node and anything
    after it go, so ONNX Runtime never sees an op it has no kernel for.
    """
    onnx_mod = require("onnx", purpose="reading ONNX models")
    graph = model.graph
    known = {v.name: v for v in list(graph.value_info) + list(graph.output) + list(graph.input)}
    needed = set(outputs)
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))
    keep.reverse()
    new_outputs = [known[n] if n in known else onnx_mod.helper.make_empty_tensor_value_info(n) for n in outputs]
    copies = [type(v)() for v in new_outputs]
    for c, v in zip(copies, new_outputs, strict=True):
        c.CopyFrom(v)
    kept_nodes = [type(n)() for n in keep]
    for c, n in zip(kept_nodes, keep, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.output[:]
    graph.output.extend(copies)
    # unused initializers stay: ORT drops them itself, and some may double as (old-IR) graph inputs
    domains = {n.domain for n in graph.node}
    stale = [o for o in model.opset_import if o.domain not in domains and o.domain not in ("", "ai.onnx")]
    for o in stale:
        model.opset_import.remove(o)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every name a node's subgraphs (If/Loop/Scan bodies) read: outer-scope values must be kept too."""
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                names.update(i for i in n.input if i)
                names |= _subgraph_inputs(n)
    return names


def _constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of ``name`` if it is an initializer or a Constant node's output."""
    onnx_mod = require("onnx", purpose="reading ONNX models")
    for init in model.graph.initializer:
        if init.name == name:
            return np.asarray(onnx_mod.numpy_helper.to_array(init))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and list(node.output) == [name]:
            for a in node.attribute:
                if a.name == "value":
                    return np.asarray(onnx_mod.numpy_helper.to_array(a.t))
    return None


def _precision_of(model: onnx.ModelProto, metadata: dict[str, str], path: Path) -> Precision:
    """The file's precision as `retinaedge.runtime.models.describe_onnx` reads it (``int8-mixed`` included).

    ``metadata`` is what ``model`` carries; kept for callers that already parsed both.
    """
    del metadata  # describe_onnx reads the model's own metadata_props
    return cast(Precision, describe_onnx(path, model=model, spec=_PLACEHOLDER_SPEC).precision)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
