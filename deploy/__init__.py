"""Deployment writers: what serves a built model, not what builds it.

`triton` writes a Triton model repository for an engine (TensorRT backend) or an ONNX (ONNX Runtime backend);
`deepstream` writes a Gst-nvinfer config, labels and a bbox parser for an EfficientNMS engine. Both consume the
artifacts of export/ and engines/ and read them the way the runtime does (`retinaedge.runtime.onnxinfo` for an
ONNX, `retinaedge.runtime.engine_meta` for an engine's sidecar), so they sit beside export and engines in the
stack, import neither, and never import torch.
"""
