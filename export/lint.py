"""retinaedge.export.lint: (placeholder, to be written)."""
