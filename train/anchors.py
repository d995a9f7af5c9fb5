"""retinaedge.train.anchors: (placeholder, to be written)."""
