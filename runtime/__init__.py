"""retinaedge.runtime: run exported detectors (ONNX Runtime on CPU, TensorRT via PyCUDA on GPU).

Imports nothing of the other stages and never torch, so a Jetson needs only this package,
``retinaedge.engines``, numpy/pillow/av and the system TensorRT and PyCUDA.
"""

from retinaedge.runtime.spec import DetectorSpec

__all__ = ["DetectorSpec"]
