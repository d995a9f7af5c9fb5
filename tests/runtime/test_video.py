"""The video pipeline end to end on CPU: file, corrupt file, live TCP stream (frame for frame), stall, drops."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.runner import Detector
from retinaedge.runtime.video import run_video
from tests.support.video_eval import evaluate_video, read_jsonl_detections

av = pytest.importorskip("av")

# A PyAV sender in a SUBPROCESS: in a thread, PyAV's listening open holds the GIL and the reader never runs.
SENDER = r"""
import sys, time, av
src, port, stop_after, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
inp = av.open(src)
out = av.open(f"tcp://127.0.0.1:{port}?listen=1&listen_timeout=20000", "w", format="mpegts")
ist = inp.streams.video[0]
s = out.add_stream("libx264", rate=ist.average_rate)
s.width, s.height, s.pix_fmt = ist.codec_context.width, ist.codec_context.height, "yuv420p"
s.options = {"preset": "ultrafast", "tune": "zerolatency"}
n = 0
for frame in inp.decode(video=0):
    if 0 <= stop_after <= n:
        print("holding", n, flush=True)
        time.sleep(hold)  # keep the connection open and send nothing: a stalled camera
        sys.exit(0)
    frame.pts = None
    for p in s.encode(frame):
        out.mux(p)
    n += 1
for p in s.encode():
    out.mux(p)
out.close()
print("sent", n, flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sender(video: Path, stop_after: int = -1, hold: float = 30.0) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SENDER, str(video), str(port), str(stop_after), str(hold)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, port


def decoded_frames(path: str | Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_jsonl_schema(records: list[dict], class_names, category_ids=(3, 7)) -> None:
    for rec in records:
        assert set(rec) == {"frame", "pts", "detections"}
        assert isinstance(rec["frame"], int)
        assert rec["pts"] is None or isinstance(rec["pts"], float)
        for d in rec["detections"]:
            assert set(d) == {"bbox", "score", "class", "name", "category_id"}
            assert len(d["bbox"]) == 4 and d["bbox"][0] <= d["bbox"][2] and d["bbox"][1] <= d["bbox"][3]
            assert 0.0 <= d["score"] <= 1.0 and d["name"] == class_names[d["class"]]
            assert d["category_id"] == category_ids[d["class"]]  # the dataset's id, not the class index


def test_file_end_to_end_frame_count_schema_and_ap50(clip, squares, tmp_path):
    runner = squares.OracleRunner()
    stats = run_video(detector=Detector(runner=runner), source=str(clip["video"]), out_dir=tmp_path, batch=3)
    n = clip["frames"]
    assert stats.status == "ok" and stats.message is None
    assert (stats.frames_read, stats.frames_inferred, stats.frames_written, stats.frames_dropped) == (n, n, n, 0)
    assert decoded_frames(stats.video_path) == n
    with av.open(stats.video_path) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (clip["width"], clip["height"])
    records = jsonl(stats.jsonl_path)
    check_jsonl_schema(records, squares.CLASS_NAMES)
    assert [r["frame"] for r in records] == list(range(n))
    np.testing.assert_allclose([r["pts"] for r in records], np.arange(n) / clip["fps"], atol=1e-6)
    # AP50 over the clip against the per-frame ground truth (the oracle makes it meaningful without training)
    metrics = evaluate_video(stats.jsonl_path, clip["gt"], category_ids=runner.spec.category_ids,
                             class_names=runner.spec.class_names)
    assert metrics["AP50"] >= 0.95, metrics
    assert metrics["num_images"] == n
    # the runner was activated once, in the inference thread, and left deactivated
    assert runner.activations == 1 and threading.get_ident() not in runner.thread_ids
    assert not runner.is_active and runner.calls == -(-n // 3)
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved["frames_written"] == n and saved["status"] == "ok"
    assert set(saved["stage_ms"]) == {"decode", "preprocess", "infer", "postprocess", "write"}
    assert stats.fps > 0 and stats.latency_ms_p99 >= stats.latency_ms_p50 > 0
    # the running rate leaves out start-up (opening, activation, encoder set-up), so it is never below fps
    assert stats.steady_fps >= stats.fps and saved["steady_fps"] == stats.steady_fps


def test_steady_fps_counts_intervals_between_the_first_and_last_written_frame():
    from retinaedge.runtime.sources import Source
    from retinaedge.runtime.video import _make_stats, _State

    state = _State(frames_read=5, frames_inferred=5, frames_written=5, first_written=10.0, last_written=12.0)
    src = Source(kind="file", url="x.mp4")
    stats = _make_stats("x.mp4", src, state, 1, 4.0, None, Path("x.jsonl"))
    assert stats.fps == 5 / 4.0  # end to end: 5 frames over the 4 s wall
    assert stats.steady_fps == 4 / 2.0  # 4 frame intervals in the 2 s between the first and last write
    one = _make_stats("x.mp4", src, _State(frames_written=1, first_written=1.0, last_written=1.0), 1, 2.0, None,
                      Path("x.jsonl"))
    assert one.steady_fps == one.fps == 0.5


def test_batched_and_single_frame_runs_agree(clip, squares, tmp_path):
    one = run_video(detector=Detector(runner=squares.OracleRunner()), source=str(clip["video"]),
                    out_dir=tmp_path / "b1", write_video=False)
    four = run_video(detector=Detector(runner=squares.OracleRunner()), source=str(clip["video"]),
                     out_dir=tmp_path / "b4", batch=4, write_video=False)
    assert one.video_path is None and not (tmp_path / "b1" / "annotated.mp4").exists()
    assert jsonl(one.jsonl_path) == jsonl(four.jsonl_path)


def test_turn_taking_and_free_threads_write_the_same_outputs(clip, squares, tmp_path):
    # the oracle says it is on the host CPU, so by default the stages take turns; share_cores=False is the GPU path
    runner = squares.OracleRunner()
    assert runner.on_host_cpu
    turns = run_video(detector=Detector(runner=runner), source=str(clip["video"]), out_dir=tmp_path / "t")
    free = run_video(detector=Detector(runner=squares.OracleRunner()), source=str(clip["video"]),
                     out_dir=tmp_path / "f", share_cores=False)
    assert turns.frames_written == free.frames_written == clip["frames"]
    assert jsonl(turns.jsonl_path) == jsonl(free.jsonl_path)
    assert decoded_frames(turns.video_path) == decoded_frames(free.video_path) == clip["frames"]


def test_a_degraded_model_scores_low_on_the_same_clip(clip, squares, tmp_path):
    """The AP50 check can fail: a model whose boxes are off by 12 network pixels scores far lower."""
    runner = squares.OracleRunner(shift=12.0)
    stats = run_video(detector=Detector(runner=runner), source=str(clip["video"]), out_dir=tmp_path,
                      write_video=False)
    metrics = evaluate_video(stats.jsonl_path, clip["gt"], category_ids=runner.spec.category_ids,
                             class_names=runner.spec.class_names)
    assert metrics["AP50"] < 0.5


def test_corrupt_stream_mid_way_stops_cleanly(tmp_path, squares, rng):
    src = tmp_path / "clip.mp4"
    squares.write_clip(src, 60)
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray(src.read_bytes())
    pos = packets[30][0]  # garbage over the packets of frames 30.. (the index at the front stays intact)
    data[pos:pos + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    stats = run_video(detector=Detector(runner=squares.OracleRunner()), source=str(bad), out_dir=tmp_path / "out")
    assert stats.status == "error"
    assert 0 < stats.frames_read < 60
    assert stats.frames_written == stats.frames_read == stats.frames_inferred
    assert "\n" not in stats.message and f"after {stats.frames_read} frames" in stats.message
    assert decoded_frames(stats.video_path) == stats.frames_written  # a valid, finalised MP4
    assert len(jsonl(stats.jsonl_path)) == stats.frames_written
    assert not list((tmp_path / "out").glob(".*.part"))


def test_unreadable_file_is_a_one_line_input_error(tmp_path, squares):
    bad = tmp_path / "truncated.mp4"
    squares.write_clip(tmp_path / "ok.mp4", 20)
    bad.write_bytes((tmp_path / "ok.mp4").read_bytes()[:300])
    with pytest.raises(InputError, match="cannot open video source"):
        run_video(detector=Detector(runner=squares.OracleRunner()), source=str(bad), out_dir=tmp_path / "o")
    with pytest.raises(InputError, match="does not exist"):
        run_video(detector=Detector(runner=squares.OracleRunner()), source=str(tmp_path / "no.mp4"),
                  out_dir=tmp_path / "o")


def test_live_tcp_stream_is_read_frame_for_frame(clip, squares, tmp_path):
    proc, port = start_sender(clip["video"])
    try:
        stats = run_video(detector=Detector(runner=squares.OracleRunner()), source=f"tcp://127.0.0.1:{port}",
                          out_dir=tmp_path, batch=2, queue_size=64, stall_timeout=5.0, open_timeout=20.0)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == f"sent {clip['frames']}"
    assert stats.live and stats.status == "ok", stats.summary()
    n = clip["frames"]
    assert stats.frames_read == n and stats.frames_written + stats.frames_dropped == n
    assert stats.frames_dropped == 0  # the queue holds the whole clip: nothing needs dropping
    assert decoded_frames(stats.video_path) == n
    records = jsonl(stats.jsonl_path)
    check_jsonl_schema(records, squares.CLASS_NAMES)
    metrics = evaluate_video(stats.jsonl_path, clip["gt"], category_ids=(3, 7), class_names=squares.CLASS_NAMES)
    assert metrics["AP50"] >= 0.95  # the frames are the clip's, in order


def test_live_stream_that_stalls_times_out_and_stops_cleanly(clip, squares, tmp_path):
    proc, port = start_sender(clip["video"], stop_after=12, hold=30.0)
    try:
        t0 = time.perf_counter()
        stats = run_video(detector=Detector(runner=squares.OracleRunner()), source=f"tcp://127.0.0.1:{port}",
                          out_dir=tmp_path, stall_timeout=1.5, open_timeout=20.0, queue_size=64)
        elapsed = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.communicate()
    assert stats.status == "stalled", stats.summary()
    assert "no data for 1.5 s" in stats.message and "\n" not in stats.message
    assert 0 < stats.frames_read <= 12 and stats.frames_written == stats.frames_read
    assert elapsed < 15.0  # the timeout fired; we did not wait for the sender's 30 s
    assert decoded_frames(stats.video_path) == stats.frames_written
    assert len(jsonl(stats.jsonl_path)) == stats.frames_written


def test_live_source_drops_oldest_frames_when_behind(clip, squares, tmp_path):
    class Slow(squares.OracleRunner):
        def infer_impl(self, batch):
            time.sleep(0.05)
            return super().infer_impl(batch)

    proc, port = start_sender(clip["video"])
    try:
        stats = run_video(detector=Detector(runner=Slow()), source=f"tcp://127.0.0.1:{port}", out_dir=tmp_path,
                          queue_size=2, open_timeout=20.0, write_video=False)
    finally:
        proc.kill()
        proc.communicate()
    assert stats.status == "ok"
    assert stats.frames_read == clip["frames"]
    assert stats.frames_dropped > 0
    assert stats.frames_written + stats.frames_dropped == stats.frames_read
    frames = [r["frame"] for r in jsonl(stats.jsonl_path)]
    assert frames == sorted(frames) and frames[-1] == clip["frames"] - 1  # newest kept, order preserved


def test_watchdog_stops_a_decoder_stuck_past_the_stall_timeout(squares, tmp_path, monkeypatch):
    """If a blocking read ignores PyAV's timeout, the watchdog in the calling thread still ends the run."""
    import retinaedge.runtime.video as video

    release = threading.Event()

    class Stream:
        average_rate = Fraction(10)
        guessed_rate = None
        thread_type = None

    class StuckContainer:
        streams = type("S", (), {"video": [Stream()]})()

        def demux(self, stream):
            release.wait(20)  # blocks like a read that never returns
            return iter(())

        def close(self):
            pass

    monkeypatch.setattr(video, "open_source", lambda *a, **k: StuckContainer())
    t0 = time.perf_counter()
    try:
        stats = run_video(detector=Detector(runner=squares.OracleRunner()), source="tcp://127.0.0.1:9",
                          out_dir=tmp_path, stall_timeout=0.5)
    finally:
        release.set()
    assert time.perf_counter() - t0 < 5.0
    assert stats.status == "stalled" and "watchdog" in stats.message
    assert stats.frames_written == 0 and stats.video_path is None


def test_model_errors_propagate_after_outputs_are_closed(clip, squares, tmp_path):
    class Broken(squares.OracleRunner):
        def infer_impl(self, batch):
            if self.calls >= 3:
                raise RuntimeError("device lost")
            return super().infer_impl(batch)

    with pytest.raises(RuntimeError, match="device lost"):
        run_video(detector=Detector(runner=Broken()), source=str(clip["video"]), out_dir=tmp_path)
    assert decoded_frames(tmp_path / "annotated.mp4") == 3
    assert len(jsonl(tmp_path / "detections.jsonl")) == 3


@pytest.mark.slow
def test_trained_demo_model_on_the_synthetic_video(tmp_path):
    """AP50 over the demo's synthetic clip with the trained demo model (point RETINAEDGE_DEMO at the demo's
    output dir: it holds the exported ONNX and data/video.mp4 + data/annotations/video_gt.json)."""
    demo = Path(os.environ.get("RETINAEDGE_DEMO", "demo_out"))
    models = sorted(demo.rglob("model.fp32.onnx"))
    videos = sorted(demo.rglob("video.mp4"))
    gts = sorted(demo.rglob("video_gt.json"))
    if not (models and videos and gts):
        pytest.skip(f"no trained demo output under {demo} (run `make demo` or set RETINAEDGE_DEMO)")
    from retinaedge.runtime.models import load_runner

    detector = Detector(runner=load_runner(models[0]))
    stats = run_video(detector=detector, source=str(videos[0]), out_dir=tmp_path, batch=4)
    assert stats.status == "ok" and stats.frames_written == stats.frames_read > 0
    metrics = evaluate_video(stats.jsonl_path, gts[0], category_ids=detector.spec.category_ids,
                             class_names=detector.spec.class_names)
    assert metrics["AP50"] >= 0.6, metrics


def test_read_jsonl_detections_round_trip(clip, squares, tmp_path):
    stats = run_video(detector=Detector(runner=squares.OracleRunner()), source=str(clip["video"]),
                      out_dir=tmp_path, write_video=False, max_frames=5)
    assert stats.frames_read == 5
    dets = read_jsonl_detections(stats.jsonl_path)
    assert sorted(dets) == list(range(5))
    first = jsonl(stats.jsonl_path)[0]["detections"]
    np.testing.assert_allclose(dets[0].boxes, [d["bbox"] for d in first])
    (tmp_path / "bad.jsonl").write_text('{"frame": 0}\n')
    with pytest.raises(InputError, match="line 1"):
        read_jsonl_detections(tmp_path / "bad.jsonl")
