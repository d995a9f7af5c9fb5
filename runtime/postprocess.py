"""retinaedge.runtime.postprocess: (placeholder, to be written)."""
