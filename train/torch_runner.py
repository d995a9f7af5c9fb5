"""retinaedge.train.torch_runner: (placeholder, to be written)."""
