"""A FIXTURE engine for the deployment writers' tests: placeholder bytes, not a TensorRT plan, and a sidecar
written by `retinaedge.runtime.engine_meta.EngineSidecar`, the writer ``retinaedge build`` uses
(engines/build.py: ``EngineSidecar(...).save(sidecar_path(engine_path))``), so its format is the real one."""

from __future__ import annotations

from pathlib import Path

from retinaedge.runtime.engine_meta import EngineSidecar, sidecar_path
from retinaedge.runtime.io import sha256_file
from retinaedge.runtime.spec import DetectorSpec


def write_engine_fixture(folder: Path, spec: DetectorSpec, *, precision: str = "fp16", batch: object = (1, 4, 8),
                         onnx_path: Path | None = None) -> Path:
    """``folder/model.<precision>.engine`` and its ``.engine.json``; ``batch`` is the sidecar's min/opt/max
    profile (engines/build.py writes ``list(batch)``; pass a malformed value to test the readers)."""
    engine = folder / f"model.{precision}.engine"
    engine.write_bytes(b"FIXTURE-not-a-real-TensorRT-plan")
    EngineSidecar(
        trt_version="10.3.0", device_name="FIXTURE GPU", compute_capability=(8, 7), precision=precision,
        spec=spec.to_dict(), onnx_sha256=sha256_file(onnx_path) if onnx_path else "0" * 64, calib_hash=None,
        build_options={"batch": list(batch) if isinstance(batch, tuple) else batch, "workspace_mb": 1024},
        build_time_s=1.0, layer_precisions={"fp16": 0.9, "fp32": 0.1},
    ).save(sidecar_path(engine))
    return engine
