"""retinaedge.train.postprocess: (placeholder, to be written)."""
