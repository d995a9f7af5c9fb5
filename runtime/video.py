"""Streaming inference over video files, live streams (URL, ``/dev/videoN``) and capture devices: the threaded
pipeline.

Video runs as a three-thread pipeline built on PyAV::

    decode thread ──bounded queue──▶ inference thread (batching; owns the runner) ──bounded queue──▶ writer thread
                                                                                                     ├ annotated.mp4
                                                                                                     └ detections.jsonl

* The inference thread activates and deactivates the runner itself: on a GPU it owns the CUDA context.
* Files never drop frames (the decoder waits for the queue). Live sources drop the *oldest* queued frame when
  the queue is full, so latency stays bounded; every drop is counted.
* A corrupt or truncated stream stops cleanly: the writer flushes the encoder and closes the container, so
  ``annotated.mp4`` is valid and holds every frame written; the stats say how many frames were read and
  written and carry a one-line message.
* A live source that stalls is stopped by PyAV's read timeout (``timeout=(open, read)``) and, should a
  blocking call ignore it, by a watchdog in the calling thread.

This module is the pipeline only (threads, queues, turn-taking, stats). What the input is and how it is opened
lives in `retinaedge.runtime.sources`; the files written (names, the per-frame JSONL line, the MP4 writer) in
`retinaedge.runtime.outputs`; image folders, which need none of the threads, in `retinaedge.runtime.images`.

Outputs in ``out_dir``: ``annotated.mp4``, ``detections.jsonl`` (one line per frame, `outputs.frame_record`)
and ``stats.json``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retinaedge.runtime._lazy import require
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.io import atomic_write_text, ensure_writable_dir
from retinaedge.runtime.outputs import DRAW_MIN_SCORE, STATS_NAME, FrameWriter
from retinaedge.runtime.preprocess import preprocess_batch
from retinaedge.runtime.runner import Detector
from retinaedge.runtime.sources import Source, classify_source, open_source

Status = Literal["ok", "error", "stalled", "interrupted"]


@dataclass(frozen=True)
class VideoStats:
    """What a video run did.

    Attributes:
        source: the source as given.
        live: whether it was read as a live source.
        status: ``ok`` (ran to the end), ``error`` (the stream broke mid-way), ``stalled`` (a live source sent
            nothing for ``stall_timeout``) or ``interrupted`` (Ctrl-C).
        message: one line describing a non-``ok`` stop, else None.
        frames_read: frames decoded from the source.
        frames_inferred: frames that went through the model.
        frames_written: frames written to the JSONL (and the video, when written).
        frames_dropped: live frames dropped because the pipeline was behind (always 0 for files).
        wall_s: seconds from opening the source to closing the outputs.
        fps: ``frames_written / wall_s`` (opening the source, loading the model and starting the encoder
            included).
        steady_fps: frames per second between the first and the last written frame: the pipeline's running
            rate, start-up excluded (equal to ``fps`` for fewer than 2 frames).
        model_fps: frames per second of preprocess + model + post-process time alone.
        stage_ms: mean milliseconds per frame of each stage: ``decode`` (includes waiting for a live source),
            ``preprocess``, ``infer``, ``postprocess`` (per batch, divided by its frames) and ``write``
            (drawing, encoding and the JSONL line).
        latency_ms_p50: median time from a decoded frame to its written output.
        latency_ms_p99: 99th percentile of the same.
        batch: inference batch size.
        video_path: the annotated MP4, or None when none was written.
        jsonl_path: the per-frame detections.
    """

    source: str
    live: bool
    status: Status
    message: str | None
    frames_read: int
    frames_inferred: int
    frames_written: int
    frames_dropped: int
    wall_s: float
    fps: float
    steady_fps: float
    model_fps: float
    stage_ms: Mapping[str, float]
    latency_ms_p50: float
    latency_ms_p99: float
    batch: int
    video_path: str | None
    jsonl_path: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stage_ms"] = dict(self.stage_ms)
        return d

    def summary(self) -> str:
        """One line for logs: status, frames, fps, latency."""
        line = (
            f"{self.status}: read {self.frames_read}, wrote {self.frames_written}, dropped {self.frames_dropped} "
            f"frames in {self.wall_s:.2f} s ({self.fps:.1f} fps, steady {self.steady_fps:.1f} fps, model "
            f"{self.model_fps:.1f} fps), "
            f"latency p50 {self.latency_ms_p50:.1f} ms p99 {self.latency_ms_p99:.1f} ms"
        )
        return line if self.message is None else f"{line} — {self.message}"


@dataclass
class _Frame:
    index: int
    pts: float | None
    image: np.ndarray  # (H, W, 3) uint8 RGB
    t_ready: float  # perf_counter when decoded


_END = object()  # end-of-stream marker passed down both queues


class _SharedCoreTurns:
    """Turns on the host's cores: inference runs alone; decoding and writing (light, single-threaded) may run
    beside each other.

    A readers-writer lock with the model as the writer: `model` waits until no light stage is inside and
    keeps them out while it runs; `light` waits while the model runs (or is waiting, so it is not starved).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._light = 0
        self._model = False
        self._model_waiting = 0

    @contextlib.contextmanager
    def model(self) -> Iterator[None]:
        with self._cond:
            self._model_waiting += 1
            self._cond.wait_for(lambda: not self._model and self._light == 0)
            self._model_waiting -= 1
            self._model = True
        try:
            yield
        finally:
            with self._cond:
                self._model = False
                self._cond.notify_all()

    @contextlib.contextmanager
    def light(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._model and not self._model_waiting)
            self._light += 1
        try:
            yield
        finally:
            with self._cond:
                self._light -= 1
                self._cond.notify_all()


class _NoTurns:
    """No turns: every stage runs whenever it can (the model is not on the host's cores)."""

    def model(self) -> AbstractContextManager[None]:
        return nullcontext()

    def light(self) -> AbstractContextManager[None]:
        return nullcontext()


@dataclass
class _State:
    """Counters and timings shared by the pipeline threads (each field written by one thread only)."""

    frames_read: int = 0
    frames_inferred: int = 0
    frames_written: int = 0
    frames_dropped: int = 0
    last_activity: float = field(default_factory=time.perf_counter)
    status: Status = "ok"
    message: str | None = None
    failure: BaseException | None = None  # an unexpected error in the inference or writer thread
    times: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("decode", "preprocess", "infer", "postprocess", "write"), 0.0))
    latencies: list[float] = field(default_factory=list)
    # held around each stage's CPU work when the model shares the host's cores (see run_video's share_cores)
    turns: _SharedCoreTurns | _NoTurns = field(default_factory=_NoTurns)
    first_written: float | None = None  # perf_counter of the first and the last frame written
    last_written: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop_with(self, status: Status, message: str) -> None:
        with self.lock:
            if self.status == "ok":
                self.status, self.message = status, message


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up once ``stop`` is set; True if the item was queued."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _put_end(q: queue.Queue[Any], stop: threading.Event) -> None:
    """Queue the end marker; once stopping, make room for it by discarding queued frames."""
    while True:
        if _put(q, _END, stop):
            return
        try:
            q.put_nowait(_END)
            return
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                q.get_nowait()


def _decode_loop(container: Any, source: Source, state: _State, out_q: queue.Queue[Any],
                 stop: threading.Event, max_frames: int | None, stall_timeout: float, shared_cores: bool) -> None:
    av = require("av", purpose="video inference")
    stream = container.streams.video[0]
    t_prev = time.perf_counter()
    try:
        if not source.live and shared_cores:
            stream.codec_context.thread_count = 1  # FFmpeg's own threads would run outside the turns
        elif not source.live:
            stream.thread_type = "AUTO"  # frame threads: faster for files, a few frames of extra latency
        for packet in container.demux(stream):  # waits for a live source's data outside the turn
            # a live source is decoded as it arrives (the drop policy keeps the newest frames); a file waits its turn
            with nullcontext() if source.live else state.turns.light():
                decoded = [(frame.time, frame.to_ndarray(format="rgb24")) for frame in packet.decode()]
            for pts, image in decoded:
                now = time.perf_counter()
                state.times["decode"] += now - t_prev
                item = _Frame(state.frames_read, pts, image, now)
                state.frames_read += 1
                state.last_activity = now
                if source.live:
                    _put_latest(out_q, item, state)
                elif not _put(out_q, item, stop):
                    return
                if stop.is_set() or (max_frames is not None and state.frames_read >= max_frames):
                    return
                t_prev = time.perf_counter()
            if stop.is_set():
                return
    except av.ExitError:
        if not stop.is_set():
            state.stop_with("stalled", f"source {source.url!r} sent no data for {stall_timeout:g} s; "
                                       f"stopped after {state.frames_read} frames")
    except (av.FFmpegError, OSError) as e:
        state.stop_with("error", f"stream broke after {state.frames_read} frames "
                                 f"({type(e).__name__}: {e}); outputs hold the frames before it")
    finally:
        _put_end(out_q, stop)
        container.close()


def _put_latest(q: queue.Queue[Any], item: _Frame, state: _State) -> None:
    """Live drop policy: when the queue is full, drop the oldest frame and queue the new one."""
    while True:
        try:
            q.put_nowait(item)
            return
        except queue.Full:
            try:
                old = q.get_nowait()
            except queue.Empty:
                continue
            if old is _END:  # never drop the end marker (it is only queued after the last frame anyway)
                q.put_nowait(old)
                return
            state.frames_dropped += 1


def _infer_loop(detector: Detector, batch: int, live: bool, state: _State, in_q: queue.Queue[Any],
                out_q: queue.Queue[Any], stop: threading.Event) -> None:
    from retinaedge.runtime.postprocess import to_detections

    spec, runner = detector.spec, detector.runner
    ended = False
    try:
        runner.activate()  # here, not in the caller: this thread owns the runner (and its CUDA context)
        while not ended:
            item = in_q.get()
            if item is _END:
                break
            frames = [item]
            while len(frames) < batch:
                try:
                    nxt = in_q.get_nowait() if live else in_q.get()
                except queue.Empty:
                    break  # live: run what is there rather than wait and add latency
                if nxt is _END:
                    ended = True
                    break
                frames.append(nxt)
            if stop.is_set() and state.failure is not None:
                continue
            with state.turns.model():
                t0 = time.perf_counter()
                x, metas = preprocess_batch([f.image for f in frames], spec)
                t1 = time.perf_counter()
                outputs = runner.infer(x)
                t2 = time.perf_counter()
                dets = to_detections(outputs, spec, metas)
                t3 = time.perf_counter()
            state.times["preprocess"] += t1 - t0
            state.times["infer"] += t2 - t1
            state.times["postprocess"] += t3 - t2
            state.frames_inferred += len(frames)
            for f, d in zip(frames, dets, strict=True):
                if not _put(out_q, (f, d), stop):
                    break
    except Exception as e:  # re-raised in the caller once the outputs are closed
        state.failure = e
        stop.set()
        while not ended and in_q.get() is not _END:  # keep the decoder from blocking on a full queue
            pass
    finally:
        try:
            runner.deactivate()
        finally:
            _put_end(out_q, stop)


def _write_loop(writer: FrameWriter, state: _State, in_q: queue.Queue[Any], stop: threading.Event,
                progress: Callable[[int], None] | None) -> None:
    failed = False
    while True:
        item = in_q.get()
        if item is _END:
            return
        if failed:
            continue  # drain so the inference thread can finish
        frame, dets = item  # frames inferred before a model failure are still written
        try:
            with state.turns.light():
                t0 = time.perf_counter()  # the stage's own time, not the wait for its turn
                writer.write(frame.index, frame.pts, frame.image, dets)
        except Exception as e:  # re-raised in the caller once the outputs are closed
            state.failure, failed = e, True
            stop.set()
            continue
        t1 = time.perf_counter()
        state.times["write"] += t1 - t0
        state.latencies.append(t1 - frame.t_ready)
        if state.first_written is None:
            state.first_written = t1
        state.last_written = t1
        state.frames_written += 1
        if progress is not None:
            progress(state.frames_written)


def run_video(
    *,
    detector: Detector,
    source: str,
    out_dir: str | Path,
    batch: int = 1,
    queue_size: int = 8,
    write_video: bool = True,
    stall_timeout: float = 10.0,
    open_timeout: float = 10.0,
    max_frames: int | None = None,
    format: str | None = None,
    codec: str = "libx264",
    min_score: float = DRAW_MIN_SCORE,
    progress: Callable[[int], None] | None = None,
    share_cores: bool | None = None,
) -> VideoStats:
    """Run a detector over a video file, stream URL or capture device.

    Three threads (decode, inference, write) joined by two bounded queues. When the model runs on the host's
    CPU cores (``share_cores``, by default ``detector.runner.on_host_cpu``), the threads take turns at their
    CPU work (an inference call runs alone; decoding a file's packet and writing a frame may overlap each
    other but not the model; a live source is decoded as it arrives), FFmpeg and x264 run
    single-threaded and the runner is told to `share_cores` (ONNX Runtime stops spinning idle threads): a
    thread that pre-empts one of ONNX Runtime's pool threads stalls the whole operator until it is
    rescheduled, which cost a 2-core CPU a third of its frame rate (benchmarks/RESULTS.md).
    On a GPU the threads overlap freely.

    Args:
        detector: runner + spec; its runner is activated and deactivated in the inference thread.
        source: a video file, a URL (``tcp://``, ``rtsp://``, ``udp://``, ``http://`` ...) or ``/dev/videoN``.
        out_dir: where ``annotated.mp4``, ``detections.jsonl`` and ``stats.json`` go.
        batch: frames per inference call (live sources run partial batches rather than wait).
        queue_size: capacity of each of the two queues.
        write_video: write the annotated MP4 (the JSONL is always written).
        stall_timeout: seconds a live source may send nothing before the run stops (status ``stalled``).
        open_timeout: seconds to open (and connect to) a live source.
        max_frames: stop after this many frames (e.g. for a camera).
        format: force the PyAV input format (e.g. ``mpegts``); probed when None.
        codec: output video codec; falls back to ``mpeg4`` when unavailable.
        min_score: detections below it are not drawn (all are written to the JSONL).
        progress: called in the writer thread with the number of frames written so far.
        share_cores: take turns as described above; None decides from ``detector.runner.on_host_cpu``.

    Returns:
        `VideoStats`, also written to ``out_dir/stats.json``. A corrupt, truncated or stalled stream is not an
        exception: it ends the run with ``status`` ``error``/``stalled`` and a one-line ``message``.

    Raises:
        InputError: the source cannot be opened, or ``batch``/``queue_size`` is not positive.
        Exception: an error of the model or the writer, re-raised after the outputs are closed.
    """
    if batch <= 0 or queue_size <= 0:
        raise InputError(f"batch={batch} and queue_size={queue_size} must be positive integers")
    src = classify_source(source, format=format)
    out = ensure_writable_dir(out_dir)
    start = time.perf_counter()
    container = open_source(src, open_timeout=open_timeout, stall_timeout=stall_timeout)
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    shared = detector.runner.on_host_cpu if share_cores is None else share_cores
    if shared:
        detector.runner.share_cores()
    state = _State(turns=_SharedCoreTurns() if shared else _NoTurns())
    stop = threading.Event()
    decode_q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    write_q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    writer = FrameWriter(out_dir=out, class_names=detector.spec.class_names,
                         fps=Fraction(rate).limit_denominator(1001 * 1000), write_video=write_video, codec=codec,
                         min_score=min_score, shared_cores=shared, category_ids=detector.spec.category_ids)
    threads = {
        "decode": threading.Thread(target=_decode_loop, name="retinaedge-decode", daemon=True,
                                   args=(container, src, state, decode_q, stop, max_frames, stall_timeout, shared)),
        "infer": threading.Thread(target=_infer_loop, name="retinaedge-infer", daemon=True,
                                  args=(detector, batch, src.live, state, decode_q, write_q, stop)),
        "write": threading.Thread(target=_write_loop, name="retinaedge-write", daemon=True,
                                  args=(writer, state, write_q, stop, progress)),
    }
    for t in threads.values():
        t.start()
    video_path: str | None = None
    try:
        _watch(threads, src, state, stop, decode_q, stall_timeout)
    finally:
        video_path = writer.close()
    wall = time.perf_counter() - start
    stats = _make_stats(source, src, state, batch, wall, video_path, writer.jsonl_path)
    atomic_write_text(out / STATS_NAME, json.dumps(stats.to_dict(), indent=2) + "\n")
    if state.failure is not None:
        raise state.failure
    return stats


def _watch(threads: Mapping[str, threading.Thread], src: Source, state: _State, stop: threading.Event,
           decode_q: queue.Queue[Any], stall_timeout: float) -> None:
    """Wait for the writer; stop a live source whose decoder is stuck past the stall timeout; handle Ctrl-C."""
    grace = max(1.0, 0.5 * stall_timeout)  # PyAV's own read timeout should fire first
    try:
        while threads["write"].is_alive():
            threads["write"].join(timeout=0.1)
            if not src.live or stop.is_set() or not threads["decode"].is_alive():
                continue
            idle = time.perf_counter() - state.last_activity
            if idle > stall_timeout + grace:
                state.stop_with("stalled", f"source {src.url!r} sent no data for {idle:.1f} s (watchdog); "
                                           f"stopped after {state.frames_read} frames")
                stop.set()
                _put_end(decode_q, stop)
    except KeyboardInterrupt:
        state.stop_with("interrupted", f"interrupted after {state.frames_read} frames")
        stop.set()
        _put_end(decode_q, stop)
        threads["write"].join()
    threads["infer"].join()


def _make_stats(source: str, src: Source, state: _State, batch: int, wall: float, video_path: str | None,
                jsonl_path: Path) -> VideoStats:
    counts = {"decode": state.frames_read, "write": state.frames_written}
    stage_ms = {k: 1000.0 * v / max(1, counts.get(k, state.frames_inferred)) for k, v in state.times.items()}
    model_time = state.times["preprocess"] + state.times["infer"] + state.times["postprocess"]
    lat = np.asarray(state.latencies, dtype=np.float64) * 1000.0
    fps = state.frames_written / wall if wall > 0 else 0.0
    steady = fps
    if state.frames_written >= 2 and state.first_written is not None and state.last_written is not None:
        span = state.last_written - state.first_written
        steady = (state.frames_written - 1) / span if span > 0 else fps
    return VideoStats(
        source=source,
        live=src.live,
        status=state.status,
        message=state.message,
        frames_read=state.frames_read,
        frames_inferred=state.frames_inferred,
        frames_written=state.frames_written,
        frames_dropped=state.frames_dropped,
        wall_s=wall,
        fps=fps,
        steady_fps=steady,
        model_fps=state.frames_inferred / model_time if model_time > 0 else 0.0,
        stage_ms=stage_ms,
        latency_ms_p50=float(np.percentile(lat, 50)) if lat.size else 0.0,
        latency_ms_p99=float(np.percentile(lat, 99)) if lat.size else 0.0,
        batch=batch,
        video_path=video_path,
        jsonl_path=str(jsonl_path),
    )


