"""retinaedge.cli.infer_cmd: (placeholder, to be written)."""
