"""retinaedge.train.data.transforms: (placeholder, to be written)."""
