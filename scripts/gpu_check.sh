#!/usr/bin/env bash
# make gpu-check: everything that needs a GPU, on a host with TensorRT + PyCUDA (desktop or Jetson).
# NOT run in this project's CI (it has no GPU); the results are whatever this script writes on your machine.
#
#   1. environment: TensorRT version and capabilities, GPU name and compute capability
#   2. the demo's ONNX files (demo_out/export/, made with `retinaedge demo` if missing)
#   3. engines: FP32, FP16 and INT8 with `retinaedge build`, each on the path this TensorRT offers
#      (+ INT8 through the weakly-typed entropy calibrator where TensorRT still has one: 8.6 / 10.x)
#   3b. one engine's inspector JSON per build path (get_engine_information(JSON), DETAILED) into
#      $OUT/inspector/ and the report: the real 8.6 / 10.x / 11.x shape the CPU tests' fakes imitate
#   4. pytest -m "cuda or tensorrt"
#   5. each engine against ONNX Runtime on the same inputs: Polygraphy Comparator on the detection outputs
#      (min passing atol/rtol, error stats), then IoU-matched detections and AP via `retinaedge validate`
#   6. report: $OUT/report.md (+ logs, junit xml, compare.json, validate/)
#
# Environment overrides: PY, EXPORT (ONNX dir), DATA (COCO-layout data dir), OUT, WORKSPACE (MB), BATCH.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
RETINAEDGE=${RETINAEDGE:-"$PY -m retinaedge.cli"}
EXPORT=${EXPORT:-demo_out/export}
DATA=${DATA:-demo_out/data}
OUT=${OUT:-gpu_check_out}
WORKSPACE=${WORKSPACE:-2048}
BATCH=${BATCH:-1:4:8}
ENGINES="$OUT/engines"
mkdir -p "$OUT" "$ENGINES"
REPORT="$OUT/report.md"
failures=0
step() { echo; echo "== $*"; }
record() {  # record "name" rc [note]
  local status=PASS
  [ "$2" -eq 0 ] || { status=FAIL; failures=$((failures + 1)); }
  echo "| $1 | $status | ${3:-} |" >> "$REPORT.rows"
}
: > "$REPORT.rows"

step "1. environment"
$PY - > "$OUT/environment.json" <<'EOF'
import dataclasses, json
out = {}
try:
    import tensorrt
    from retinaedge.engines.capability import detect
    out["tensorrt"] = dataclasses.asdict(detect(tensorrt))
except Exception as e:  # report, do not stop: the steps below say what fails
    out["tensorrt"] = f"unavailable: {type(e).__name__}: {e}"
try:
    from retinaedge.runtime.cuda import PyCudaApi
    api = PyCudaApi(device=0)
    out["gpu"] = {"name": api.device_name(), "compute_capability": list(api.compute_capability())}
except Exception as e:
    out["gpu"] = f"unavailable: {type(e).__name__}: {e}"
print(json.dumps(out, indent=2))
EOF
rc=$?; cat "$OUT/environment.json"; record "environment (TensorRT + PyCUDA importable)" $rc
if ! $PY -c "import tensorrt, pycuda.driver" 2>/dev/null; then
  echo "TensorRT or PyCUDA is missing: see docs/GPU.md. Stopping." >&2
  { echo "# gpu-check report"; echo; echo "TensorRT or PyCUDA missing; nothing built."; } > "$REPORT"
  exit 2
fi

step "2. demo ONNX files ($EXPORT)"
if [ ! -f "$EXPORT/model.fp32.onnx" ]; then
  $RETINAEDGE demo --out demo_out > "$OUT/demo.log" 2>&1; record "retinaedge demo (CPU)" $? "log: demo.log"
fi
ls -l "$EXPORT" || true

step "3. engines"
build() {  # build NAME ONNX PRECISION [extra args]
  local name=$1 onnx=$2 precision=$3; shift 3
  if [ ! -f "$onnx" ]; then record "build $name" 1 "missing $onnx"; return; fi
  $RETINAEDGE build --onnx "$onnx" --out "$ENGINES/$name" --precision "$precision" --batch "$BATCH" \
    --workspace "$WORKSPACE" --timing-cache "$OUT/timing.cache" "$@" > "$OUT/build-$name.log" 2>&1
  record "build $name" $? "$(tail -n 1 "$OUT/build-$name.log")"
}
build fp32 "$EXPORT/model.fp32.onnx" fp32
build fp16 "$EXPORT/model.fp16.onnx" fp16
build int8 "$EXPORT/model.int8.onnx" int8
if $PY -c "import tensorrt as t, sys; sys.exit(0 if hasattr(t, 'IInt8EntropyCalibrator2') else 1)"; then
  build int8-calibrated "$EXPORT/model.fp32.onnx" int8 --calib-data "$DATA"
fi
if $PY -c "import tensorrt as t, sys; sys.exit(0 if hasattr(t.BuilderFlag, 'FP16') else 1)"; then
  build fp16-weak-flag "$EXPORT/model.fp32.onnx" fp16   # weakly typed: BuilderFlag.FP16 + the pinned FP32 tail
fi
if $PY -c "import tensorrt as t, sys; sys.exit(0 if t.Builder(t.Logger()).num_DLA_cores > 0 else 1)" 2>/dev/null; then
  BATCH=1 build fp16-dla "$EXPORT/model.fp16.onnx" fp16 --dla 0   # DLA needs a fixed profile (min = opt = max)
fi
# the same precisions again with the timing cache warm: seconds instead of minutes on a Jetson
build fp32-rebuild "$EXPORT/model.fp32.onnx" fp32

step "3b. engine inspector JSON, one engine per build path"
mkdir -p "$OUT/inspector"
$PY - "$ENGINES" "$OUT/inspector" > "$OUT/inspector.md" 2> "$OUT/inspector.log" <<'PYEOF'
import json, sys
from pathlib import Path
import tensorrt as trt
from retinaedge.engines.inspector import summarize
from retinaedge.runtime.engine_meta import EngineSidecar, sidecar_path

engines, out = Path(sys.argv[1]), Path(sys.argv[2])
seen = {}
for engine in sorted(engines.glob("*/model.*.engine")):
    side = EngineSidecar.load(sidecar_path(engine))
    opts = side.build_options
    key = (opts.get("path"), side.precision, bool(opts.get("calibrator")), opts.get("dla_core") is not None)
    if key in seen:
        continue
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if opts.get("dla_core") is not None:
        runtime.DLA_core = int(opts["dla_core"])
    if opts.get("version_compatible"):
        runtime.engine_host_code_allowed = True
    plan = runtime.deserialize_cuda_engine(engine.read_bytes())
    text = plan.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    name = engine.parent.name
    (out / f"{name}.json").write_text(text)
    seen[key] = name
    data = json.loads(text)
    head = {k: v for k, v in data.items() if k != "Layers"}
    head["Layers (first 6)"] = data.get("Layers", [])[:6]
    s = summarize(text)
    calib = " + calibrator" if key[2] else ""
    dla = " on DLA" if key[3] else ""
    print(f"### {name}: {key[0]} {key[1]}{calib}{dla}, TensorRT {trt.__version__}\n")
    print(f"schema {s.schema}; {s.num_layers} layers, {s.math_layers} with a math precision, shares {s.shares}, "
          f"{s.opaque} Myelin regions, {s.dla_layers} on the DLA. Whole JSON: inspector/{name}.json\n")
    print("```json\n" + json.dumps(head, indent=1)[:6000] + "\n```\n")
sys.exit(0 if seen else 1)
PYEOF
record "inspector JSON per build path" $? "inspector/*.json, shown at the end of this report"

step "4. pytest -m 'cuda or tensorrt'"
$PY -m pytest -q -p no:cacheprovider -m "cuda or tensorrt" -rs --junitxml "$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1
record "pytest -m 'cuda or tensorrt'" $? "$(tail -n 1 "$OUT/pytest.log")"

step "5. engines vs ONNX Runtime"
$PY - "$EXPORT" "$ENGINES" "$DATA" "$OUT/compare.json" > "$OUT/compare.log" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
from retinaedge.runtime.compare import compare_raw
from retinaedge.runtime.ort_runner import OrtRunner
from retinaedge.runtime.preprocess import list_images, load_image, preprocess_batch
from retinaedge.runtime.trt_runner import TrtRunner

export, engines, data, out = (Path(a) for a in sys.argv[1:5])
folder = data / "val" if (data / "val").is_dir() else data
rows, failed = [], 0
for engine in sorted(engines.glob("*/model.*.engine")):
    runner = TrtRunner(path=engine)
    onnx = Path(runner.sidecar.build_options["onnx"])
    reference = OrtRunner(path=onnx)
    images = [load_image(p) for p in list_images(folder)[:16]]
    batches = [preprocess_batch(images[i : i + 4], runner.spec)[0] for i in range(0, len(images), 4)]
    tol = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}[runner.precision]
    # sorted scores and counts do not depend on tie order; boxes are compared by IoU in `validate`
    result = compare_raw(reference, runner, batches, atol=tol, rtol=tol,
                         outputs=("num_detections", "detection_scores"))
    row = {"engine": str(engine), "onnx": str(onnx), "precision": runner.precision,
           "path": runner.sidecar.build_options.get("path"),
           "layer_precisions": runner.sidecar.layer_precisions,
           "outputs": [o.__dict__ for o in result.outputs]}
    rows.append(row)
    if runner.precision != "int8":  # INT8 is judged by ΔAP in `validate`, its raw error is informational
        failed += not all(o.passed for o in result.outputs)
    print(json.dumps(row))
out.write_text(json.dumps(rows, indent=2))
sys.exit(1 if failed or not rows else 0)
EOF
record "Polygraphy Comparator: engines vs ORT (counts, scores)" $? "compare.json"

if [ -f "$DATA/annotations/instances_val.json" ]; then
  $RETINAEDGE validate --data "$DATA" --models "$EXPORT" "$ENGINES"/* --report "$OUT/validate" \
    > "$OUT/validate.log" 2>&1
  record "retinaedge validate (IoU-matched detections, AP, gate)" $? "validate/report.md"
else
  record "retinaedge validate" 1 "no $DATA/annotations/instances_val.json"
fi

step "6. report"
{
  echo "# gpu-check report"
  echo
  echo "Generated by scripts/gpu_check.sh on $(hostname) at $(date -u +%FT%TZ). Environment:"
  echo
  echo '```json'; cat "$OUT/environment.json"; echo '```'
  echo
  echo "| step | result | note |"
  echo "|---|---|---|"
  cat "$REPORT.rows"
  echo
  echo "Engines and sidecars: $ENGINES/*/model.*.engine(.json). Logs: $OUT/*.log."
  echo
  echo "## Engine inspector JSON (one engine per build path; please send this section back)"
  echo
  cat "$OUT/inspector.md" 2>/dev/null || echo "(none: see inspector.log)"
} > "$REPORT"
rm -f "$REPORT.rows"
cat "$REPORT"
[ "$failures" -eq 0 ]
