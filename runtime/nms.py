"""retinaedge.runtime.nms: (placeholder, to be written)."""
