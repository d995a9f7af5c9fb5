"""`retinaedge infer` with an `edge` ONNX on CPU, as an edge box runs it (issue 5):

* never imports torch (checked in the measured process: its ``sys.modules`` at exit; and a second run with
  ``torch`` blocked must still work);
* peak RSS <= 300 MB (the child's own ``VmHWM``, reported by the child at exit: ``ru_maxrss`` from ``os.wait4``
  would include this parent's RSS, which Linux carries over ``exec``);
* first detection <= 2 s after process start (the parent starts the clock before spawning the process and
  polls ``detections.jsonl`` for its first complete line).

Peer in the same run: the same command's time to first detection with the model swapped for nothing — the bare
``python -c "import retinaedge.cli"`` start-up — printed as the share of the budget the interpreter alone takes.

    .venv/bin/python benchmarks/bench_edge_memory.py --model demo_out/export/model.fp32.onnx
    .venv/bin/python benchmarks/bench_edge_memory.py          # default: random-weight edge export + synthetic clip

Writes ``benchmarks/out/bench_edge_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
RSS_GOAL_MB = 300.0
FIRST_GOAL_S = 2.0

# The console script's body (`retinaedge.cli:main`), plus one report line about torch at exit.
CHILD = """
import json, sys
if {block}:
    sys.modules["torch"] = None
    sys.modules["torchvision"] = None
from retinaedge.cli import main
rc = main({argv!r})
torch = sorted(m for m, v in sys.modules.items() if m.split(".")[0] in ("torch", "torchvision") and v is not None)
from retinaedge.runtime.bench import peak_rss_mb  # VmHWM: this program's own peak, not the spawning parent's
print("EDGE-REPORT " + json.dumps({{"rc": rc, "torch_modules": torch[:5], "peak_rss_mb": peak_rss_mb()}}),
      flush=True)
sys.exit(rc)
"""


def measure(argv: list[str], out_dir: Path, *, block_torch: bool, timeout: float = 300.0) -> dict:
    """Run the infer command in a child; time to first JSONL line, peak RSS, torch modules."""
    jsonl = out_dir / "detections.jsonl"
    code = CHILD.format(block=block_torch, argv=argv)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    with tempfile.TemporaryFile("w+") as log_out, tempfile.TemporaryFile("w+") as log_err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log_out, stderr=log_err, text=True, env=env)
        first = None
        while first is None and proc.poll() is None and time.perf_counter() - start < timeout:
            if jsonl.is_file():
                with open(jsonl, encoding="utf-8") as f:
                    if f.readline().endswith("\n"):
                        first = time.perf_counter() - start
                        break
            time.sleep(0.005)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        log_out.seek(0)
        log_err.seek(0)
        stdout, stderr = log_out.read(), log_err.read()
    rc = os.waitstatus_to_exitcode(status)
    report = next((json.loads(ln.split(" ", 1)[1]) for ln in stdout.splitlines() if ln.startswith("EDGE-REPORT")),
                  None)
    if first is None and jsonl.is_file() and jsonl.read_text().strip():
        first = float("nan")  # finished between two polls: cannot say when
    # the child's own VmHWM; wait4's ru_maxrss would include this (parent) process's RSS carried over exec
    peak = float("nan") if report is None else report["peak_rss_mb"]
    return {"rc": rc, "first_detection_s": first, "wall_s": wall, "peak_rss_mb": peak,
            "ru_maxrss_mb_incl_parent": usage.ru_maxrss / 1024.0,
            "torch_modules": None if report is None else report["torch_modules"],
            "stderr_tail": stderr.strip().splitlines()[-3:]}


def bare_startup() -> dict:
    """Peer: interpreter + `import retinaedge.cli` alone, time and peak RSS (VmHWM)."""
    code = "import retinaedge.cli; from retinaedge.runtime.bench import peak_rss_mb; print(peak_rss_mb())"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": float(proc.stdout.strip().splitlines()[-1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="edge .onnx (default: random-weight edge export)")
    ap.add_argument("--source", type=Path, default=None, help="video or image folder (default: synthetic clip)")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_video import default_model, default_video  # same defaults as the video benchmark

    OUT.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model(OUT)
    source = args.source or default_video(OUT, args.frames)
    print(f"model {model} ({model.stat().st_size / 2**20:.1f} MiB)\nsource {source}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for block in (False, True):
                out = Path(tmp) / f"{r}-{block}"
                argv = ["infer", "--model", str(model), "--source", str(source), "--out", str(out), "--quiet"]
                res = measure(argv, out, block_torch=block)
                res["torch_blocked"] = block
                runs.append(res)
                print(f"  run {r + 1} torch {'blocked' if block else 'allowed'}: rc {res['rc']}, first detection "
                      f"{res['first_detection_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB, wall "
                      f"{res['wall_s']:.1f} s, torch modules {res['torch_modules']}", flush=True)
    peer = bare_startup()
    ok_runs = [r for r in runs if r["rc"] == 0]
    firsts = sorted(r["first_detection_s"] for r in ok_runs if r["first_detection_s"] == r["first_detection_s"])
    first = firsts[len(firsts) // 2] if firsts else float("nan")
    peak = max((r["peak_rss_mb"] for r in ok_runs), default=float("nan"))
    no_torch = all(r["torch_modules"] == [] for r in ok_runs) and len(ok_runs) == len(runs)
    print(f"\nbare `import retinaedge.cli`: {peer['wall_s']:.2f} s, {peer['peak_rss_mb']:.0f} MB "
          f"({peer['wall_s'] / first:.0%} of the time to first detection)" if first == first else "")
    first_ok = "ok" if first <= FIRST_GOAL_S else "MISS"
    print(f"first detection (median) {first:.2f} s (goal <= {FIRST_GOAL_S} s: {first_ok})"
          f" | peak RSS {peak:.0f} MB (goal <= {RSS_GOAL_MB:.0f}: {'ok' if peak <= RSS_GOAL_MB else 'MISS'})"
          f" | torch never imported: {'yes' if no_torch else 'NO'}")
    result = {"model": str(model), "source": str(source), "runs": runs, "peer_bare_import": peer,
              "median_first_detection_s": first, "max_peak_rss_mb": peak, "torch_never_imported": no_torch,
              "goals": {"first_detection_s": FIRST_GOAL_S, "peak_rss_mb": RSS_GOAL_MB}}
    (OUT / "bench_edge_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT / 'bench_edge_memory.json'}")
    return 0 if no_torch and first <= FIRST_GOAL_S and peak <= RSS_GOAL_MB else 1


if __name__ == "__main__":
    sys.exit(main())
