"""retinaedge.runtime: run exported detectors (ONNX Runtime on CPU, TensorRT via PyCUDA on GPU).

Imports nothing of the other stages and never torch, so a Jetson needs only this package,
``retinaedge.engines``, numpy/pillow/av and the system TensorRT and PyCUDA.

The package is two things (docs/ARCHITECTURE.md, "Layer rules"): the deployed stage (runners, models, engine
sidecars, CUDA, video and image runs, bench, validation) and the *shared kernel* that train/ and export/ use
as well, `SHARED_KERNEL`. The kernel imports no deployment module, and train/ and export/ import nothing else of
runtime/: both rules are import-linter contracts in pyproject.toml.
"""

from retinaedge.runtime.spec import DetectorSpec

SHARED_KERNEL: tuple[str, ...] = (
    "spec", "errors", "io", "_lazy", "preprocess", "detections", "cocoeval", "runner", "postprocess", "nms",
    "onnxinfo", "calibration",
)
"""The runtime modules every stage may import: the spec, errors, atomic file writes, lazy imports, the letterbox,
the `Detections` type, the COCO readers and scoring, the `Runner` interface (the torch runner implements it
too) and the exported graph's post-processing and NMS in numpy (export scores its held-out set with them), and what an
exported ONNX says about itself (`onnxinfo.describe_onnx`); which images calibrate INT8 and the calibration key
(`calibration`)."""

__all__ = ["SHARED_KERNEL", "DetectorSpec"]
