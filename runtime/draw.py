"""retinaedge.runtime.draw: (placeholder, to be written)."""
