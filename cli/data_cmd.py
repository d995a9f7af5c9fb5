"""retinaedge.cli.data_cmd: (placeholder, to be written)."""
