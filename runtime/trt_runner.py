"""retinaedge.runtime.trt_runner: (placeholder, to be written)."""
