"""`ExportConfig`: every choice the export stage makes, in one frozen dataclass.

Only the CLI parses arguments; it builds an `ExportConfig` (or loads one from TOML with `from_dict`) and hands
it to `retinaedge.export.pipeline.export_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.spec import NMS_MODES, NmsMode

ExportPrecision = Literal["fp32", "fp16", "int8", "int8-cpu"]
EXPORT_PRECISIONS: tuple[str, ...] = get_args(ExportPrecision)
CalibMethod = Literal["auto", "entropy", "max"]
CALIB_METHODS: tuple[str, ...] = get_args(CalibMethod)
Exporter = Literal["auto", "dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = get_args(Exporter)
MixedMode = Literal["off", "auto"]
MIXED_MODES: tuple[str, ...] = get_args(MixedMode)
MixedUnit = Literal["block", "layer"]
MIXED_UNITS: tuple[str, ...] = get_args(MixedUnit)
MixedDtype = Literal["auto", "fp16", "fp32"]
MIXED_DTYPES: tuple[str, ...] = get_args(MixedDtype)

MIN_OPSET = 17
"""Lowest opset we export (TensorRT 8.6 reads up to 17; LayerNorm/GroupNorm need >= 17/18 to stay fused)."""
MAX_OPSET = 20
"""Highest opset every targeted TensorRT major reads (onnx-tensorrt 10.0/10.1: opset 9..20)."""


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how.

    Attributes:
        checkpoint: training checkpoint (``ckpt_best.pt``) written by ``retinaedge train``; None only when the
            model is handed to `retinaedge.export.pipeline.export_model` directly.
        out_dir: output directory; created if needed and checked for write access.
        precisions: which ONNX variants to write, any of ``fp32``, ``fp16``, ``int8`` (symmetric Q/DQ for
            TensorRT, ModelOpt) and ``int8-cpu`` (ORT U8S8 QDQ, CPU only). ``fp32`` is always written first
            because every other variant starts from it.
        nms: which NMS the graphs end in (``efficient`` = EfficientNMS_TRT, ``onnx`` = NonMaxSuppression,
            ``none`` = raw heads + decoded boxes).
        opset: ONNX opset, ``MIN_OPSET..MAX_OPSET``.
        exporter: ``dynamo`` (``torch.onnx.export(dynamo=True)``; the clean graph with torch 2.14),
            ``torchscript`` (the legacy tracer; more Shape/Gather/Concat nodes, folded by `sanitize`), or ``auto``:
            dynamo at opset >= 18 (its native opsets) and torchscript at 17, because dynamo's 18 -> 17 conversion
            fails on the FPN's Resize ("No Adapter To Version $17 for Resize", torch 2.14.1 / onnx 1.21).
        calib_data: dataset dir (``DATA/val`` or ``DATA/train`` are used) or an image folder; required for
            ``int8``/``int8-cpu``.
        calib_images: how many images calibrate (first ``N`` in sorted order, after skipping corrupt files).
        calib_method: ``entropy`` or ``max`` for the ModelOpt INT8 calibration, or ``auto`` to try both and keep
            the one with the higher AP on a held-out set (both APs are recorded in ``export.json``).
        heldout_images: size of the held-out set used by ``calib_method="auto"``.
        calib_batch: batch size fed to the calibrators.
        mixed: ``auto`` also writes ``model.int8-mixed.onnx``: per-unit INT8 sensitivity on the held-out split, then
            the fewest most sensitive units kept out of INT8 until ``gate`` passes (`retinaedge.export.mixed`);
            needs ``int8`` among the precisions and a held-out split (``DATA/annotations/instances_val.json``).
        gate: the INT8 gate of ``mixed``: minimum fraction of the FP32 held-out AP to keep (validate's ``int8``).
        mixed_unit: the sensitivity unit, ``block`` (stem / stage / FPN level / head part) or ``layer`` (each node).
        mixed_dtype: precision of the kept units: ``fp16``, ``fp32``, or ``auto`` (FP16 unless FP16 itself loses
            AP on the held-out split).
        mixed_max_units: try at most this many kept units (default: all).
    """

    checkpoint: Path | None
    out_dir: Path
    precisions: tuple[ExportPrecision, ...] = ("fp32",)
    nms: NmsMode = "efficient"
    opset: int = MIN_OPSET
    exporter: Exporter = "auto"
    calib_data: Path | None = None
    calib_images: int = 64
    calib_method: CalibMethod = "auto"
    heldout_images: int = 32
    calib_batch: int = 8
    mixed: MixedMode = "off"
    gate: float = 0.99
    mixed_unit: MixedUnit = "block"
    mixed_dtype: MixedDtype = "auto"
    mixed_max_units: int | None = None

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.calib_data is not None:
            object.__setattr__(self, "calib_data", Path(self.calib_data))
        precisions = tuple(dict.fromkeys(self.precisions))
        if not precisions:
            raise InputError(f"precisions is empty; choose any of {list(EXPORT_PRECISIONS)}")
        for p in precisions:
            if p not in EXPORT_PRECISIONS:
                raise InputError(f"precision {p!r} is not supported; choose from {list(EXPORT_PRECISIONS)}")
        # fp32 first: every other variant is derived from the FP32 graph
        object.__setattr__(self, "precisions", tuple(sorted(precisions, key=EXPORT_PRECISIONS.index)))
        if self.nms not in NMS_MODES:
            raise InputError(f"nms={self.nms!r} is not supported; choose from {list(NMS_MODES)}")
        check_opset(self.opset)
        if self.exporter not in EXPORTERS:
            raise InputError(f"exporter={self.exporter!r} is not supported; choose from {list(EXPORTERS)}")
        if self.calib_method not in CALIB_METHODS:
            raise InputError(
                f"calib_method={self.calib_method!r} is not supported; choose from {list(CALIB_METHODS)}"
            )
        for name in ("calib_images", "heldout_images", "calib_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InputError(f"{name}={v!r} must be a positive integer")
        for name, allowed in (("mixed", MIXED_MODES), ("mixed_unit", MIXED_UNITS), ("mixed_dtype", MIXED_DTYPES)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name}={getattr(self, name)!r} is not supported; choose from {list(allowed)}")
        if isinstance(self.gate, bool) or not isinstance(self.gate, int | float) or not 0 < self.gate <= 1:
            raise InputError(f"gate={self.gate!r} must be a fraction in (0, 1]; e.g. --gate int8=0.99")
        m = self.mixed_max_units
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m <= 0):
            raise InputError(f"mixed_max_units={m!r} must be a positive integer or None (all units)")
        if self.mixed == "auto" and "int8" not in self.precisions:
            raise InputError(f"mixed='auto' refines the int8 export but precisions are {list(self.precisions)}; "
                             "add int8, e.g. --precision fp32,int8 --mixed auto")
        if self.needs_calibration and self.calib_data is None:
            raise InputError(
                f"precisions {list(self.precisions)} need calibration images but calib_data is not set; "
                "pass --calib-data DATA (a dataset dir or an image folder)"
            )

    @property
    def needs_calibration(self) -> bool:
        return any(p in ("int8", "int8-cpu") for p in self.precisions)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportConfig:
        """Build from a TOML/JSON table, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown export config keys {unknown}; allowed: {sorted(known)}")
        values = dict(data)
        if "precisions" in values:
            p = values["precisions"]
            values["precisions"] = tuple(p.split(",")) if isinstance(p, str) else tuple(p)
        try:
            return cls(**values)
        except TypeError as e:
            raise InputError(f"incomplete export config: {e}; checkpoint and out_dir are required") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out


def check_opset(opset: object) -> int:
    """Return ``opset`` if it is an exportable opset, else raise `InputError` naming the allowed range."""
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(
            f"opset {opset!r} is not supported; choose {MIN_OPSET}..{MAX_OPSET} "
            f"(TensorRT 8.6 reads up to 17, 10.0 up to 20)"
        )
    return opset


def parse_precisions(text: str) -> tuple[ExportPrecision, ...]:
    """``"fp32,int8"`` -> ``("fp32", "int8")``, refusing unknown names."""
    out: list[ExportPrecision] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part not in EXPORT_PRECISIONS:
            raise InputError(f"precision {part!r} is not supported; choose from {list(EXPORT_PRECISIONS)}")
        out.append(part)  # type: ignore[arg-type]
    if not out:
        raise InputError(f"--precision {text!r} names no precision; choose from {list(EXPORT_PRECISIONS)}")
    return tuple(out)
