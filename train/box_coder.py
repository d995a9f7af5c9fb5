"""retinaedge.train.box_coder: (placeholder, to be written)."""
