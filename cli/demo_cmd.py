"""retinaedge.cli.demo_cmd: (placeholder, to be written)."""
