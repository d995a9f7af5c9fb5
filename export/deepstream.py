"""retinaedge.export.deepstream: (placeholder, to be written)."""
