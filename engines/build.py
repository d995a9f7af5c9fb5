"""retinaedge.engines.build: (placeholder, to be written)."""
