"""retinaedge.train.trainer: (placeholder, to be written)."""
