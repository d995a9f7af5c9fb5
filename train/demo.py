"""retinaedge.train.demo: (placeholder, to be written)."""
