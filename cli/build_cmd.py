"""retinaedge.cli.build_cmd: (placeholder, to be written)."""
