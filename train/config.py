"""retinaedge.train.config: (placeholder, to be written)."""
