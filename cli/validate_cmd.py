"""retinaedge.cli.validate_cmd: (placeholder, to be written)."""
