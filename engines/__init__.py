"""retinaedge.engines: TensorRT engines from exported ONNX files (GPU host; TensorRT imported lazily).

* `retinaedge.engines.capability`: what the installed TensorRT offers (by feature) and which build path
  honours a precision (`detect`, `choose_path`);
* `retinaedge.engines.build`: `build_engine(BuildConfig)` -> ``model.<precision>.engine`` + ``.engine.json``;
* `retinaedge.engines.calibrator`: the weakly-typed INT8 calibrator's host side and cache key.
"""
