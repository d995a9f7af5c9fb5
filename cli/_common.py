"""retinaedge.cli._common: (placeholder, to be written)."""
