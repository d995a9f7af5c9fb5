"""retinaedge.train.data.coco: (placeholder, to be written)."""
