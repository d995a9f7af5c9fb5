"""``make gpu-check`` step 3b (scripts/gpu_check.sh): the inspector-JSON dump runs, here against a stand-in
``tensorrt`` module that serves NVIDIA's own example JSON (tests/engines/data), so a GPU user's first run does not
stop on a typo in it. Nothing TensorRT-specific is proven; the real JSON is what the step exists to collect."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from retinaedge.runtime.engine_meta import EngineSidecar, sidecar_path
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec

ROOT = Path(__file__).resolve().parents[2]
FAKE_TRT = '''
import os
__version__ = "10.3.0"
class Logger:
    WARNING = 2
    def __init__(self, severity=2):
        pass
class LayerInformationFormat:
    JSON = 1
class _Inspector:
    def get_engine_information(self, fmt):
        return open(os.environ["FAKE_INSPECTOR_JSON"]).read()
class _Engine:
    def create_engine_inspector(self):
        return _Inspector()
class Runtime:
    def __init__(self, logger):
        pass
    def deserialize_cuda_engine(self, data):
        return _Engine()
'''


def test_inspector_dump_step_runs(tmp_path):
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    snippet = re.search(r"<<'PYEOF'\n(.*?)\nPYEOF\n", script, re.S)
    assert snippet is not None
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "tensorrt.py").write_text(FAKE_TRT)
    spec = DetectorSpec(class_names=("a",), input_height=64, input_width=64,
                        anchors=AnchorSpec(strides=(16, 32), sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0,)))
    builds = (("fp16", "strongly-typed"), ("fp16-weak-flag", "weakly-typed"), ("fp16-again", "strongly-typed"))
    for name, path in builds:
        engine = tmp_path / "engines" / name / "model.fp16.engine"
        engine.parent.mkdir(parents=True)
        engine.write_bytes(b"PLAN")
        EngineSidecar(trt_version="10.3.0", device_name="GPU", compute_capability=(8, 7), precision="fp16",
                      spec=spec.to_dict(), onnx_sha256="0" * 64,
                      build_options={"path": path, "calibrator": False, "dla_core": None}).save(sidecar_path(engine))
    (tmp_path / "out").mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"),
           "FAKE_INSPECTOR_JSON": str(Path(__file__).parent / "data" / "trex-resnet-fp16.graph.json")}
    run = subprocess.run([sys.executable, "-", str(tmp_path / "engines"), str(tmp_path / "out")],
                         input=snippet.group(1), text=True, capture_output=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    # one engine per build path: fp16-again (same path as fp16) is skipped
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fp16-weak-flag.json", "fp16.json"]
    assert "### fp16: strongly-typed fp16" in run.stdout and "schema 8.6/10.x; 36 layers" in run.stdout
