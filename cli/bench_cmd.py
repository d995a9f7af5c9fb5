"""retinaedge.cli.bench_cmd: (placeholder, to be written)."""
