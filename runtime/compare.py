"""Accuracy comparisons between runners, at the two levels the field uses.

* Raw outputs (``cls_logits``, ``box_deltas``): Polygraphy's ``Comparator`` drives our runners through thin
  ``BaseRunner`` adapters and ``SimpleCompareFunc`` (``CompareFunc.simple``) checks them. Polygraphy fails an
  element only when *both* atol and rtol are exceeded and takes the relative error against the **second**
  runner, so the reference goes second. Its per-output ``max_absdiff`` / ``max_reldiff`` are the minimum
  atol / rtol that would pass; we report those, plus pooled abs-error statistics.
* Detections after NMS: matched by IoU and class, never by index (NMS order is unstable across backends).

Note: our code never imports torch, but Polygraphy's array helpers import it when it is installed (a few seconds
on a development machine; nothing on a Jetson without torch).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from retinaedge.runtime._lazy import require
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.runner import Runner


@dataclass(frozen=True)
class OutputError:
    """Error statistics of one output, candidate vs reference, pooled over all compared batches.

    Attributes:
        name: output tensor name.
        max_abs: largest ``|candidate - reference|``.
        mean_abs: mean absolute error.
        median_abs: median absolute error.
        p99_abs: 99th percentile of the absolute error.
        min_atol: the minimum absolute tolerance Polygraphy reports would pass (its ``max_absdiff``).
        min_rtol: the minimum relative tolerance Polygraphy reports would pass (its ``max_reldiff``,
            relative to the reference).
        passed: Polygraphy's verdict at the requested atol/rtol.
    """

    name: str
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    min_atol: float
    min_rtol: float
    passed: bool


@dataclass(frozen=True)
class RawComparison:
    """Result of `compare_raw`: one `OutputError` per compared output.

    Attributes:
        reference: name of the reference runner.
        candidate: name of the candidate runner.
        atol: absolute tolerance checked.
        rtol: relative tolerance checked.
        outputs: per-output statistics.
    """

    reference: str
    candidate: str
    atol: float
    rtol: float
    outputs: tuple[OutputError, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs(self) -> float:
        """Largest absolute error over all outputs."""
        return max(o.max_abs for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "atol": self.atol,
            "rtol": self.rtol,
            "passed": self.passed,
            "max_abs": self.max_abs,
            "outputs": {o.name: asdict(o) for o in self.outputs},
        }


def _adapter(runner: Runner, name: str, outputs: Sequence[str]) -> Any:
    """Wrap one of our runners as a Polygraphy ``BaseRunner`` returning ``outputs`` as float32."""
    base = require("polygraphy.backend.base", purpose="raw-output comparison")
    common = require("polygraphy.common", purpose="raw-output comparison")

    base_runner: Any = base.BaseRunner

    class _Adapter(base_runner):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name=name)
            self._activated_here = False

        def activate_impl(self) -> None:
            self._activated_here = not runner.is_active
            runner.activate()

        def get_input_metadata_impl(self) -> Any:
            spec = runner.spec
            dtype = np.uint8 if spec.input_dtype == "uint8" else np.float32
            return common.TensorMetadata().add(
                spec.io.input, dtype=dtype, shape=(-1, 3, spec.input_height, spec.input_width)
            )

        def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
            start = time.perf_counter()
            result = runner.infer(feed_dict[runner.spec.io.input])
            self.inference_time = time.perf_counter() - start
            missing = [o for o in outputs if o not in result]
            if missing:
                raise InputError(
                    f"runner {runner.name!r} returned outputs {sorted(result)}, not {missing}; "
                    "compare raw outputs with runners built with raw=True"
                )
            return OrderedDict((o, np.asarray(result[o], dtype=np.float32)) for o in outputs)

        def deactivate_impl(self) -> None:
            # leave a runner the caller had activated as it was: sessions are expensive to rebuild
            if self._activated_here:
                runner.deactivate()

    return _Adapter()


def compare_raw(
    reference: Runner,
    candidate: Runner,
    batches: Iterable[np.ndarray],
    *,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    outputs: Sequence[str] | None = None,
    quiet: bool = True,
) -> RawComparison:
    """Compare the raw head outputs of two runners on the same batches with Polygraphy.

    Args:
        reference: the trusted runner (FP32); placed *second* in Polygraphy so relative errors are taken
            against it.
        candidate: the runner under test.
        batches: preprocessed inputs, each (B, 3, H, W) in the spec's input dtype.
        atol: absolute tolerance for Polygraphy's verdict.
        rtol: relative tolerance for Polygraphy's verdict.
        outputs: output names to compare; defaults to the spec's ``cls_logits`` and ``box_deltas``.
        quiet: silence Polygraphy's logging (its FAILED lines included; the verdict is in the result).

    Returns:
        A `RawComparison` with per-output max/mean/median/p99 abs error and minimum passing atol/rtol.

    Raises:
        InputError: if no batch is given, or a runner does not return the requested outputs.
    """
    comparator = require("polygraphy.comparator", purpose="raw-output comparison")
    logger = require("polygraphy.logger", purpose="raw-output comparison").G_LOGGER
    spec = reference.spec
    names = tuple(outputs) if outputs is not None else (spec.io.cls_logits, spec.io.box_deltas)
    feeds = [{spec.io.input: np.asarray(b)} for b in batches]
    if not feeds:
        raise InputError("compare_raw got 0 batches; pass at least one preprocessed batch")
    ref_name, cand_name = f"reference:{reference.name}", f"candidate:{candidate.name}"
    if ref_name == cand_name:
        cand_name += "#2"
    runners = [_adapter(candidate, cand_name, names), _adapter(reference, ref_name, names)]
    make_func = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple
    verbosity = logger.verbosity(logger.CRITICAL) if quiet else contextlib.nullcontext()
    with verbosity:
        results = comparator.Comparator.run(runners, data_loader=feeds)
        accuracy = comparator.Comparator.compare_accuracy(
            results, compare_func=make_func(atol=atol, rtol=rtol, error_quantile=0.99)
        )
    per_iter = accuracy[0][(cand_name, ref_name)]
    cand_iters, ref_iters = results[0][1], results[1][1]
    stats = []
    for o in names:
        diffs = np.concatenate(
            [np.abs(c[o].astype(np.float64) - r[o].astype(np.float64)).ravel()
             for c, r in zip(cand_iters, ref_iters, strict=True)]
        )
        finite = diffs[np.isfinite(diffs)]
        pooled = finite if finite.size else np.zeros(1)
        stats.append(
            OutputError(
                name=o,
                max_abs=float(diffs.max()) if diffs.size else 0.0,
                mean_abs=float(pooled.mean()),
                median_abs=float(np.median(pooled)),
                p99_abs=float(np.quantile(pooled, 0.99)),
                min_atol=max(float(it[o].max_absdiff) for it in per_iter),
                min_rtol=max(float(it[o].max_reldiff) for it in per_iter),
                passed=all(bool(it[o]) for it in per_iter),
            )
        )
    return RawComparison(reference.name, candidate.name, atol, rtol, tuple(stats))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``xyxy`` boxes (no ``+1``; degenerate boxes have area 0 and IoU 0).

    Args:
        a: (N, 4) xyxy.
        b: (M, 4) xyxy.

    Returns:
        (N, M) float64 IoU.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


@dataclass(frozen=True)
class Agreement:
    """How two detection sets agree after IoU + class matching.

    Attributes:
        matched: pairs matched one to one (same class, IoU >= threshold).
        count_a: detections in the first set.
        count_b: detections in the second set.
        mean_iou: mean IoU of the matched pairs (1.0 when nothing was matched).
        max_score_diff: largest score difference among matched pairs (0.0 when nothing was matched).
    """

    matched: int
    count_a: int
    count_b: int
    mean_iou: float = 1.0
    max_score_diff: float = 0.0

    @property
    def agreement(self) -> float:
        """``matched / max(count_a, count_b)``; 1.0 when both sets are empty."""
        denom = max(self.count_a, self.count_b)
        return 1.0 if denom == 0 else self.matched / denom

    def __add__(self, other: Agreement) -> Agreement:
        """Pool two agreements (e.g. over images): counts add, ``mean_iou`` is weighted by matches."""
        m = self.matched + other.matched
        iou = 1.0 if m == 0 else (self.mean_iou * self.matched + other.mean_iou * other.matched) / m
        return Agreement(m, self.count_a + other.count_a, self.count_b + other.count_b, iou,
                         max(self.max_score_diff, other.max_score_diff))


def _match(a: Detections, b: Detections, iou: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches ``(i, j, iou)`` in descending score of ``a``, same class, IoU >= ``iou``."""
    if len(a) == 0 or len(b) == 0:
        return []
    ious = box_iou(a.boxes, b.boxes)
    # the same box (to 1e-3 px) matches even when degenerate: a box in the letterbox padding clips to zero area
    gap = np.abs(np.asarray(a.boxes, np.float64)[:, None, :] - np.asarray(b.boxes, np.float64)[None, :, :])
    ious[gap.max(axis=-1) <= 1e-3] = 1.0
    ious[np.asarray(a.classes)[:, None] != np.asarray(b.classes)[None, :]] = -1.0
    taken = np.zeros(len(b), dtype=bool)
    pairs: list[tuple[int, int, float]] = []
    for i in np.argsort(-np.asarray(a.scores), kind="stable").tolist():
        row = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(row))
        if row[j] >= iou:
            taken[j] = True
            pairs.append((i, j, float(row[j])))
    return pairs


def _above(d: Detections, min_score: float) -> Detections:
    keep = d.scores >= min_score
    return d if bool(keep.all()) else Detections(d.boxes[keep], d.scores[keep], d.classes[keep])


def match_detections(a: Detections, b: Detections, iou: float = 0.5, *, min_score: float = 0.0) -> Agreement:
    """Match two detection sets one to one by IoU and class, never by index.

    Greedy in descending score of ``a``: each detection takes the unmatched detection of ``b`` with the same
    class and the highest IoU, if that IoU is ``>= iou``.

    Args:
        a: detections of one backend (xyxy, any order).
        b: detections of the other backend, same image and coordinates.
        iou: minimum IoU for a match.
        min_score: detections below this score in either set are ignored.

    Returns:
        An `Agreement`; ``.agreement`` is ``matched / max(len(a), len(b))``.
    """
    if not 0.0 < iou <= 1.0:
        raise InputError(f"iou={iou!r} must be in (0, 1]; 0.5 is the usual match threshold")
    a, b = _above(a, min_score), _above(b, min_score)
    pairs = _match(a, b, iou)
    if not pairs:
        return Agreement(0, len(a), len(b))
    score_diff = max(abs(float(a.scores[i]) - float(b.scores[j])) for i, j, _ in pairs)
    return Agreement(len(pairs), len(a), len(b), float(np.mean([p[2] for p in pairs])), score_diff)


def detections_consistent(
    a: Detections,
    b: Detections,
    *,
    iou: float = 0.9,
    score_atol: float = 5e-3,
    min_score: float = 0.0,
) -> bool:
    """Whether two detection sets are the same up to float noise (batch-consistency checks).

    Every detection scoring at least ``min_score`` must be matched (same class, IoU >= ``iou``) with scores
    within ``score_atol``. A detection within ``score_atol`` of ``min_score`` may go unmatched: its twin can
    fall just below the cut on the other side.
    """
    a_, b_ = _above(a, min_score - score_atol), _above(b, min_score - score_atol)
    pairs = _match(a_, b_, iou)
    if any(abs(float(a_.scores[i]) - float(b_.scores[j])) > score_atol for i, j, _ in pairs):
        return False
    hi = min_score + score_atol
    ma, mb = {i for i, _, _ in pairs}, {j for _, j, _ in pairs}
    lonely_a = [i for i in range(len(a_)) if i not in ma and a_.scores[i] >= hi]
    lonely_b = [j for j in range(len(b_)) if j not in mb and b_.scores[j] >= hi]
    return not lonely_a and not lonely_b
