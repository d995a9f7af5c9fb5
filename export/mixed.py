"""INT8 that passes its gate: per-unit sensitivity, then the fewest units kept in FP16/FP32 (``--mixed auto``).

A *unit* is a group of ONNX nodes of the FP32 pre-NMS graph named by its module scope (torch.onnx names a node
``/backbone/body/layer3/layer3.0/conv1/Conv``):

* ``block`` (the default): the stem, each ResNet stage (``layer1`` .. ``layer4``), each FPN level (``fpn.P3`` ..
  ``fpn.P7``: its lateral and output conv, or its extra stride-2 conv), and each head part (``head.cls_tower``,
  ``head.box_tower``, ``head.cls_logits``, ``head.box_deltas``; one unit covers that part at every level, as its
  weights are shared). 15 units for the R18 ``edge`` model.
* ``layer``: every node (each conv) on its own: ~80 units for ``edge`` (the head convs run once per level).

Sensitivity (`measure_sensitivity`). One ModelOpt PTQ of the whole graph gives the Q/DQ model and its scales. For
each unit two variants are derived from it by *bypassing* Q/DQ in front of nodes (`bypass_qdq`: the node reads
the FP32 tensor / FP32 weight again; the scales of every other node are unchanged): "only this unit quantised"
and "all but this unit quantised". Each runs in this process's ONNX Runtime on the held-out images (the
runtime's own letterbox preprocessing, `retinaedge.export.calib.load_calibration_set`) and is scored with
pycocotools AP and, on the raw ``cls_logits``/``box_deltas``, Polygraphy's ``Comparator`` against FP32. The
bypass is a *measurement* device only, never the shipped file.

Score: ``(AP_all_but - AP_ptq) + (AP_fp32 - AP_only)``, the AP that keeping the unit high gives back plus the
AP the unit loses alone: two estimates of the unit's share of PTQ's loss, both measured; ties by the raw
``cls_logits`` mean error of "only this unit".

Search (`greedy_keep_high`): units in descending score; the top 1, 2, ... are excluded from quantisation with
ModelOpt's own ``nodes_to_exclude`` (a real PTQ with the same calibration images, not edited Q/DQ) and scored on
the held-out split; the first set whose AP reaches ``gate * AP_fp32`` is kept. The kept units then run in FP16
(ModelOpt ``high_precision_dtype="fp16"``) unless FP16 itself loses AP there (measured), in which case FP32.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.onnxinfo import META_KEEP_HIGH

UnitGranularity = Literal["block", "layer"]
UNIT_GRANULARITIES: tuple[str, ...] = ("block", "layer")
HighDtype = Literal["fp16", "fp32"]
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})

Echo = Callable[[str], None]

_SKIP_SCOPES = frozenset({"inner", "body", "model", "net", "module"})
"""Wrapper scopes (the exporter's ``/inner/`` adapter, torchvision's ``body``) that name no unit."""


# ---- units --------------------------------------------------------------------------------------------------
def scope_of(node_name: str) -> tuple[str, ...]:
    """Module-path components of a torch.onnx node name, without the op suffix and empty parts.

    ``/backbone/body/layer3/layer3.0/conv1/Conv`` -> ``("backbone", "body", "layer3", "layer3.0", "conv1")``;
    a name without ``/`` (a pass-added node) -> ``()``.
    """
    if "/" not in node_name:
        return ()
    parts = [p for p in node_name.split("/") if p]
    return tuple(parts[:-1])


def unit_of(node_name: str, granularity: UnitGranularity = "block") -> str | None:
    """The unit a node belongs to, or None when its name carries no module scope.

    Args:
        node_name: an ONNX node name of the FP32 graph.
        granularity: ``block`` (stem / stage / FPN level / head part) or ``layer`` (the node's own module path).
    """
    scope = scope_of(node_name)
    if not scope:
        return None
    if granularity == "layer":
        return node_name.strip("/")
    for part in scope:
        if re.fullmatch(r"layer\d+", part):
            return part
    for i, part in enumerate(scope):
        m = re.fullmatch(r"(lateral|output)[._](\d+)", part)
        if m:
            return f"fpn.P{m.group(2)}"
        if part in ("lateral", "output") and i + 1 < len(scope) and scope[i + 1].isdigit():
            return f"fpn.P{scope[i + 1]}"
        m = re.fullmatch(r"extra[._](\d+)", part)
        if m:
            return f"fpn.P{6 + int(m.group(1))}"
        if part == "extra" and i + 1 < len(scope) and scope[i + 1].isdigit():
            return f"fpn.P{6 + int(scope[i + 1])}"
        base = re.sub(r"[._]\d+$", "", part)
        if base in ("cls_tower", "box_tower", "cls_logits", "box_deltas"):
            return f"head.{base}"
    named = [p for p in scope if p not in _SKIP_SCOPES]
    if not named:
        return None
    if named[0] == "backbone":
        return "stem"
    if named[0] == "fpn":
        return "fpn.topdown"  # the top-down Resize/Add between levels
    # a module called once per level is exported as cls, cls_1, ...: one unit (shared weights)
    return ".".join(re.sub(r"_\d+$", "", p) for p in named[:2])


@dataclass(frozen=True)
class Unit:
    """A group of FP32-graph nodes kept high (or quantised) together.

    Attributes:
        name: e.g. ``layer3``, ``fpn.P4``, ``head.cls_tower``.
        nodes: every FP32 node of the unit, graph order (what ``nodes_to_exclude`` and ``keep_high`` name).
        quantized: those of ``nodes`` whose inputs the full PTQ quantised (what the bypass acts on).
    """

    name: str
    nodes: tuple[str, ...]
    quantized: tuple[str, ...]


def quantized_nodes(qdq: onnx.ModelProto) -> list[str]:
    """Names of the non-Q/DQ nodes that read at least one DequantizeLinear output (graph order)."""
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in qdq.graph.node
            if n.op_type not in QDQ_OPS and n.name and any(i in dq_out for i in n.input)]


def find_units(pre_nms: onnx.ModelProto, qdq: onnx.ModelProto, granularity: UnitGranularity = "block") -> list[Unit]:
    """The units of a graph that PTQ quantised somewhere, in graph order.

    Args:
        pre_nms: the FP32 pre-NMS graph (node names as torch.onnx wrote them).
        qdq: its full ModelOpt PTQ.
        granularity: ``block`` or ``layer`` (see the module doc).

    Raises:
        InputError: an unknown granularity, or a graph whose quantised nodes carry no module scope.
    """
    if granularity not in UNIT_GRANULARITIES:
        raise InputError(f"unit granularity {granularity!r} is not supported; choose from {list(UNIT_GRANULARITIES)}")
    quant = set(quantized_nodes(qdq))
    members: dict[str, list[str]] = {}
    for n in pre_nms.graph.node:
        u = unit_of(n.name, granularity) if n.name else None
        if u is not None:
            members.setdefault(u, []).append(n.name)
    units = [Unit(u, tuple(ns), tuple(x for x in ns if x in quant)) for u, ns in members.items()]
    units = [u for u in units if u.quantized]
    if not units:
        raise InputError(f"no quantised node of the graph carries a module scope ({len(quant)} quantised nodes); "
                         "export with the torchscript exporter (opset 17), whose node names hold the scope")
    return units


# ---- measurement variants -----------------------------------------------------------------------------------
def bypass_qdq(qdq: onnx.ModelProto, fp32: onnx.ModelProto, nodes: Sequence[str] | set[str]) -> onnx.ModelProto:
    """A copy of ``qdq`` where ``nodes`` read their FP32 inputs again (measurement only).

    Each input of such a node that comes from a DequantizeLinear is rewired to what the same node reads in
    ``fp32`` (the activation before its QuantizeLinear, or the FP32 weight/bias initializer, copied in when
    the Q/DQ graph holds only its INT8 form). Q/DQ nodes left without a consumer are dropped. The other nodes'
    Q/DQ and scales are untouched, so the variant isolates the chosen nodes' quantisation.

    Args:
        qdq: a Q/DQ model (ModelOpt PTQ of ``fp32``).
        fp32: the FP32 model it was made from (same node names).
        nodes: names of nodes to run unquantised.
    """
    want = set(nodes)
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    fp32_nodes = {n.name: n for n in fp32.graph.node if n.name}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    have = {i.name for i in graph.initializer} | {i.name for i in graph.input} | set(producer)
    for node in graph.node:
        if node.name not in want or node.op_type in QDQ_OPS:
            continue
        orig = fp32_nodes.get(node.name)
        for idx, name in enumerate(node.input):
            src = producer.get(name)
            if src is None or src.op_type != "DequantizeLinear":
                continue
            if orig is not None and idx < len(orig.input) and orig.input[idx]:
                target = orig.input[idx]
                if target not in have and target in fp32_inits:
                    graph.initializer.append(fp32_inits[target])
                    have.add(target)
                if target in have:
                    node.input[idx] = target
                    continue
            q = producer.get(src.input[0])  # no FP32 twin: take the tensor before the Q
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[idx] = q.input[0]
    _drop_dead(model)
    return model


def _drop_dead(model: onnx.ModelProto) -> None:
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | outputs
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


# ---- scoring ------------------------------------------------------------------------------------------------
def raw_error(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
              names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Raw-output error of ``candidate`` against ``reference`` through Polygraphy's ``Comparator``.

    Args:
        reference: FP32 outputs by name, e.g. ``cls_logits`` (B, N, K).
        candidate: the same outputs of the variant.
        names: the outputs to compare.

    Returns:
        Per output: ``max_abs``, ``mean_abs``, ``median_abs`` (Polygraphy's ``max_absdiff`` etc.).
    """
    from retinaedge.runtime._lazy import require

    comparator = require("polygraphy.comparator", purpose="raw-output comparison")
    logger = require("polygraphy.logger", purpose="raw-output comparison").G_LOGGER
    results = comparator.RunResults([
        ("candidate", [comparator.IterationResult({n: np.asarray(candidate[n], np.float32) for n in names},
                                                  runner_name="candidate")]),
        ("reference", [comparator.IterationResult({n: np.asarray(reference[n], np.float32) for n in names},
                                                  runner_name="reference")]),
    ])
    make = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple
    with logger.verbosity(logger.CRITICAL):
        acc = comparator.Comparator.compare_accuracy(results, compare_func=make(atol=1e-3, rtol=1e-3))
    it = acc[0][("candidate", "reference")][0]  # AccuracyResults: one entry per run, then per iteration
    return {n: {"max_abs": float(it[n].max_absdiff), "mean_abs": float(it[n].mean_absdiff),
                "median_abs": float(it[n].median_absdiff)} for n in names}


@dataclass(frozen=True)
class HeldOut:
    """The held-out split the search is scored on.

    Attributes:
        batch: (N, 3, H, W) preprocessed images (the runtime's letterbox).
        metas: one `Letterbox` per image.
        image_ids: COCO ids of the images.
        gt: the pycocotools ground truth.
    """

    batch: np.ndarray
    metas: Sequence[Any]
    image_ids: Sequence[int]
    gt: Any


class Scorer:
    """Runs pre-NMS models on the held-out split in this process's ONNX Runtime: AP + raw outputs.

    Args:
        spec: the detector spec.
        heldout: the held-out split.
    """

    def __init__(self, spec: Any, heldout: HeldOut) -> None:
        self.spec = spec
        self.heldout = heldout
        self.calls = 0
        self.seconds = 0.0

    def run(self, model: onnx.ModelProto) -> tuple[float, dict[str, np.ndarray]]:
        """(AP, raw outputs ``cls_logits`` (B, N, K) / ``box_deltas`` (B, N, 4)) of a pre-NMS model."""
        from retinaedge.export.pipeline import detect_pre_nms, run_pre_nms
        from retinaedge.runtime.cocoeval import coco_evaluate

        t0 = time.perf_counter()
        h = self.heldout
        outputs = run_pre_nms(model, h.batch, input_name=self.spec.io.input)
        dets = detect_pre_nms(outputs, self.spec, h.metas)
        metrics = coco_evaluate(h.gt, dict(zip(h.image_ids, dets, strict=True)), self.spec.category_ids,
                                self.spec.class_names)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return float(metrics["AP"]), outputs


@dataclass(frozen=True)
class UnitSensitivity:
    """One unit's measured INT8 sensitivity.

    Attributes:
        unit: the unit's name.
        nodes: FP32 nodes in it.
        quantized: of those, quantised by the full PTQ.
        ap_only: AP with only this unit quantised.
        ap_all_but: AP with every other unit quantised.
        delta_only: ``AP_fp32 - ap_only`` (what the unit loses alone).
        gain_all_but: ``ap_all_but - AP_ptq`` (what keeping it high gives back).
        score: ``delta_only + gain_all_but`` (the ranking key).
        raw_only: Polygraphy error of "only this unit" vs FP32, per output.
        raw_all_but: the same for "all but this unit".
    """

    unit: str
    nodes: int
    quantized: int
    ap_only: float
    ap_all_but: float
    delta_only: float
    gain_all_but: float
    score: float
    raw_only: dict[str, dict[str, float]]
    raw_all_but: dict[str, dict[str, float]]


def rank(sens: Sequence[UnitSensitivity], logits: str = "cls_logits") -> list[UnitSensitivity]:
    """Most sensitive first: by ``score``, then by the raw ``logits`` mean error of "only this unit"."""
    def key(s: UnitSensitivity) -> tuple[float, float]:
        raw = s.raw_only.get(logits, {}).get("mean_abs", 0.0)
        return (-round(s.score, 9), -raw)

    return sorted(sens, key=key)


def progress_line(done: int, total: int, started: float, label: str, width: int = 20) -> str:
    """``[#####...............]  5/20  1m05s left  <label>``: the progress bar every pass prints."""
    frac = done / total if total else 1.0
    filled = round(width * frac)
    elapsed = time.perf_counter() - started
    left = elapsed / done * (total - done) if done else 0.0
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] {done:>3}/{total} {int(left // 60)}m{int(left % 60):02d}s left  {label}"


def measure_sensitivity(fp32: onnx.ModelProto, qdq: onnx.ModelProto, units: Sequence[Unit], scorer: Scorer, *,
                        ap_fp32: float, ap_ptq: float, ref_outputs: Mapping[str, np.ndarray],
                        say: Echo | None = None) -> list[UnitSensitivity]:
    """Measure every unit's sensitivity (two variants each, one ORT pass per variant, all in this process).

    Args:
        fp32: the FP32 pre-NMS graph.
        qdq: its full PTQ.
        units: from `find_units`.
        scorer: runs the variants on the held-out split.
        ap_fp32: held-out AP of ``fp32``.
        ap_ptq: held-out AP of ``qdq``.
        ref_outputs: ``fp32``'s raw outputs on the held-out batch.
        say: progress sink (one bar line per variant).

    Returns:
        One `UnitSensitivity` per unit, in ``units`` order.
    """
    names = [scorer.spec.io.cls_logits, scorer.spec.io.box_deltas]
    every = {n for u in units for n in u.quantized}
    out: list[UnitSensitivity] = []
    t0 = time.perf_counter()
    total = 2 * len(units)
    for i, u in enumerate(units):
        own = set(u.quantized)
        ap_only, o_only = scorer.run(bypass_qdq(qdq, fp32, every - own))
        ap_all_but, o_all_but = scorer.run(bypass_qdq(qdq, fp32, own))
        delta_only, gain = ap_fp32 - ap_only, ap_all_but - ap_ptq
        out.append(UnitSensitivity(
            unit=u.name, nodes=len(u.nodes), quantized=len(u.quantized), ap_only=ap_only, ap_all_but=ap_all_but,
            delta_only=delta_only, gain_all_but=gain, score=delta_only + gain,
            raw_only=raw_error(ref_outputs, o_only, names), raw_all_but=raw_error(ref_outputs, o_all_but, names),
        ))
        if say is not None:
            say("sensitivity " + progress_line(2 * (i + 1), total, t0,
                                               f"{u.name}: only {ap_only:.4f}, all-but {ap_all_but:.4f}"))
    return out


# ---- search -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchStep:
    """One candidate of the greedy search.

    Attributes:
        k: units kept high.
        units: their names, most sensitive first.
        ap: held-out AP of the candidate.
        retained: ``ap / AP_fp32``.
        passed: ``retained >= gate``.
    """

    k: int
    units: tuple[str, ...]
    ap: float
    retained: float
    passed: bool


@dataclass(frozen=True)
class SearchResult:
    """What `greedy_keep_high` found.

    Attributes:
        chosen: the first passing set (most sensitive first), or None when no candidate passed.
        steps: every candidate evaluated, in order.
    """

    chosen: tuple[str, ...] | None
    steps: tuple[SearchStep, ...] = field(default_factory=tuple)


def greedy_keep_high(ranked: Sequence[str], evaluate: Callable[[tuple[str, ...]], float], *, ap_fp32: float,
                     gate: float, max_units: int | None = None, start: int = 1,
                     say: Echo | None = None) -> SearchResult:
    """Keep the top 1, 2, ... units high until the held-out AP reaches ``gate * ap_fp32``; stop at the first.

    Args:
        ranked: unit names, most sensitive first.
        evaluate: candidate set -> held-out AP (the pipeline: a real ModelOpt PTQ with those units excluded).
        ap_fp32: the FP32 reference AP on the same split.
        gate: the minimum fraction of ``ap_fp32`` to keep (e.g. 0.99).
        max_units: try at most this many units (default: all).
        start: the smallest set size tried (0 tries plain PTQ first).
        say: progress sink.

    Returns:
        The `SearchResult`; ``chosen`` is None when no candidate up to ``max_units`` passed.

    Raises:
        InputError: a gate outside (0, 1] or a non-positive reference AP.
    """
    if not 0 < gate <= 1:
        raise InputError(f"gate {gate!r} must be a fraction in (0, 1], e.g. 0.99")
    if ap_fp32 <= 0:
        raise InputError(f"the FP32 reference AP is {ap_fp32}; the gate needs a trained model")
    limit = len(ranked) if max_units is None else min(max_units, len(ranked))
    steps: list[SearchStep] = []
    t0 = time.perf_counter()
    for k in range(max(0, start), limit + 1):
        units = tuple(ranked[:k])
        ap = evaluate(units)
        retained = ap / ap_fp32
        step = SearchStep(k, units, ap, retained, retained >= gate)
        steps.append(step)
        if say is not None:
            say("search " + progress_line(k - max(0, start) + 1, limit - max(0, start) + 1, t0,
                                          f"{k} high: AP {ap:.4f} ({100 * retained:.2f}%)"
                                          + (" PASS" if step.passed else "")))
        if step.passed:
            return SearchResult(units, tuple(steps))
    return SearchResult(None, tuple(steps))


def keep_high_record(units: Sequence[Unit], chosen: Sequence[str], dtype: HighDtype,
                     fp32_names: set[str] | None = None) -> dict[str, Any]:
    """The ``retinaedge.keep_high`` object: ``{"nodes": [FP32 node names], "dtype": "fp16"|"fp32"}``.

    Args:
        units: all units.
        chosen: the names of the kept ones.
        dtype: their precision.
        fp32_names: node names of the final FP32 file; nodes not in it (folded by the tail's sanitize) are left out.
    """
    if dtype not in ("fp16", "fp32"):
        raise InputError(f"keep-high dtype {dtype!r} is not supported; choose 'fp16' or 'fp32'")
    by_name = {u.name: u for u in units}
    missing = [c for c in chosen if c not in by_name]
    if missing:
        raise InputError(f"units {missing} are not units of this graph; known: {sorted(by_name)}")
    nodes = [n for c in chosen for n in by_name[c].nodes if fp32_names is None or n in fp32_names]
    return {"nodes": nodes, "dtype": dtype}


def set_keep_high(model: onnx.ModelProto, record: Mapping[str, Any]) -> onnx.ModelProto:
    """Write ``record`` as the ``retinaedge.keep_high`` metadata (replacing an older entry), in place."""
    for p in list(model.metadata_props):
        if p.key == META_KEEP_HIGH:
            model.metadata_props.remove(p)
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEEP_HIGH, json.dumps({"nodes": list(record["nodes"]), "dtype": record["dtype"]})
    return model


# ---- report -------------------------------------------------------------------------------------------------
def write_sensitivity(path: Path, payload: Mapping[str, Any]) -> None:
    """``sensitivity.json`` (atomically)."""
    from retinaedge.runtime.io import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def plot_sensitivity(path: Path, sens: Sequence[UnitSensitivity], curve: Sequence[tuple[int, float]],
                     estimate: Sequence[tuple[int, float]] = (), *, ap_fp32: float, gate: float,
                     chosen_k: int | None, title: str = "") -> None:
    """``sensitivity.png``: per-unit ΔAP (left) and AP against the number of units kept high (right).

    Args:
        sens: the units, most sensitive first.
        curve: ``(k, AP)`` points of the search (real ModelOpt PTQ with the top-k units excluded; k = 0 is PTQ).
        estimate: ``(k, AP)`` of the same sets estimated by `bypass_qdq` (drawn dashed), past the search too.
        ap_fp32: the FP32 reference (drawn as a line), and ``gate * ap_fp32`` (dashed).
        chosen_k: the chosen set's size (marked), or None.
    """
    from retinaedge.runtime._lazy import require
    from retinaedge.runtime.io import atomic_write_bytes

    matplotlib = require("matplotlib", purpose="the sensitivity plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", purpose="the sensitivity plot")
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    names = [s.unit for s in sens]
    x = np.arange(len(names))
    a.bar(x - 0.2, [s.delta_only for s in sens], 0.4, label="ΔAP, only this unit INT8 (AP_fp32 - AP)")
    a.bar(x + 0.2, [s.gain_all_but for s in sens], 0.4, label="AP regained, all but this unit INT8")
    a.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    a.set_ylabel("AP")
    a.set_title("per-unit INT8 sensitivity (held-out)")
    a.axhline(0, color="k", lw=0.5)
    a.legend(fontsize=7)
    ks = [k for k, _ in curve]
    if estimate:
        b.plot([k for k, _ in estimate], [ap for _, ap in estimate], "s--", color="0.6", ms=4,
               label="estimate (Q/DQ bypassed in the PTQ model)")
    b.plot(ks, [ap for _, ap in curve], "o-", label="ModelOpt PTQ, top-k units excluded")
    b.axhline(ap_fp32, color="g", lw=1, label=f"FP32 {ap_fp32:.4f}")
    b.axhline(gate * ap_fp32, color="r", ls="--", lw=1, label=f"gate {100 * gate:.1f}%")
    if chosen_k is not None:
        b.axvline(chosen_k, color="0.5", ls=":", label=f"chosen: {chosen_k} unit(s)")
    b.set_xlabel("units kept high (most sensitive first) - fewer is faster")
    b.set_ylabel("held-out AP")
    b.set_title(title or "accuracy / speed trade-off")
    b.legend(fontsize=7)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def sensitivity_rows(sens: Sequence[UnitSensitivity]) -> list[dict[str, Any]]:
    """JSON rows of `UnitSensitivity` (most sensitive first as given)."""
    return [asdict(s) for s in sens]
