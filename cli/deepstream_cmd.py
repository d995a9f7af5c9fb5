"""retinaedge.cli.deepstream_cmd: (placeholder, to be written)."""
