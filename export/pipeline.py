"""`export_model`: checkpoint -> ``model.{fp32,fp16,int8,int8-cpu}.onnx`` + ``spec.json`` + ``export.json``.

Steps: load the checkpoint (`retinaedge.train.checkpoint.load_checkpoint`), export the raw heads
(`retinaedge.export.onnx_export.export_onnx`), sanitize/concat (the pre-NMS graph), make each precision variant
from the pre-NMS graph (FP16 AutoCast, ModelOpt INT8, ORT U8S8 INT8), append the FP32 NMS tail
(`retinaedge.export.surgery.finalize`), write atomically, lint each file and print the lint summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from retinaedge.export.calib import (
    CalibrationCache,
    CalibrationSet,
    load_calibration_set,
)
from retinaedge.export.config import ExportConfig
from retinaedge.export.fp16 import to_fp16
from retinaedge.export.int8 import ModelOptMethod, quantize_int8_cpu, quantize_int8_tensorrt
from retinaedge.export.lint import LintReport, lint_onnx
from retinaedge.export.mixed import HighDtype, set_keep_high
from retinaedge.export.onnx_export import export_onnx, random_images
from retinaedge.export.surgery import finalize, prepare_pre_nms
from retinaedge.runtime.calibration import calibration_folder, calibration_key
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir, sha256_file
from retinaedge.runtime.preprocess import Letterbox, list_images
from retinaedge.runtime.spec import DetectorSpec

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote.

    Attributes:
        out_dir: the output directory.
        files: precision (``fp32``, ``fp16``, ``int8``, ``int8-cpu``) -> ONNX path.
        spec: the spec written to ``spec.json`` (``nms`` set to the exported mode).
        lint: precision -> `LintReport`.
        calibration: calibration record (folder, images used/skipped, method chosen, held-out APs, cache hits).
        log_path: ``export.json``.
    """

    out_dir: Path
    files: dict[str, Path]
    spec: DetectorSpec
    lint: dict[str, LintReport]
    calibration: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None


def export_model(
    config: ExportConfig,
    *,
    model: Any | None = None,
    spec: DetectorSpec | None = None,
    echo: Echo | None = None,
) -> ExportResult:
    """Export a trained RetinaNet to ONNX files in ``config.out_dir``.

    Args:
        config: what to export.
        model: an already built ``torch.nn.Module`` (with ``spec``) instead of ``config.checkpoint``.
        spec: the spec of ``model``.
        echo: progress sink (the CLI passes ``print``); default: the module logger.

    Returns:
        The `ExportResult`; ``export.json`` in the output dir holds the same record.

    Raises:
        InputError: an unwritable output dir, a calibration folder without usable images, a bad opset.
        ModelError: a checkpoint whose weights do not fit its architecture, or a model that does not fit its spec.
    """
    say: Echo = echo or log.info
    out = ensure_writable_dir(config.out_dir)
    if (model is None) != (spec is None):
        raise InputError("pass both model= and spec= (or neither, to load config.checkpoint)")
    if model is None:
        from retinaedge.train.checkpoint import load_checkpoint

        if config.checkpoint is None:
            raise InputError("config.checkpoint is not set; pass --checkpoint RUN/ckpt_best.pt")
        model, spec, _ = load_checkpoint(config.checkpoint)
    if spec is None:  # unreachable: load_checkpoint returns a spec; keeps the type checker informed
        raise InputError("no spec for the model")
    say(f"exporting {config.checkpoint} -> {out} (opset {config.opset}, nms={config.nms}, "
        f"precisions {','.join(config.precisions)})")
    raw = export_onnx(model, spec, opset=config.opset, exporter=config.exporter)
    pre = prepare_pre_nms(raw, spec)
    input_name = spec.io.input

    calib: CalibrationSet | None = None
    record: dict[str, Any] = {}
    cache: CalibrationCache | None = None
    if config.needs_calibration:
        if config.calib_data is None:  # ExportConfig refuses this already
            raise InputError("calib_data is required for int8/int8-cpu; pass --calib-data DATA")
        folder = calibration_folder(config.calib_data)
        calib = load_calibration_set(list_images(folder), spec, limit=config.calib_images)
        record.update(folder=str(folder), images=[p.name for p in calib.files],
                      skipped=[{"file": str(p), "reason": r} for p, r in calib.skipped])
        say(f"calibration: {len(calib.files)} images from {folder}"
            + (f", {len(calib.skipped)} corrupt skipped (first: {calib.skipped[0][0].name})" if calib.skipped else ""))
        key = calibration_key(hashlib.sha256(pre.SerializeToString()).hexdigest(), calib.files, spec)
        cache = CalibrationCache(root=out / "calib", key=key)
        record["key"] = key
        record["cache_hits"] = []

    files: dict[str, Path] = {}
    reports: dict[str, LintReport] = {}
    int8_pre: onnx.ModelProto | None = None
    for precision in config.precisions:
        target = "cpu" if precision == "int8-cpu" else "tensorrt"
        if precision == "fp32":
            variant = pre
        elif precision == "fp16":
            sample = calib.batch[:4] if calib is not None else random_images(spec, 2)
            variant = to_fp16(pre, sample, input_name=input_name, opset=config.opset)
        elif precision == "int8":
            if calib is None or cache is None:
                raise InputError("int8 needs calibration images; pass --calib-data")
            variant = _int8_tensorrt(pre, calib, cache, config, spec, record, say)
            int8_pre = variant
        else:
            if calib is None or cache is None:
                raise InputError("int8-cpu needs calibration images; pass --calib-data")
            variant = _cached(cache, "int8-cpu.onnx", record,
                              lambda: quantize_int8_cpu(pre, calib.batch, input_name=input_name,
                                                        batch=config.calib_batch))
        final = finalize(variant, spec, nms=config.nms, precision="int8" if precision == "int8-cpu" else precision,
                         target=target)
        path = out / f"model.{precision}.onnx"
        atomic_write_bytes(path, final.SerializeToString())
        # Q/DQ INT8 is the strongly-typed path (TRT >= 10, docs/TENSORRT.md); TRT 8.6 builds INT8 from the FP32
        # file with its calibrator, and ModelOpt's opset 19 cannot always be converted back to 17 (Resize)
        report = lint_onnx(path, target_trt_majors=(10, 11) if precision == "int8" else (8, 10, 11))
        files[precision], reports[precision] = path, report
        say(f"wrote {path.name}; lint: {report.summary()}")
        for finding in report.errors + report.warnings:
            say(f"  {finding}")
        if precision == "int8" and config.mixed == "auto":
            if calib is None or cache is None:  # ExportConfig refuses this already
                raise InputError("--mixed auto needs calibration images; pass --calib-data")
            mixed_pre, keep_high = _int8_mixed(pre, int8_pre, calib, cache, config, spec, record, out, say)
            final = finalize(mixed_pre, spec, nms=config.nms, precision="int8", target="tensorrt")
            set_keep_high(final, keep_high)
            path = out / "model.int8-mixed.onnx"
            atomic_write_bytes(path, final.SerializeToString())
            report = lint_onnx(path, target_trt_majors=(10, 11))
            files["int8-mixed"], reports["int8-mixed"] = path, report
            say(f"wrote {path.name} ({len(keep_high['nodes'])} nodes kept {keep_high['dtype']}); "
                f"lint: {report.summary()}")
            for finding in report.errors + report.warnings:
                say(f"  {finding}")

    spec_out = spec.replace(nms=config.nms)
    spec_out.save(out / "spec.json")
    log_path = out / "export.json"
    payload = {
        "config": config.to_dict(),
        "files": {p: {"path": f.name, "sha256": sha256_file(f)} for p, f in files.items()},
        "lint": {p: r.to_dict() for p, r in reports.items()},
        "calibration": record,
        "versions": _versions(),
    }
    if "mixed" in record:
        payload["keep_high"] = record["mixed"]["keep_high"]
    atomic_write_text(log_path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return ExportResult(out, files, spec_out, reports, record, log_path)


def _cached(cache: CalibrationCache, name: str, record: dict[str, Any],
            make: Callable[[], onnx.ModelProto], extra: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    data = cache.get(name)
    if data is not None:
        record["cache_hits"].append(name)
        return onnx.load_from_string(data)
    model = make()
    cache.put(name, model.SerializeToString(), record=dict(extra) if extra else None)
    return model


def _int8_tensorrt(pre: onnx.ModelProto, calib: CalibrationSet, cache: CalibrationCache, config: ExportConfig,
                   spec: DetectorSpec, record: dict[str, Any], say: Echo) -> onnx.ModelProto:
    methods: Sequence[ModelOptMethod] = (
        ("entropy", "max") if config.calib_method == "auto" else ("max",) if config.calib_method == "max"
        else ("entropy",)
    )

    def quantize(method: ModelOptMethod) -> onnx.ModelProto:
        return _cached(cache, f"int8.{method}.onnx", record,
                       lambda: quantize_int8_tensorrt(pre, calib.batch, input_name=spec.io.input, method=method,
                                                      opset=config.opset))

    if len(methods) == 1:
        record["method"] = methods[0]
        return quantize(methods[0])
    heldout = _heldout(config, spec, calib)
    if heldout is None:
        record["method"] = "entropy"
        record["method_reason"] = ("calib_method=auto needs DATA/annotations/instances_val.json and DATA/val images "
                                   "outside the calibration set; none found, so entropy (ModelOpt's default)")
        say(f"int8: {record['method_reason']}")
        return quantize("entropy")
    ann, files, ids, batch, metas = heldout
    aps: dict[str, float] = {"fp32": heldout_ap(pre, spec, batch, metas, ids, ann)}
    models: dict[str, onnx.ModelProto] = {}
    for method in methods:
        models[method] = quantize(method)
        aps[method] = heldout_ap(models[method], spec, batch, metas, ids, ann)
    best = max(methods, key=lambda m: (aps[m], m == "entropy"))
    record.update(method=best, heldout_images=[p.name for p in files], heldout_AP=aps)
    say("int8 calibration (held-out AP on " + f"{len(files)} images): "
        + ", ".join(f"{k} {v:.4f}" for k, v in aps.items()) + f" -> {best}")
    return models[best]


def _int8_mixed(pre: onnx.ModelProto, int8: onnx.ModelProto | None, calib: CalibrationSet,
                cache: CalibrationCache, config: ExportConfig, spec: DetectorSpec, record: dict[str, Any],
                out: Path, say: Echo) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``--mixed auto``: sensitivity, the greedy search and the kept units' dtype (`retinaedge.export.mixed`).

    Writes ``sensitivity.json`` and ``sensitivity.png`` into ``out`` and ``record["mixed"]``.

    Returns:
        (the mixed pre-NMS Q/DQ model, the ``keep_high`` object for its metadata).

    Raises:
        InputError: no held-out split (``DATA/annotations/instances_val.json`` and val images), no int8 model.
    """
    import hashlib
    import time

    from retinaedge.export import mixed

    if int8 is None:
        raise InputError("--mixed auto refines the int8 export; add int8 to --precision")
    t_start = time.perf_counter()
    heldout = _heldout(config, spec, calib)
    if heldout is None:
        raise InputError(f"--mixed auto measures AP on a held-out split, but {config.calib_data} has no "
                         "annotations/instances_val.json with val images outside the calibration set; "
                         "pass --calib-data DATA with DATA/annotations/instances_val.json and DATA/val/")
    gt, held_files, ids, batch, metas = heldout
    scorer = mixed.Scorer(spec, mixed.HeldOut(batch, metas, ids, gt))
    method: ModelOptMethod = record.get("method", "entropy")
    ap_fp32, ref = scorer.run(pre)
    ap_ptq, _ = scorer.run(int8)
    threshold = config.gate * ap_fp32
    say(f"int8-mixed: held-out {len(held_files)} images, AP fp32 {ap_fp32:.4f}, PTQ {ap_ptq:.4f} "
        f"({100 * ap_ptq / ap_fp32 if ap_fp32 > 0 else 0:.2f}%), gate {100 * config.gate:.2f}%")
    units = mixed.find_units(pre, int8, config.mixed_unit)
    say(f"int8-mixed: {len(units)} {config.mixed_unit} units, 2 ORT passes each "
        f"(~{2 * len(units) * scorer.seconds / max(scorer.calls, 1):.0f} s)")
    sens = mixed.rank(mixed.measure_sensitivity(pre, int8, units, scorer, ap_fp32=ap_fp32, ap_ptq=ap_ptq,
                                                ref_outputs=ref, say=say), spec.io.cls_logits)
    ranked = [s.unit for s in sens]
    by_name = {u.name: u for u in units}
    t_sens = time.perf_counter() - t_start

    def excluded(names: Sequence[str]) -> list[str]:
        return [n for u in names for n in by_name[u].nodes]

    def real(names: tuple[str, ...], dtype: HighDtype) -> onnx.ModelProto:
        digest = hashlib.sha256("\n".join(sorted(excluded(names))).encode()).hexdigest()[:16]
        return _cached(cache, f"int8-mixed.{method}.{dtype}.{digest}.onnx", record,
                       lambda: quantize_int8_tensorrt(pre, calib.batch, input_name=spec.io.input, method=method,
                                                      opset=config.opset, exclude_nodes=excluded(names),
                                                      high_precision_dtype=dtype))

    models: dict[tuple[str, ...], onnx.ModelProto] = {(): int8}

    def evaluate(names: tuple[str, ...]) -> float:
        if not names:
            return ap_ptq
        models[names] = real(names, "fp32")
        return scorer.run(models[names])[0]

    search = mixed.greedy_keep_high(ranked, evaluate, ap_fp32=ap_fp32, gate=config.gate,
                                    max_units=config.mixed_max_units, start=0, say=say)
    # the trade-off curve past the search, estimated by bypassing Q/DQ in the PTQ model (no recalibration)
    curve_est: list[tuple[int, float]] = [(0, ap_ptq)]
    for k in range(1, min(len(ranked), 20) + 1):
        nodes = {n for u in ranked[:k] for n in by_name[u].quantized}
        curve_est.append((k, scorer.run(mixed.bypass_qdq(int8, pre, nodes))[0]))
    chosen = search.chosen
    if chosen is None:
        best = max(search.steps, key=lambda st: st.ap)
        say(f"int8-mixed: no set of up to {search.steps[-1].k} units reached the gate; keeping the best "
            f"({best.k} units, {100 * best.retained:.2f}%)")
        chosen = best.units
    dtype_check: dict[str, Any] = {}
    dtype: HighDtype = "fp32" if config.mixed_dtype == "fp32" else "fp16"
    result = models.get(chosen, int8)
    if chosen and config.mixed_dtype != "fp32":
        m16 = real(chosen, "fp16")
        ap16 = scorer.run(m16)[0]
        ap32 = next(st.ap for st in search.steps if st.units == chosen)
        # FP16 "hurts" when it drops the set below the gate or costs more than 0.1 % of FP32's AP against FP32
        hurts = ap16 < threshold or ap16 < ap32 - 0.001 * ap_fp32
        dtype_check = {"AP_fp16": ap16, "AP_fp32": ap32, "fp16_hurts": hurts}
        if config.mixed_dtype == "fp16" or not hurts:
            result = m16
        else:
            dtype = "fp32"
        say(f"int8-mixed: kept units in FP16 AP {ap16:.4f}, in FP32 AP {ap32:.4f} -> {dtype}")
    keep = mixed.keep_high_record(units, chosen, dtype, {n.name for n in pre.graph.node})
    final_ap = next((st.ap for st in search.steps if st.units == chosen), ap_ptq)
    if dtype_check and dtype == "fp16":
        final_ap = dtype_check["AP_fp16"]
    seconds = time.perf_counter() - t_start
    mixed_record = {
        "granularity": config.mixed_unit, "gate": config.gate, "method": method,
        "heldout_images": [p.name for p in held_files], "AP_fp32": ap_fp32, "AP_ptq": ap_ptq, "AP_mixed": final_ap,
        "retained_ptq": ap_ptq / ap_fp32 if ap_fp32 > 0 else None,
        "retained_mixed": final_ap / ap_fp32 if ap_fp32 > 0 else None,
        "passed": final_ap >= threshold, "chosen_units": list(chosen), "keep_high": keep, "dtype_check": dtype_check,
        "search": [asdict(st) for st in search.steps], "curve_estimate": curve_est,
        "seconds": {"sensitivity": t_sens, "total": seconds}, "ort_runs": scorer.calls,
    }
    mixed.write_sensitivity(out / "sensitivity.json", {**mixed_record, "units": mixed.sensitivity_rows(sens)})
    mixed.plot_sensitivity(out / "sensitivity.png", sens, [(st.k, st.ap) for st in search.steps], curve_est,
                           ap_fp32=ap_fp32, gate=config.gate, chosen_k=len(chosen))
    record["mixed"] = mixed_record
    say(f"int8-mixed: {len(chosen)} unit(s) kept {dtype} ({', '.join(chosen) or 'none'}): held-out AP "
        f"{final_ap:.4f} ({100 * final_ap / ap_fp32 if ap_fp32 > 0 else 0:.2f}%), {seconds:.0f} s, "
        f"{scorer.calls} ORT passes; sensitivity.json, sensitivity.png")
    return result, keep


def _heldout(config: ExportConfig, spec: DetectorSpec, calib: CalibrationSet
             ) -> tuple[Any, list[Path], list[int], np.ndarray, list[Letterbox]] | None:
    """The val images listed in the annotation file and not used for calibration, with their ids and GT.

    Each ``file_name`` is found as the training loader finds it (`retinaedge.runtime.cocoeval.image_file`:
    sub-folders, and exporters' ``images/x.jpg`` or absolute paths for a flat folder); the first
    ``config.heldout_images`` decodable files in path order are used.
    """
    if config.calib_data is None:
        return None
    from retinaedge.runtime.cocoeval import image_file, load_coco, split_layout

    ann_file, folder = split_layout(config.calib_data, "val")
    if not ann_file.is_file() or not folder.is_dir():
        return None
    gt = load_coco(ann_file)
    used = {p.resolve() for p in calib.files}
    by_path: dict[Path, int] = {}
    for img in gt.dataset.get("images", []):
        name = img.get("file_name")
        if not name:
            continue
        path = image_file(folder, str(name))
        if path.is_file() and path.resolve() not in used:
            by_path.setdefault(path, int(img["id"]))
    if not by_path:
        return None
    held = load_calibration_set(sorted(by_path), spec, limit=config.heldout_images)
    return gt, list(held.files), [by_path[p] for p in held.files], held.batch, list(held.metas)


def detect_pre_nms(outputs: Mapping[str, np.ndarray], spec: DetectorSpec,
                   metas: Sequence[Letterbox]) -> list[Detections]:
    """Raw heads -> `Detections` with the numpy EfficientNMS twin (`retinaedge.runtime.nms.efficient_nms`).

    Args:
        outputs: ``cls_logits`` (B, N, K) and ``box_deltas`` (B, N, 4) raw (unclamped) outputs.
        metas: the `Letterbox` of each image.

    Returns:
        B `Detections` in original-image pixels.
    """
    from retinaedge.runtime.postprocess import to_detections

    # the pre-NMS graph ends before the weight-undo and clamp passes; the runtime's raw path does the rest
    # (clamp, cached anchors, EfficientNMS twin, score filter, letterbox back-mapping) exactly as it does
    # for every deployed model
    deltas = outputs[spec.io.box_deltas].astype(np.float32) / np.asarray(spec.box_coding.weights, np.float32)
    return to_detections({spec.io.cls_logits: outputs[spec.io.cls_logits], spec.io.box_deltas: deltas},
                         spec, metas)


def run_pre_nms(model: onnx.ModelProto, batch: np.ndarray, *, input_name: str, chunk: int = 8
                ) -> dict[str, np.ndarray]:
    """Run a pre-NMS model in ONNX Runtime (CPU) over ``batch`` in chunks; outputs concatenated by name."""
    from retinaedge.runtime._lazy import require

    ort = require("onnxruntime", purpose="running exported models")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(batch), chunk):
        for n, v in zip(names, sess.run(None, {input_name: batch[i : i + chunk]}), strict=True):
            parts[n].append(v)
    return {n: np.concatenate(v) for n, v in parts.items()}


def heldout_ap(model: onnx.ModelProto, spec: DetectorSpec, batch: np.ndarray, metas: Sequence[Letterbox],
               image_ids: Sequence[int], gt: Any) -> float:
    """pycocotools AP of a pre-NMS model on preprocessed images with known COCO ids."""
    from retinaedge.runtime.cocoeval import coco_evaluate

    outputs = run_pre_nms(model, batch, input_name=spec.io.input)
    dets = detect_pre_nms(outputs, spec, metas)
    metrics = coco_evaluate(gt, dict(zip(image_ids, dets, strict=True)), spec.category_ids, spec.class_names)
    return float(metrics["AP"])


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "onnx", "onnxruntime", "onnx-graphsurgeon", "nvidia-modelopt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out

