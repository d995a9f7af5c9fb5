"""retinaedge.runtime.cuda: (placeholder, to be written)."""
