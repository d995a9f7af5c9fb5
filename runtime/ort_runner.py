"""retinaedge.runtime.ort_runner: (placeholder, to be written)."""
