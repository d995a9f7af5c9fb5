"""retinaedge.train.evaluate: (placeholder, to be written)."""
