"""retinaedge.train.data.video_synth: (placeholder, to be written)."""
