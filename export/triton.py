"""retinaedge.export.triton: (placeholder, to be written)."""
