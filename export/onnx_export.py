"""retinaedge.export.onnx_export: (placeholder, to be written)."""
