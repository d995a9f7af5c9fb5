"""retinaedge.cli.eval_cmd: (placeholder, to be written)."""
