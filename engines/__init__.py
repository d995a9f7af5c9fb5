"""retinaedge.engines."""
