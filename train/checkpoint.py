"""retinaedge.train.checkpoint: (placeholder, to be written)."""
