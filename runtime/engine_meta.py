"""retinaedge.runtime.engine_meta: (placeholder, to be written)."""
