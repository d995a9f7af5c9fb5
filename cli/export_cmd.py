"""retinaedge.cli.export_cmd: (placeholder, to be written)."""
