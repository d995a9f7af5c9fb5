"""retinaedge.train.data.synth: (placeholder, to be written)."""
