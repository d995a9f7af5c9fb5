"""retinaedge.export.int8: (placeholder, to be written)."""
