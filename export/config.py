"""retinaedge.export.config: (placeholder, to be written)."""
