"""retinaedge.engines.calibrator: (placeholder, to be written)."""
