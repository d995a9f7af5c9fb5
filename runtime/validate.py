"""Accuracy-vs-precision validation: every model on the same original images, one row each, against a gate.

Model files are found (`find_models`: directories expanded into their .onnx/.engine files) and opened
(`load_models`: engines that cannot run here are listed as skipped). Then `validate` runs four stages:

* **run** (`run_model`): `retinaedge.runtime.runner.Detector` on the ORIGINAL validation images (letterbox
  inside, boxes mapped back to original pixels), every call timed (per-image latency = call time / images in
  the call; p50/p99), batch consistency checked (B copies of one image give B identical detection sets, and a
  mixed batch gives each image's batch-1 result), detections scored with pycocotools
  (`retinaedge.runtime.cocoeval`);
* **compare** (`compare_to_reference`): raw head outputs against the reference's through Polygraphy
  (`retinaedge.runtime.compare.compare_raw`, reference second) when raw runners are given, and detections
  matched with the reference's by IoU and class (`match_detections`), pooled over images;
* **gate** (`gate_row`, a pure function): ``retained = AP / AP_ref`` against the gate;
* **report** (`write_report`, the only code that draws or plots): ``report.json``, ``report.md``, the PR curves
  and the sample sheets.

Gate: a row passes when ``retained >= gate[precision]`` and its batch consistency is not violated. FP32 rows
use ``gate.get("fp32", 0.999)``: an FP32 export must keep the reference's accuracy too. A precision variant named
by its file (``model.int8-mixed.onnx``: `PRECISION_VARIANTS`) is its own row and uses its base precision's gate
value (``int8``) unless the gate names it. The reference row passes by definition. When the reference AP is 0 the
ratio is undefined: ``retained`` is null and the row fails (the gate needs a trained model).

INT8 Q/DQ ONNX built for TensorRT (symmetric INT8, ``retinaedge.target`` = ``tensorrt``) runs on ORT only to check
its accuracy: ORT executes it correctly but slowly, so its latency is marked "not representative of
TensorRT" (docs/TENSORRT.md).

Outputs in ``report_dir``: ``report.json`` (keys of docs/ARCHITECTURE.md, plus extra keys), ``report.md``,
``pr_curves.png`` (precision-recall at IoU 0.5 per model, from pycocotools' accumulate arrays) and
``samples_<label>.png`` (a contact sheet per model: the ground truth in white, its detections over it).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

import numpy as np

from retinaedge.runtime._lazy import require
from retinaedge.runtime.cocoeval import align_categories, coco_evaluate, image_file, image_size, load_coco
from retinaedge.runtime.compare import Agreement, compare_raw, detections_consistent, match_detections
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.draw import contact_sheet, draw_detections, draw_ground_truth
from retinaedge.runtime.errors import InputError, RetinaEdgeError
from retinaedge.runtime.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from retinaedge.runtime.models import ENGINE_SUFFIXES, ONNX_SUFFIXES, load_runner
from retinaedge.runtime.preprocess import load_image, preprocess_batch
from retinaedge.runtime.runner import Detector, Runner
from retinaedge.runtime.spec import DetectorSpec

MODEL_SUFFIXES: tuple[str, ...] = (*ONNX_SUFFIXES, *ENGINE_SUFFIXES)

DEFAULT_GATE: Mapping[str, float] = {"fp16": 0.999, "int8": 0.99}
FP32_GATE = 0.999
"""Used for FP32 rows unless the gate names ``fp32``."""

PRECISION_VARIANTS: Mapping[str, str] = {"int8-mixed": "int8"}
"""Precisions a model file names (``model.<variant>.onnx``) beyond its runner's own, each with its base precision:
a variant gets its own report row and the base precision's gate value unless the gate names the variant."""

GATE_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", *PRECISION_VARIANTS)
"""The keys a gate may name."""

TRT_INT8_NOTE = "latency not representative of TensorRT (TensorRT Q/DQ INT8 ONNX run on ORT CPU: accuracy only)"

ROW_KEYS = ("model", "backend", "precision", "nms", "AP", "AP50", "AP75", "retained", "latency_ms_p50",
            "latency_ms_p99", "max_abs_diff", "det_agreement", "batch_consistent", "pass")
"""The stable keys of each ``report.json`` row (docs/ARCHITECTURE.md); rows carry extra keys after these."""


@dataclass(frozen=True)
class Row:
    """One validated model.

    Attributes:
        model: the model's path (or the runner's name when it has no path).
        label: short unique label (``<backend>-<file stem>``) used for plots and sample sheets.
        backend: ``torch`` | ``ort`` | ``trt``.
        precision: ``fp32`` | ``fp16`` | ``int8`` | ``int8-mixed`` (`row_precision`).
        nms: the spec's NMS mode.
        metrics: `coco_evaluate`'s 12 stats (and per-class AP).
        retained: ``AP / AP_ref``, None when the reference AP is 0.
        delta_ap: ``AP - AP_ref``.
        latency_ms_p50: median per-image latency (detector call time / images per call).
        latency_ms_p99: 99th percentile of the same.
        max_abs_diff: largest raw-output abs error vs the reference (Polygraphy), None when not compared.
        raw: `RawComparison.to_dict()` or None.
        det_agreement: IoU-matched detection agreement with the reference, None for the reference itself.
        batch_consistent: the batch-consistency verdict, None when batches > 1 cannot be run.
        passed: the gate verdict.
        is_reference: this row is the reference.
        notes: one-line remarks (latency caveats, why a check was skipped, why the row failed).
    """

    model: str
    label: str
    backend: str
    precision: str
    nms: str
    metrics: Mapping[str, Any]
    retained: float | None
    delta_ap: float
    latency_ms_p50: float
    latency_ms_p99: float
    max_abs_diff: float | None
    raw: Mapping[str, Any] | None
    det_agreement: float | None
    batch_consistent: bool | None
    passed: bool
    is_reference: bool = False
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The docs/ARCHITECTURE.md keys first, then extras."""
        m = self.metrics
        d: dict[str, Any] = {
            "model": self.model, "backend": self.backend, "precision": self.precision, "nms": self.nms,
            "AP": float(m["AP"]), "AP50": float(m["AP50"]), "AP75": float(m["AP75"]), "retained": self.retained,
            "latency_ms_p50": self.latency_ms_p50, "latency_ms_p99": self.latency_ms_p99,
            "max_abs_diff": self.max_abs_diff, "det_agreement": self.det_agreement,
            "batch_consistent": self.batch_consistent, "pass": self.passed,
        }
        d.update({
            "label": self.label, "delta_AP": self.delta_ap, "is_reference": self.is_reference,
            "notes": list(self.notes), "raw": self.raw,
            "metrics": {k: v for k, v in m.items() if k != "pr_curves"},
        })
        return d


@dataclass(frozen=True)
class Report:
    """The validation result; ``passed`` is False when any row fails the gate.

    Attributes:
        gate: minimum ``retained`` per precision.
        reference: the reference's label, ``torch-fp32`` or e.g. ``ort-fp32``.
        rows: one per model, the reference first.
        skipped: ``{"model": path, "reason": one line}`` for models that could not run here (engines without
            TensorRT/GPU).
        images: number of images evaluated.
        report_dir: where the files were written.
    """

    gate: Mapping[str, float]
    reference: str
    rows: tuple[Row, ...]
    skipped: tuple[Mapping[str, str], ...] = ()
    images: int = 0
    report_dir: str = ""
    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"gate": dict(self.gate), "reference": self.reference, "rows": [r.to_dict() for r in self.rows],
                "skipped": [dict(s) for s in self.skipped], "images": self.images, "passed": self.passed,
                "files": dict(self.files)}

    def table(self) -> list[list[str]]:
        """Header + one line per row, formatted for printing (CLI and report.md share it)."""
        head = ["model", "backend", "prec", "nms", "AP", "AP50", "ΔAP", "retained", "p50 ms", "p99 ms",
                "raw max abs err", "det agree", "batch", "gate"]
        lines = [head]
        for r in self.rows:
            gate = "REF" if r.is_reference else ("PASS" if r.passed else "FAIL")
            lat_mark = "*" if TRT_INT8_NOTE in r.notes else ""
            lines.append([
                Path(r.model).name, r.backend, r.precision, r.nms, f"{float(r.metrics['AP']):.4f}",
                f"{float(r.metrics['AP50']):.4f}", f"{r.delta_ap:+.4f}",
                "-" if r.retained is None else f"{100 * r.retained:.2f}%",
                f"{r.latency_ms_p50:.1f}{lat_mark}", f"{r.latency_ms_p99:.1f}{lat_mark}",
                "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}",
                "-" if r.det_agreement is None else f"{r.det_agreement:.3f}",
                "-" if r.batch_consistent is None else ("yes" if r.batch_consistent else "NO"), gate,
            ])
        return lines

    def to_markdown(self) -> str:
        t = self.table()
        md = ["# retinaedge validation report", "",
              f"Reference: **{self.reference}**. Gate (minimum % of the reference AP retained): "
              + ", ".join(f"{k} ≥ {100 * v:.1f}%" for k, v in sorted(self.gate.items()))
              + f". Images: {self.images}. Verdict: **{'PASS' if self.passed else 'FAIL'}**.", "",
              "| " + " | ".join(t[0]) + " |", "|" + "---|" * len(t[0])]
        md += ["| " + " | ".join(line) + " |" for line in t[1:]]
        md += ["", "Latency is per image (detector call time / images per call), this machine, this run. "
                   "`*`: not representative of TensorRT (Q/DQ INT8 ONNX run on ORT for accuracy only).",
               "Raw-output error is against the reference via Polygraphy's Comparator (reference second); "
               "detections are matched by IoU and class, never by index.", ""]
        for r in self.rows:
            details = []
            if r.raw is not None:
                for name, o in r.raw["outputs"].items():
                    details.append(
                        f"`{name}`: max {o['max_abs']:.3e}, mean {o['mean_abs']:.3e}, median {o['median_abs']:.3e}, "
                        f"p99 {o['p99_abs']:.3e}; minimum passing atol {o['min_atol']:.3e} / rtol {o['min_rtol']:.3e}"
                    )
            details += list(r.notes)
            if details:
                md.append(f"- **{r.label}**: " + "; ".join(details))
        if self.skipped:
            md += ["", "Skipped:"] + [f"- {s['model']}: {s['reason']}" for s in self.skipped]
        if self.files:
            md += ["", "Files: " + ", ".join(f"[{k}]({Path(v).name})" for k, v in self.files.items())]
        return "\n".join(md) + "\n"


class ExportNmsRunner(Runner):
    """Raw heads from another runner + the exported graph's NMS (the numpy EfficientNMS_TRT emulation).

    Used for the torch FP32 reference: torch's own evaluation NMS (torchvision ``batched_nms`` on boxes clipped to
    the input) differs from EfficientNMS (no clip before NMS, (anchor, class) candidate pool), and that difference
    alone moves AP by a few tenths of a percent — more than the FP16 gate. With this wrapper the reference and
    every exported model share one NMS, so ΔAP measures the precision change alone.

    Args:
        raw: a runner returning ``cls_logits`` (B, N, K) and ``box_deltas`` (B, N, 4) (e.g. ``TorchRunner(raw=True)``).
        name: report name; defaults to ``raw.name``.
    """

    def __init__(self, *, raw: Runner, name: str | None = None) -> None:
        super().__init__()
        self.raw = raw
        self.spec = raw.spec
        self.backend = raw.backend
        self.precision = raw.precision
        self.name = name or raw.name
        self.source = raw.source
        self.target = raw.target

    def activate_impl(self) -> None:
        self.raw.activate()

    def deactivate_impl(self) -> None:
        self.raw.deactivate()

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from retinaedge.runtime.postprocess import raw_to_detection_outputs

        out = self.raw.infer(batch)
        io = self.spec.io
        return raw_to_detection_outputs(out[io.cls_logits], out[io.box_deltas], self.spec)


@dataclass
class _Evaluated:
    """What running one model on the images gave (the run stage's output)."""

    runner: Runner
    detections: dict[int, Detections]
    metrics: dict[str, Any]
    latencies_ms: list[float]
    batch_consistent: bool | None
    notes: list[str]


@dataclass(frozen=True)
class Comparison:
    """One model against the reference (the compare stage's output).

    Attributes:
        raw: `RawComparison.to_dict()` of the raw head outputs, or None when not compared.
        det_agreement: IoU-matched detection agreement, pooled over images; None for the reference itself.
        notes: why a comparison was not made.
    """

    raw: Mapping[str, Any] | None
    det_agreement: float | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedModels:
    """Model files opened for validation (`load_models`).

    Attributes:
        runners: one detection runner per model that can run here.
        raw_runners: per runner, its raw-head twin (ONNX) or None (engines).
        skipped: ``{"model": path, "reason": one line}`` for engines that cannot run here.
    """

    runners: tuple[Runner, ...]
    raw_runners: tuple[Runner | None, ...]
    skipped: tuple[Mapping[str, str], ...]


def find_models(entries: Sequence[str | Path]) -> list[str]:
    """Expand directories into their .onnx and engine files (sorted); keep files as given.

    Raises:
        InputError: an entry that does not exist, or no model at all.
    """
    found: list[str] = []
    for entry in entries:
        p = Path(entry)
        if p.is_dir():
            found += [str(f) for f in sorted(p.iterdir()) if f.suffix in MODEL_SUFFIXES and f.is_file()]
        elif p.is_file():
            found.append(str(p))
        else:
            raise InputError(f"--models entry {str(entry)!r} does not exist; pass model files or a directory of them")
    if not found:
        raise InputError(f"no .onnx or .engine files in {[str(e) for e in entries]}; run retinaedge export/build "
                         "first")
    return found


def is_engine(path: str | Path) -> bool:
    """Whether a model file is a TensorRT engine (by suffix), not an ONNX file."""
    return str(path).endswith(ENGINE_SUFFIXES)


def load_models(paths: Sequence[str | Path], *, threads: int | None = None,
                on_skip: Callable[[str, str], None] | None = None) -> LoadedModels:
    """Open each model file with its runner (and, for ONNX, a raw-head twin for the Polygraphy comparison).

    Engines need TensorRT and a GPU: each is activated once here, and one that cannot run is listed as skipped
    (``on_skip(path, reason)`` is called) instead of failing the whole validation. An ONNX file that cannot be
    opened is an error.

    Args:
        paths: model files (`find_models`).
        threads: ONNX Runtime intra-op threads for ONNX files (None: ORT's default).
        on_skip: called with the path and the one-line reason of each skipped engine.

    Raises:
        RetinaEdgeError: an ONNX file cannot be opened.
    """
    runners: list[Runner] = []
    raws: list[Runner | None] = []
    skipped: list[Mapping[str, str]] = []
    for path in map(str, paths):
        engine = is_engine(path)
        kwargs: dict[str, Any] = {} if engine or not threads else {"threads": threads}
        try:
            runner = load_runner(path, **kwargs)
            if engine:  # engines need TensorRT + a GPU here: find out now, list them as skipped otherwise
                runner.activate()
                runner.deactivate()
        except RetinaEdgeError as e:
            if not engine:
                raise
            skipped.append({"model": path, "reason": str(e)})
            if on_skip is not None:
                on_skip(path, str(e))
            continue
        runners.append(runner)
        raws.append(None if engine else load_runner(path, raw=True, **kwargs))
    return LoadedModels(runners=tuple(runners), raw_runners=tuple(raws), skipped=tuple(skipped))


def parse_gate(text: str) -> dict[str, float]:
    """Parse ``fp16=0.999,int8=0.99`` (fractions, or percentages like ``int8=99``)."""
    gate: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not sep or key not in GATE_PRECISIONS or not 0 < v <= 100:
            raise InputError(f"gate entry {part!r} is not PRECISION=FRACTION with PRECISION in "
                             f"{list(GATE_PRECISIONS)}; e.g. --gate fp16=0.999,int8=0.99")
        gate[key] = v / 100 if v > 1 else v
    return gate


def row_precision(runner: Runner) -> str:
    """The precision a report row shows: the runner's, or the variant its file names (`PRECISION_VARIANTS`).

    ``model.int8-mixed.onnx`` runs as INT8 but is its own row, ``int8-mixed``; ``model.int8-cpu.onnx`` stays
    ``int8`` (its target, not its precision, differs).
    """
    precision = str(runner.precision)
    name = Path(_runner_path(runner)).name
    for variant, base in PRECISION_VARIANTS.items():
        if precision == variant or (precision == base and any(name.endswith(f".{variant}{suffix}")
                                                              for suffix in MODEL_SUFFIXES)):
            return variant
    return precision


def gate_threshold(precision: str, gate: Mapping[str, float]) -> float:
    """The minimum ``retained`` for a precision: the gate's own value, a variant's base value, `FP32_GATE` for FP32,
    else 1.0 (a precision the gate does not name must keep all of the reference's AP)."""
    if precision in gate:
        return gate[precision]
    base = PRECISION_VARIANTS.get(precision, precision)
    return gate.get(base, FP32_GATE if base == "fp32" else 1.0)


def gate_row(*, precision: str, retained: float | None, batch_consistent: bool | None, is_reference: bool,
             gate: Mapping[str, float]) -> tuple[bool, tuple[str, ...]]:
    """The gate verdict of one row, and the notes that explain a failure (a pure function).

    A row passes when ``retained >= gate_threshold(precision, gate)`` and its batch consistency is not violated;
    the reference passes unless its batches are inconsistent; ``retained`` None (reference AP 0) fails.
    """
    if is_reference:
        return batch_consistent is not False, ()
    if retained is None:
        return False, ("reference AP is 0: the gate needs a trained model",)
    threshold = gate_threshold(precision, gate)
    if retained < threshold:
        return False, (f"retained {100 * retained:.2f}% < gate {100 * threshold:.2f}% for {precision}",)
    return batch_consistent is not False, ()


def _runner_path(runner: Runner) -> str:
    return runner.source or runner.name


def _label(runner: Runner, taken: set[str]) -> str:
    stem = Path(_runner_path(runner)).name
    for suffix in (*MODEL_SUFFIXES, ".pt"):
        stem = stem.removesuffix(suffix)
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{runner.backend}-{stem}")
    label, n = base, 2
    while label in taken:
        label, n = f"{base}-{n}", n + 1
    taken.add(label)
    return label


IMAGE_CACHE_BYTES = 1 << 30
"""Decoded validation images kept in memory between passes (1 GiB); the rest are decoded again on use."""


class ValImages(Sequence[np.ndarray]):
    """The validation images in image-id order: decoded once up front, kept in memory up to a byte budget.

    validate reads every image once per model, so a small set is decoded once and held; a large one (COCO's
    5,000 val images are ~4.6 GB decoded) keeps its first images up to ``cache_bytes`` and decodes the rest again
    on each use instead of holding them all, which a Jetson's shared 8 GB could not.

    Args:
        files: per image, its path and its annotated ``(width, height)`` (or None).
        cache_bytes: decoded bytes to hold.

    Raises:
        InputError: an image cannot be read (checked for every image here, before any model runs).
    """

    def __init__(self, files: Sequence[tuple[Path, tuple[int, int] | None]], *, cache_bytes: int) -> None:
        self._files = list(files)
        self._budget = cache_bytes
        self._cache: dict[int, np.ndarray] = {}
        self._held = 0
        self.decodes = 0
        for i in range(len(self._files)):
            self[i]

    def __len__(self) -> int:
        return len(self._files)

    @property
    def held_bytes(self) -> int:
        """Bytes of decoded images held now."""
        return self._held

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        index %= len(self)
        image = self._cache.get(index)
        if image is None:
            path, size = self._files[index]
            image = load_image(path, size=size)
            self.decodes += 1
            if self._held + image.nbytes <= self._budget:  # a fixed set, not LRU: passes are sequential
                self._cache[index] = image
                self._held += image.nbytes
        return image


def _load_images(gt: Any, image_dir: Path, max_images: int | None, cache_bytes: int) -> tuple[list[int], ValImages]:
    ids = sorted(int(i) for i in gt.getImgIds())
    if max_images is not None:
        ids = ids[:max_images]
    if not ids:
        raise InputError("the annotation file lists no images; validate needs a non-empty val set")
    files: list[tuple[Path, tuple[int, int] | None]] = []
    for i in ids:
        name = gt.imgs[i].get("file_name")
        if not name:
            raise InputError(f"image id {i} has no file_name in the annotation file")
        files.append((image_file(image_dir, name), image_size(gt.imgs[i])))  # whole floats are ints (load_coco)
    return ids, ValImages(files, cache_bytes=cache_bytes)


def _batch_consistency(detector: Detector, images: Sequence[np.ndarray], singles: Sequence[Detections],
                       size: int) -> tuple[bool | None, str | None]:
    """B copies of image 0 -> B identical results equal to its batch-1 result; a mixed batch -> each image's
    batch-1 result. Returns (verdict, note)."""
    size = min(size, len(images)) if len(images) > 1 else size
    if size < 2:
        return None, "batch consistency not checked: needs a batch of at least 2"
    try:
        same = detector([images[0]] * size)
        mixed = detector(list(images[:size]))
    except Exception as e:  # a fixed-batch model refuses B > 1: that is an answer, not a crash
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        return None, f"batch consistency not checked: batch {size} failed ({type(e).__name__}: {msg})"
    ok = all(detections_consistent(d, singles[0]) for d in same)
    ok = ok and all(detections_consistent(d, s) for d, s in zip(mixed, singles[:size], strict=True))
    return ok, None if ok else f"batch inconsistent: batch {size} differs from batch 1"


def run_model(runner: Runner, gt: Any, ids: Sequence[int], images: Sequence[np.ndarray], batch: int,
              consistency_batch: int) -> _Evaluated:
    """The run stage for one model: detections on every image, per-image latency, batch consistency, COCO metrics.

    The runner is activated here; the caller deactivates it.
    """
    detector = Detector(runner=runner)
    spec = detector.spec
    runner.activate()
    dets: dict[int, Detections] = {}
    lat: list[float] = []
    detector(images[:1])  # warm-up (session/kernel set-up is not latency)
    for i in range(0, len(images), batch):
        chunk = list(images[i:i + batch])
        t0 = time.perf_counter()
        out = detector(chunk)
        dt = (time.perf_counter() - t0) * 1000.0 / len(chunk)
        lat.extend([dt] * len(chunk))
        for image_id, d in zip(ids[i:i + batch], out, strict=True):
            dets[image_id] = d
    n = min(consistency_batch, len(images))
    singles = [dets[i] for i in ids[:n]] if batch == 1 else [detector([im])[0] for im in images[:n]]
    consistent, note = _batch_consistency(detector, images, singles, consistency_batch)
    metrics = coco_evaluate(gt, dets, spec.category_ids, spec.class_names, pr_curves=True)
    return _Evaluated(runner, dets, metrics, lat, consistent, [note] if note else [])


def compare_to_reference(evaluated: Sequence[_Evaluated], *, raw_reference: Runner | None,
                         raw_runners: Sequence[Runner | None], compare_batches: Sequence[np.ndarray],
                         ids: Sequence[int], agreement_iou: float, agreement_min_score: float,
                         say: Callable[[str], None]) -> list[Comparison]:
    """The compare stage: each model's raw outputs (Polygraphy, reference second) and detections (IoU-matched)
    against the reference, ``evaluated[0]``.

    Args:
        evaluated: the run stage's results, the reference first.
        raw_reference: the reference's raw-head runner, or None.
        raw_runners: per model after the reference, its raw-head runner or None.
        compare_batches: preprocessed (B, 3, H, W) batches for the raw comparison.
        ids: the image ids whose detections are matched.
        agreement_iou: IoU for a detection match.
        agreement_min_score: detections below it are not matched.
        say: progress messages.

    Returns:
        One `Comparison` per entry of ``evaluated`` (the reference's is empty).
    """
    ref = evaluated[0]
    raw_note = None
    if raw_reference is not None and any(raw_runners):
        try:
            raw_reference.activate()  # once for all comparisons
        except RetinaEdgeError as e:
            raw_note, raw_reference = f"raw outputs not compared: the reference has none ({e})", None
    out = [Comparison(raw=None, det_agreement=None)]
    try:
        for ev, raw_runner in zip(evaluated[1:], raw_runners, strict=True):
            notes = [] if raw_note is None else [raw_note]
            raw = None
            if raw_runner is not None and raw_reference is not None:
                say(f"comparing raw outputs of {ev.runner.name} with {ref.runner.name} (Polygraphy)")
                try:
                    raw = compare_raw(raw_reference, raw_runner, compare_batches).to_dict()
                except RetinaEdgeError as e:
                    notes.append(f"raw outputs not compared: {e}")
                finally:
                    raw_runner.deactivate()
            pooled = Agreement(0, 0, 0)
            for image_id in ids:
                pooled = pooled + match_detections(ev.detections[image_id], ref.detections[image_id], agreement_iou,
                                                   min_score=agreement_min_score)
            out.append(Comparison(raw=raw, det_agreement=pooled.agreement, notes=tuple(notes)))
    finally:
        if raw_reference is not None:
            raw_reference.deactivate()
    return out


def pick_reference(runners: Sequence[Runner], raw_runners: Sequence[Runner | None], reference: Runner | None,
                   raw_reference: Runner | None) -> tuple[Runner, Runner | None, list[Runner], list[Runner | None]]:
    """The reference and the models compared with it: ``reference`` when given, else the first FP32 runner
    (with its raw twin). Returns ``(reference, raw_reference, models, raw_runners)``.

    Raises:
        InputError: no reference given and no FP32 runner.
    """
    models, raws = list(runners), list(raw_runners)
    if reference is not None:
        return reference, raw_reference, models, raws
    fp32 = [i for i, r in enumerate(models) if r.precision == "fp32"]
    if not fp32:
        raise InputError(
            f"no reference: none of {[r.name for r in models]} is FP32; pass --checkpoint for the torch "
            "FP32 reference or include the FP32 model"
        )
    return models.pop(fp32[0]), raws.pop(fp32[0]), models, raws


def validate(
    *,
    ann_file: str | Path,
    image_dir: str | Path,
    runners: Sequence[Runner],
    reference: Runner | None,
    report_dir: str | Path,
    gate: Mapping[str, float] = DEFAULT_GATE,
    batch: int = 1,
    max_images: int | None = None,
    raw_runners: Sequence[Runner | None] | None = None,
    raw_reference: Runner | None = None,
    compare_images: int = 8,
    consistency_batch: int = 4,
    agreement_iou: float = 0.5,
    agreement_min_score: float = 0.3,
    sample_images: int = 8,
    skipped: Sequence[Mapping[str, str]] = (),
    progress: Callable[[str], None] | None = None,
    image_cache_bytes: int = IMAGE_CACHE_BYTES,
) -> Report:
    """Validate models against a reference on the same original images and write the report.

    Four stages: run (`run_model`, each model on every image), compare (`compare_to_reference`), gate
    (`gate_row`, a pure function) and report (`write_report`, the only code that draws or plots).

    Args:
        ann_file: COCO ground truth of the validation images.
        image_dir: folder holding each image's ``file_name``.
        runners: the models to validate (activated and deactivated here, one at a time).
        reference: the FP32 reference (e.g. a torch runner); None -> the first FP32 entry of ``runners``.
        report_dir: where ``report.json``, ``report.md``, ``pr_curves.png`` and the sample sheets go.
        gate: minimum ``retained`` per precision (`gate_threshold`: ``fp32`` defaults to `FP32_GATE`, a variant
            such as ``int8-mixed`` to its base precision's value).
        batch: images per detector call.
        max_images: evaluate only the first N images (by image id).
        raw_runners: per entry of ``runners``, a runner returning raw ``cls_logits``/``box_deltas`` (e.g.
            ``OrtRunner(path=..., raw=True)``) or None; enables the Polygraphy comparison.
        raw_reference: the reference's raw-output runner.
        compare_images: images used for the raw-output comparison.
        consistency_batch: batch size of the batch-consistency check.
        agreement_iou: IoU for detection agreement.
        agreement_min_score: detections below this score are ignored for agreement (the low-score tail
            is unstable across precisions and means little).
        sample_images: images on each sample sheet.
        skipped: models that could not be run, listed in the report.
        progress: called with one-line status messages.
        image_cache_bytes: decoded images held in memory between passes; the rest are decoded on each use.

    Returns:
        The `Report`; ``report.passed`` is the overall gate verdict.

    Raises:
        InputError: no runners, no FP32 reference, bad arguments, or images that cannot be read.
    """
    say = progress or (lambda _msg: None)
    if batch <= 0 or consistency_batch <= 0 or compare_images <= 0:
        raise InputError(f"batch={batch}, consistency_batch={consistency_batch} and compare_images="
                         f"{compare_images} must be positive")
    if raw_runners is not None and len(raw_runners) != len(runners):
        raise InputError(f"{len(raw_runners)} raw runners for {len(runners)} runners; pass one (or None) per runner")
    for k in gate:
        if k not in GATE_PRECISIONS:
            raise InputError(f"gate key {k!r} is not a precision; allowed: {list(GATE_PRECISIONS)}")
    reference, raw_reference, models, raw_list = pick_reference(
        runners, list(raw_runners) if raw_runners is not None else [None] * len(runners), reference, raw_reference)
    out = ensure_writable_dir(report_dir)
    all_runners = [reference, *models]
    gt = load_coco(ann_file)
    for r in all_runners:
        align_categories(gt, r.spec.category_ids, r.spec.class_names)
    ids, images = _load_images(gt, Path(image_dir), max_images, image_cache_bytes)
    say(f"{len(images)} images from {ann_file}")

    evaluated: list[_Evaluated] = []
    for r in all_runners:
        say(f"evaluating {r.name} ({r.backend} {r.precision})")
        try:
            evaluated.append(run_model(r, gt, ids, images, batch, consistency_batch))
        finally:
            r.deactivate()
    compare_batches = [preprocess_batch(list(images[i:i + batch]), reference.spec)[0]
                       for i in range(0, min(compare_images, len(images)), batch)]
    comparisons = compare_to_reference(evaluated, raw_reference=raw_reference, raw_runners=raw_list,
                                       compare_batches=compare_batches, ids=ids, agreement_iou=agreement_iou,
                                       agreement_min_score=agreement_min_score, say=say)
    ref_ap = float(evaluated[0].metrics["AP"])
    labels: set[str] = set()
    rows = [_row(ev, cmp, is_reference=idx == 0, ref_ap=ref_ap, gate=gate, label=_label(ev.runner, labels))
            for idx, (ev, cmp) in enumerate(zip(evaluated, comparisons, strict=True))]
    ref_label = "torch-fp32" if reference.backend == "torch" else f"{reference.backend}-{reference.precision}"
    report = Report(gate=dict(gate), reference=ref_label, rows=tuple(rows), skipped=tuple(skipped),
                    images=len(images), report_dir=str(out))
    return write_report(report, evaluated=evaluated, gt=gt, images=images, ids=ids, sample_images=sample_images,
                        min_score=agreement_min_score)


def _row(ev: _Evaluated, cmp: Comparison, *, is_reference: bool, ref_ap: float, gate: Mapping[str, float],
         label: str) -> Row:
    """One report row from the run, compare and gate stages."""
    r = ev.runner
    precision = row_precision(r)
    ap = float(ev.metrics["AP"])
    retained = 1.0 if is_reference else (ap / ref_ap if ref_ap > 0 else None)
    passed, gate_notes = gate_row(precision=precision, retained=retained, batch_consistent=ev.batch_consistent,
                                  is_reference=is_reference, gate=gate)
    notes = [*ev.notes, *cmp.notes, *gate_notes]
    if PRECISION_VARIANTS.get(precision, precision) == "int8" and r.backend == "ort" and r.target == "tensorrt":
        notes.append(TRT_INT8_NOTE)
    nms: str = r.spec.nms
    if isinstance(r, ExportNmsRunner):
        notes.append(f"{r.backend} heads + the exported NMS ({nms}, numpy emulation)")
    elif r.backend == "torch":
        nms = "torchvision"  # training's evaluation NMS, not the exported graph's
    lat = np.asarray(ev.latencies_ms)
    return Row(
        model=_runner_path(r), label=label, backend=r.backend, precision=precision, nms=nms, metrics=ev.metrics,
        retained=retained, delta_ap=ap - ref_ap, latency_ms_p50=float(np.percentile(lat, 50)),
        latency_ms_p99=float(np.percentile(lat, 99)),
        max_abs_diff=None if cmp.raw is None else float(cmp.raw["max_abs"]), raw=cmp.raw,
        det_agreement=cmp.det_agreement, batch_consistent=ev.batch_consistent, passed=passed,
        is_reference=is_reference, notes=tuple(notes),
    )


# ---- report: the only code that draws, plots (matplotlib) or writes the report's files -------------------------
def write_report(report: Report, *, evaluated: Sequence[_Evaluated], gt: Any, images: Sequence[np.ndarray],
                 ids: Sequence[int], sample_images: int, min_score: float) -> Report:
    """Write ``pr_curves.png``, one ``samples_<label>.png`` per row, ``report.json`` and ``report.md``.

    Args:
        report: the rows (``files`` is filled in here).
        evaluated: per row, the run stage's detections.
        gt: the ``pycocotools.coco.COCO`` ground truth (drawn under the detections on the sample sheets).
        images: the validation images, in ``ids`` order.
        ids: their image ids.
        sample_images: images on each sample sheet (the first ones by id).
        min_score: detections below it are not drawn.

    Returns:
        ``report`` with ``files`` naming what was written.
    """
    out = Path(report.report_dir)
    files = {"report.json": str(out / "report.json"), "report.md": str(out / "report.md")}
    files["pr_curves.png"] = _plot_pr(report.rows, out / "pr_curves.png")
    for row, ev in zip(report.rows, evaluated, strict=True):
        sheet = _sample_sheet(ev, gt, images[:sample_images], ids[:sample_images], min_score)
        name = f"samples_{row.label}.png"
        atomic_write_bytes(out / name, sheet)
        files[name] = str(out / name)
    report = replace(report, files=files)
    atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "report.md", report.to_markdown())
    return report


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def ground_truth_boxes(gt: Any, image_id: int, spec: DetectorSpec) -> tuple[np.ndarray, np.ndarray]:
    """An image's non-crowd ground truth as ``(boxes (M, 4) xyxy original pixels, classes (M,) class indices)``;
    categories the spec does not know are left out."""
    index = {int(c): k for k, c in enumerate(spec.category_ids)}
    anns = [a for a in gt.imgToAnns.get(image_id, []) if not a.get("iscrowd") and int(a["category_id"]) in index]
    xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return boxes, np.asarray([index[int(a["category_id"])] for a in anns], np.int64)


def _sample_sheet(ev: _Evaluated, gt: Any, images: Sequence[np.ndarray], ids: Sequence[int],
                  min_score: float) -> bytes:
    """Each image with its ground truth (white) and the model's detections over it (class colours)."""
    spec = ev.runner.spec
    names = spec.class_names
    drawn, titles = [], []
    for image, i in zip(images, ids, strict=True):
        gt_boxes, gt_classes = ground_truth_boxes(gt, i, spec)
        with_gt = draw_ground_truth(image, gt_boxes, gt_classes, names)
        drawn.append(draw_detections(with_gt, ev.detections[i], names, min_score=min_score))
        titles.append(f"id {i}: {int((ev.detections[i].scores >= min_score).sum())} det, {len(gt_classes)} gt")
    return _png(contact_sheet(drawn, titles=titles, columns=4, tile=256))


def _plot_pr(rows: Sequence[Row], path: Path) -> str:
    """Precision-recall at IoU 0.5 (area all, 100 dets), mean over classes with ground truth, one curve per model."""
    matplotlib = require("matplotlib", purpose="the validation report's PR curves")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", purpose="the validation report's PR curves")
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for row in rows:
        curves = row.metrics.get("pr_curves")
        if not curves:
            continue
        recall = np.asarray(curves["recall"])
        per_class = np.asarray(list(curves["AP50"].values()), dtype=np.float64).reshape(-1, len(recall))
        valid = per_class[(per_class > -1).all(axis=1)]
        if not len(valid):
            continue
        ax.plot(recall, valid.mean(axis=0), label=f"{row.label} (AP50 {float(row.metrics['AP50']):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall at IoU 0.5 (mean over classes)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
