"""retinaedge.export."""
