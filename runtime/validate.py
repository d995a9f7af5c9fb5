"""retinaedge.runtime.validate: (placeholder, to be written)."""
