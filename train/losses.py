"""retinaedge.train.losses: (placeholder, to be written)."""
