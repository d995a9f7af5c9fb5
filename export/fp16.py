"""retinaedge.export.fp16: (placeholder, to be written)."""
