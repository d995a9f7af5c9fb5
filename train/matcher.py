"""retinaedge.train.matcher: (placeholder, to be written)."""
