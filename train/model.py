"""retinaedge.train.model: (placeholder, to be written)."""
