"""FP16 variant of the pre-NMS graph with NVIDIA ModelOpt AutoCast (``modelopt.onnx.autocast``).

AutoCast runs the FP32 graph on reference images and keeps in FP32 every node whose values leave FP16's safe
range (``data_max``); ``keep_io_types=True`` keeps the uint8/float32 input and the float32 head outputs. The
NMS tail (clamp, decode, sigmoid, plugin inputs) is appended afterwards in FP32 by
`retinaedge.export.surgery.finalize`, so confidences and ``exp`` never run in FP16.

onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)`` was tried first and produced a graph
ORT refuses for a uint8 input (it retypes the input Cast's output to float16 but keeps ``to=FLOAT``:
"Type (tensor(float16)) of output arg ... does not match expected type (tensor(float))").

ModelOpt is run in a separate process (`retinaedge.export.calib.run_isolated`): importing it patches
onnx-graphsurgeon and ONNX Runtime's quantization modules in place.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from retinaedge.export.calib import run_isolated


def _autocast_worker(*, src: str, dst: str, calib: str, opset: int) -> None:
    """Subprocess body: AutoCast ``src`` to FP16 and save it to ``dst``."""
    import contextlib
    import io
    import logging

    logging.getLogger("modelopt").setLevel(logging.ERROR)
    # imported inside the redirect: ModelOpt's log handler binds the stderr current at import time
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from modelopt.onnx.autocast import convert_to_mixed_precision

        model = convert_to_mixed_precision(
            onnx_path=src, low_precision_type="fp16", keep_io_types=True, calibration_data=calib,
            providers=["cpu"], opset=opset,
        )
    onnx.save(model, dst)


def to_fp16(pre_nms: onnx.ModelProto, sample: np.ndarray, *, input_name: str, opset: int) -> onnx.ModelProto:
    """Convert a pre-NMS graph to FP16, IO types kept.

    Args:
        pre_nms: the FP32 pre-NMS model (outputs ``cls_logits``, ``box_deltas``).
        sample: (B, 3, H, W) preprocessed images in the spec's input dtype; AutoCast's reference run.
        input_name: the graph input name.
        opset: opset to keep (AutoCast would otherwise raise FP16 graphs to 19, past TensorRT 8.6's 17).

    Returns:
        The FP16 model; inputs and outputs keep their FP32/uint8 types.
    """
    with tempfile.TemporaryDirectory(prefix="retinaedge-fp16-") as tmp:
        src, dst, calib = (str(Path(tmp) / n) for n in ("pre.onnx", "fp16.onnx", "calib.npz"))
        onnx.save(pre_nms, src)
        np.savez(calib, **{input_name: sample})  # type: ignore[arg-type]
        run_isolated(_autocast_worker, src=src, dst=dst, calib=calib, opset=opset)
        return onnx.load(dst)
