"""retinaedge.engines.capability: (placeholder, to be written)."""
