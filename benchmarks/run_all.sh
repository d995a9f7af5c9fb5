#!/usr/bin/env bash
# Every benchmark behind benchmarks/RESULTS.md, in the order RESULTS.md lists them (about 1.5 h on 2 cores).
# Each script measures against its peer in the same run and prints a ratio; JSON goes to benchmarks/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/out
mkdir -p "$OUT"
$PY benchmarks/bench_edge_train.py --budget 10 --no-peer --json $OUT/bench_edge_train.json   # edge, 10 min, AP50
$PY benchmarks/bench_focal_ablation.py --budget 5 --alphas 0.25,0.75                          # paper Table 1 direction
$PY benchmarks/bench_train_throughput.py --json $OUT/bench_train_throughput.json             # vs torchvision RetinaNet
CKPT=$OUT/edge_train/ckpt_best.pt
DATA=$OUT/synth
$PY benchmarks/bench_export_cpu.py --checkpoint $CKPT --data $DATA                              # ORT vs torch, int8-cpu vs fp32, AP retention
$PY benchmarks/bench_postprocess.py --json $OUT/bench_postprocess.json                        # numpy EfficientNMS vs torchvision
$PY benchmarks/bench_video.py --model $OUT/export/models/model.fp32.onnx --video $DATA/video.mp4 # pipeline vs model-only fps
$PY benchmarks/bench_edge_memory.py --model $OUT/export/models/model.fp32.onnx                  # RSS and first detection
