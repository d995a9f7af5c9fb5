"""retinaedge.runtime.video: (placeholder, to be written)."""
