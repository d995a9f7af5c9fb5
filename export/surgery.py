"""retinaedge.export.surgery: (placeholder, to be written)."""
