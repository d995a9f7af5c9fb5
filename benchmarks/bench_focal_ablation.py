"""Focal-loss ablation (Lin et al. 2017, Table 1a/1b) on the default synthetic set, every run on the same budget.

Runs ``retinaedge train --config edge --time-budget BUDGET`` (each in a fresh process) with:

1. focal loss, gamma=2, alpha=0.25, prior pi=0.01 (the paper's setting, the ``edge`` preset);
2. alpha-balanced cross entropy, gamma=0, for each alpha in ``--alphas``; the best is reported as "best alpha";
3. plain cross entropy, gamma=0, alpha=-1 (no weighting), *without* the prior init (pi=0.5, bias 0).

A run whose loss turns NaN/inf is reported as diverged (the trainer stops and names the step), not dropped.
Prints a table of AP/AP50 and the ratios focal / best alpha-balanced CE and focal / plain CE, and states
whether the paper's ordering (focal > alpha-CE > plain CE) holds here.

    .venv/bin/python benchmarks/bench_focal_ablation.py                       # 5 runs x 10 min
    .venv/bin/python benchmarks/bench_focal_ablation.py --budget 3 --alphas 0.25,0.75
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# one data default and one generator call for every benchmark script (run as `python benchmarks/...py`)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_edge_train import OUT, ensure_data


def run(name: str, sets: list[str], *, data: Path, out: Path, budget: float, config: str) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "retinaedge.cli", "train", "--data", str(data), "--config", config,
           "--time-budget", str(budget), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    shown = " ".join(["retinaedge", *cmd[3:]])
    print(f"\n== {name}\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    sys.stderr.write(proc.stderr[-4000:])
    row = {"name": name, "sets": sets, "command": shown, "wall_s": round(wall, 1)}
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip()]
        row.update(status="diverged" if "loss is" in (last[-1] if last else "") else "failed",
                   error=last[-1] if last else f"exit code {proc.returncode}", AP=0.0, AP50=0.0)
        return row
    m = json.loads((out / "metrics.json").read_text())
    row.update(status="ok", AP=m["AP"], AP50=m["AP50"], AP75=m["AP75"], steps=m["step"],
               train_img_per_s=m["train_img_per_s"])
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=OUT / "synth")
    p.add_argument("--budget", type=float, default=10.0, help="training minutes per run (default 10)")
    p.add_argument("--alphas", default="0.25,0.5,0.75", help="alpha values of the alpha-balanced CE runs")
    p.add_argument("--config", default="edge")
    p.add_argument("--out", type=Path, default=OUT / "focal_ablation")
    p.add_argument("--json", type=Path, default=OUT / "bench_focal_ablation.json")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    data = ensure_data(args.data)
    alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    common = dict(data=data, budget=args.budget, config=args.config)

    focal = run("focal gamma=2 alpha=0.25 (pi=0.01)", ["loss.gamma=2.0", "loss.alpha=0.25", "model.prior_prob=0.01"],
                out=args.out / "focal", **common)
    ce_rows = [run(f"alpha-CE gamma=0 alpha={a:g} (pi=0.01)", ["loss.gamma=0.0", f"loss.alpha={a}",
                                                              "model.prior_prob=0.01"],
                   out=args.out / f"ce_alpha{a:g}", **common) for a in alphas]
    plain = run("plain CE gamma=0 alpha=-1, no prior (pi=0.5)", ["loss.gamma=0.0", "loss.alpha=-1",
                                                                "model.prior_prob=0.5"],
                out=args.out / "plain_ce", **common)
    best_ce = max(ce_rows, key=lambda r: r["AP"])

    rows = [focal, *ce_rows, plain]
    print(f"\nbudget {args.budget:g} min per run, data {data}")
    print(f"{'run':<46} {'AP':>7} {'AP50':>7} {'status':>9}")
    for r in rows:
        mark = "  <- best alpha" if r is best_ce and len(ce_rows) > 1 else ""
        print(f"{r['name']:<46} {r['AP']:7.4f} {r['AP50']:7.4f} {r['status']:>9}{mark}")

    def ratio(a: dict, b: dict, key: str) -> float | None:
        return round(a[key] / b[key], 3) if b[key] > 0 else None

    summary = {
        "budget_min": args.budget, "data": str(data), "rows": rows, "best_alpha": best_ce["name"],
        "focal_over_best_alpha_ce": {"AP": ratio(focal, best_ce, "AP"), "AP50": ratio(focal, best_ce, "AP50")},
        "focal_over_plain_ce": {"AP": ratio(focal, plain, "AP"), "AP50": ratio(focal, plain, "AP50")},
    }
    holds = focal["AP"] > best_ce["AP"] >= plain["AP"]
    summary["paper_direction_holds"] = holds
    print(f"\nfocal / best alpha-CE: AP x{summary['focal_over_best_alpha_ce']['AP']}, "
          f"AP50 x{summary['focal_over_best_alpha_ce']['AP50']}")
    print(f"focal / plain CE:      AP x{summary['focal_over_plain_ce']['AP']}, "
          f"AP50 x{summary['focal_over_plain_ce']['AP50']}")
    print("paper's ordering focal > alpha-balanced CE >= plain CE: " + ("holds" if holds else "does NOT hold here"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
