"""retinaedge.train."""
