"""retinaedge.train.distributed: (placeholder, to be written)."""
