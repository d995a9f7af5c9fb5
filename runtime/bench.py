"""retinaedge.runtime.bench: (placeholder, to be written)."""
