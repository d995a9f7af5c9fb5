"""retinaedge.export.calib: (placeholder, to be written)."""
