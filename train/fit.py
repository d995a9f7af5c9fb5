"""The recipe fitted to the training data: `fit_config` resolves a `TrainConfig`'s ``[fit]`` switches into values.

The result is an ordinary config with the fitted ``data.input_size``, ``anchors.sizes``/``aspect_ratios`` and
``data.progressive_size`` written in and the switches turned off, so the run's ``config.json``, the checkpoint
and the spec hold plain values, and a resume (which fits again, deterministically) compares equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retinaedge.runtime.spec import DetectorSpec
from retinaedge.train.config import FitConfig, TrainConfig, make_spec
from retinaedge.train.data.inspect import BoxSet, RecipeFit, fit_recipe, inspect_boxes, read_box_set, write_report

__all__ = ["FitReport", "fit_config"]


@dataclass(frozen=True)
class FitReport:
    """What the fit saw and chose; `write` stores ``data_report.json`` / ``.png`` in the run directory."""

    box_set: BoxSet
    fit: RecipeFit

    @property
    def notes(self) -> tuple[str, ...]:
        return self.fit.notes

    def write(self, out: str | Path, spec: DetectorSpec) -> None:
        write_report(out, self.box_set, inspect_boxes(self.box_set, spec), self.fit, spec=spec)


def fit_config(config: TrainConfig, train_ann: str | Path, class_names: Sequence[str],
               category_ids: Sequence[int]) -> tuple[TrainConfig, FitReport | None]:
    """Resolve ``config.fit`` against the training annotations.

    Returns:
        The config with fitted values and ``fit`` switched off (``config`` itself when nothing is to be fitted),
        and the report (None when nothing was fitted).
    """
    fc = config.fit
    if not (fc.input_size or fc.anchors):
        return config, None
    box_set = read_box_set(train_ann)
    spec = make_spec(config, class_names, category_ids)
    fit = fit_recipe(spec, box_set, fg_iou=config.loss.fg_iou, fit_input=fc.input_size, fit_anchors=fc.anchors,
                     progressive_size=config.data.progressive_size, seed=config.seed)
    data = dataclasses.replace(config.data, input_size=fit.input_size, progressive_size=fit.progressive_size)
    anchors = config.anchors
    if fc.anchors:
        anchors = dataclasses.replace(anchors, sizes=fit.sizes, aspect_ratios=fit.aspect_ratios)
    resolved = dataclasses.replace(config, data=data, anchors=anchors, fit=FitConfig())
    return resolved, FitReport(box_set=box_set, fit=fit)
