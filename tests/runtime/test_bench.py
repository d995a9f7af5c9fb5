"""bench_runner timing (warm-up excluded), bench_model in a fresh process (cold start, peak RSS), the CLI."""

import json
import time

import numpy as np
import pytest

from retinaedge.runtime.bench import bench_model, bench_runner, synthetic_image
from retinaedge.runtime.errors import InputError, ModelError


def test_warmup_is_excluded_and_latency_is_measured(squares):
    class Sleepy(squares.OracleRunner):
        def infer_impl(self, batch):
            time.sleep(0.01 if self.calls >= 2 else 0.2)  # the first (warm-up) calls are slow
            return super().infer_impl(batch)

    runner = Sleepy()
    r = bench_runner(runner, batch=2, iters=5, warmup=2)
    assert runner.calls == 7 and runner.is_active
    assert (r.batch, r.iters, r.warmup, r.backend, r.precision) == (2, 5, 2, "ort", "fp32")
    assert 10.0 <= r.latency_ms_p50 < 150.0  # the 200 ms warm-up calls are not in the stats
    assert r.latency_ms_p50 <= r.latency_ms_p90 <= r.latency_ms_p99
    assert r.stage_ms["infer"] >= 10.0 and set(r.stage_ms) == {"preprocess", "infer", "postprocess"}
    assert r.throughput_ips == pytest.approx(2 * 1000.0 / r.latency_ms_mean, rel=0.2)
    assert r.peak_rss_mb > 10 and r.cold_start_s is None


def test_argument_checks(squares):
    with pytest.raises(InputError, match="iters=0"):
        bench_runner(squares.OracleRunner(), iters=0)


def test_synthetic_image_is_deterministic():
    a, b = synthetic_image(48, 64, seed=3), synthetic_image(48, 64, seed=3)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8 and (a == b).all()
    assert not (a == synthetic_image(48, 64, seed=4)).all()


def test_peak_rss_is_this_process_own_peak():
    """In a fresh child: touching 100 MiB raises the peak by ~100 MiB, and the child does not inherit this (big)
    test process's RSS (Linux's ru_maxrss would)."""
    import subprocess
    import sys

    code = ("import numpy as np; from retinaedge.runtime.bench import peak_rss_mb; a = peak_rss_mb(); "
            "b = np.ones(100 * 2**20 // 8); print(a, peak_rss_mb())")
    before, after = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout.split())
    assert 95 <= after - before <= 130
    assert before < 100  # an interpreter with numpy, not this pytest process (which imported torch etc.)


@pytest.fixture(scope="module")
def oracle_model(tmp_path_factory, squares):
    return squares.oracle_onnx(tmp_path_factory.mktemp("bench") / "model.fp16.onnx", squares.tiny_spec(),
                               precision="fp16")


def test_bench_model_in_a_fresh_process(oracle_model):
    pytest.importorskip("onnxruntime")
    results = bench_model(oracle_model, batches=(1, 2), iters=3, warmup=1, runner_kwargs={"threads": 1})
    assert [r.batch for r in results] == [1, 2]
    for r in results:
        assert (r.backend, r.precision, r.model) == ("ort", "fp16", str(oracle_model))
        assert 0.0 < r.cold_start_s < 60.0
        assert r.peak_rss_mb > 20 and r.latency_ms_p50 > 0
    assert results[0].cold_start_s == results[1].cold_start_s  # one process, one cold start


def test_bench_model_failures_are_one_line(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match=r"benchmark of .*broken.onnx.* failed \(exit 1\)") as e:
        bench_model(bad, iters=1, warmup=0)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="does not exist"):
        bench_model(tmp_path / "missing.onnx")


def test_bench_cli_table_and_json(oracle_model, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from retinaedge.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(oracle_model), "--batch", "1,2", "--iters", "2", "--warmup", "1",
                 "--json", str(out), "--threads", "1"]) == 0
    data = json.loads(out.read_text())
    assert [r["batch"] for r in data["results"]] == [1, 2]
    assert {"latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips", "peak_rss_mb",
            "cold_start_s"} <= set(data["results"][0])
    printed = capsys.readouterr().out
    assert "model.fp16.onnx" in printed and "cold start" in printed
    assert main(["bench", "--model", str(oracle_model), "--batch", "0"]) == 2
