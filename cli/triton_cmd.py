"""retinaedge.cli.triton_cmd: (placeholder, to be written)."""
