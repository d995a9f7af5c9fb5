"""retinaedge.runtime.compare: (placeholder, to be written)."""
