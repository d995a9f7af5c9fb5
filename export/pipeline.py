"""retinaedge.export.pipeline: (placeholder, to be written)."""
