"""retinaedge.runtime.models: (placeholder, to be written)."""
