"""retinaedge.cli.train_cmd: (placeholder, to be written)."""
