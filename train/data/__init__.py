"""retinaedge.train.data."""
