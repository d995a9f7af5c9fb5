"""Streaming inference over video files, live streams (URL, ``/dev/videoN``) and image folders.

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

Outputs in ``out_dir``: ``annotated.mp4``, ``detections.jsonl`` (one line per frame: ``{"frame": index,
"pts": seconds or null, "detections": [{"bbox": [x1, y1, x2, y2], "score", "class", "name", "category_id"}]}``,
boxes in frame pixels; ``class`` is the contiguous class index, ``category_id`` the dataset's own, possibly sparse,
id) and ``stats.json``. `run_images` writes the same detections, one line per image.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retinaedge.runtime._lazy import require
from retinaedge.runtime.detections import Detections
from retinaedge.runtime.draw import draw_detections
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.io import atomic_write_text, ensure_writable_dir
from retinaedge.runtime.preprocess import image_files, is_image_file, load_image, preprocess_batch
from retinaedge.runtime.runner import Detector

SourceKind = Literal["file", "live", "device"]
Status = Literal["ok", "error", "stalled", "interrupted"]

LIVE_SCHEMES = ("tcp", "udp", "rtp", "rtsp", "rtsps", "rtmp", "rtmps", "srt", "http", "https", "hls")
"""URL schemes read as live sources (bounded latency, drop policy, stall timeout)."""

VIDEO_NAME = "annotated.mp4"
JSONL_NAME = "detections.jsonl"
STATS_NAME = "stats.json"

# Small probe for live streams: the default (5 MB / 5 s) would wait for seconds of video before the first frame,
# and a stream that stalls early would stall inside the open.
_LIVE_OPTIONS = {"probesize": "32768", "analyzeduration": "500000"}


@dataclass(frozen=True)
class Source:
    """A classified input: ``kind`` decides drop policy, timeouts and the PyAV format.

    Attributes:
        kind: ``file`` (never drops), ``live`` (URL) or ``device`` (``/dev/videoN`` via v4l2).
        url: what PyAV opens.
        format: forced PyAV input format, or None to probe.
    """

    kind: SourceKind
    url: str
    format: str | None = None

    @property
    def live(self) -> bool:
        return self.kind != "file"


def classify_source(source: str, *, format: str | None = None) -> Source:
    """Tell a video file from a live URL or a capture device.

    Raises:
        InputError: for an unknown URL scheme or a file that does not exist.
    """
    if source.startswith("/dev/video"):
        return Source("device", source, format or "v4l2")
    if "://" in source:
        scheme = source.split("://", 1)[0].lower()
        if scheme == "file":
            return classify_source(source[len("file://"):], format=format)
        if scheme not in LIVE_SCHEMES:
            raise InputError(f"source scheme {scheme!r} is not supported; use a file or one of {list(LIVE_SCHEMES)}")
        return Source("live", source, format)
    p = Path(source)
    if not p.is_file():
        raise InputError(f"video source {source!r} does not exist; pass a video file, URL, /dev/videoN or image folder")
    return Source("file", str(p), format)


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


class _Turns:
    """Inference runs alone; decoding and writing (light, single-threaded) may run beside each other.

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


class _Free:
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
    turns: _Turns | _Free = field(default_factory=_Free)
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


def open_source(source: Source, *, open_timeout: float, stall_timeout: float) -> Any:
    """Open a source with PyAV; live sources get timeouts and retry a refused connection until ``open_timeout``.

    Returns:
        An ``av.container.InputContainer`` with at least one video stream.

    Raises:
        InputError: naming the source when it cannot be opened or has no video stream.
    """
    av = require("av", purpose="video inference")
    deadline = time.monotonic() + open_timeout
    while True:
        try:
            if source.live:
                options = dict(_LIVE_OPTIONS) if source.kind == "live" else {}
                container = av.open(source.url, format=source.format, options=options,
                                    timeout=(open_timeout, stall_timeout))
            else:
                container = av.open(source.url, format=source.format)
            break
        except ConnectionRefusedError as e:  # a live sender that is not listening yet
            if time.monotonic() >= deadline:
                raise InputError(f"cannot connect to {source.url!r} within {open_timeout:g} s ({e}); "
                                 "is the sender running?") from None
            time.sleep(0.1)
        except (av.FFmpegError, OSError) as e:
            raise InputError(f"cannot open video source {source.url!r} ({type(e).__name__}: {e}); check the file "
                             "is a complete video or the URL is reachable") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"video source {source.url!r} has no video stream")
    return container


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


class _Writer:
    """Annotated MP4 (written to ``.part`` and renamed when closed) and the JSONL, in the writer thread."""

    def __init__(self, out_dir: Path, class_names: Sequence[str], fps: Fraction, write_video: bool,
                 codec: str, min_score: float, shared_cores: bool = False,
                 category_ids: Sequence[int] | None = None) -> None:
        self.class_names = tuple(class_names)
        self.category_ids = tuple(category_ids) if category_ids is not None else None
        self.shared_cores = shared_cores
        self.fps = fps
        self.write_video = write_video
        self.codec = codec
        self.min_score = min_score
        self.video_path = out_dir / VIDEO_NAME
        self.part_path = out_dir / f".{VIDEO_NAME}.part"
        self.jsonl_path = out_dir / JSONL_NAME
        # line-buffered: each frame is on disk as soon as it is written (tail -f, first-detection timing)
        self.jsonl = open(self.jsonl_path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
        self.container: Any = None
        self.stream: Any = None
        self.size: tuple[int, int] = (0, 0)

    def _open_video(self, height: int, width: int) -> None:
        av = require("av", purpose="video inference")
        # yuv420p needs even sides: drop a last odd row/column rather than rescale
        self.size = (height - height % 2, width - width % 2)
        self.container = av.open(str(self.part_path), "w", format="mp4")
        try:
            stream = self.container.add_stream(self.codec, rate=self.fps)
        except (av.FFmpegError, ValueError):
            stream = self.container.add_stream("mpeg4", rate=self.fps)  # an FFmpeg build without libx264
        stream.height, stream.width = self.size
        stream.pix_fmt = "yuv420p"
        if stream.codec_context.name == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "23"}
            if self.shared_cores:
                stream.options = {**stream.options, "threads": "1"}  # x264's threads would run outside the turns
        self.stream = stream

    def write(self, frame: _Frame, dets: Detections) -> None:
        av = require("av", purpose="video inference")
        if self.write_video:
            if self.container is None:
                self._open_video(*frame.image.shape[:2])
            h, w = self.size
            annotated = draw_detections(frame.image[:h, :w], dets, self.class_names, min_score=self.min_score)
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(annotated), format="rgb24")
            for packet in self.stream.encode(video_frame):
                self.container.mux(packet)
        line = {"frame": frame.index, "pts": None if frame.pts is None else round(float(frame.pts), 6),
                "detections": dets.to_json(self.class_names, self.category_ids)}
        self.jsonl.write(json.dumps(line) + "\n")

    def close(self) -> str | None:
        """Flush the encoder, close both files; returns the video path if one was written."""
        self.jsonl.close()
        if self.container is None:
            return None
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
        os.replace(self.part_path, self.video_path)
        return str(self.video_path)


def _write_loop(writer: _Writer, state: _State, in_q: queue.Queue[Any], stop: threading.Event,
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
                writer.write(frame, dets)
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
    min_score: float = 0.3,
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
        min_score: detections below it are not drawn (all are written to the JSONL); 0.3 as in `retinaedge infer`.
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
    state = _State(turns=_Turns() if shared else _Free())
    stop = threading.Event()
    decode_q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    write_q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    writer = _Writer(out, detector.spec.class_names, Fraction(rate).limit_denominator(1001 * 1000), write_video,
                     codec, min_score, shared, category_ids=detector.spec.category_ids)
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


# ---- image folders --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageStats:
    """What an image-folder run did.

    Attributes:
        images: images processed.
        wall_s: total seconds (loading, inference, drawing, writing).
        fps: images per second over ``wall_s``.
        latency_ms_p50: median per-image time of preprocess + model + post-process (batch time / batch size).
        latency_ms_p99: 99th percentile of the same.
        jsonl_path: one line per image: ``{"file", "width", "height", "detections"}``, plus ``"annotated"`` (the
            annotated copy, relative to the output folder) when those are written.
        annotated_dir: annotated JPEGs (names: `annotated_names`), or None when not written.
    """

    images: int
    wall_s: float
    fps: float
    latency_ms_p50: float
    latency_ms_p99: float
    jsonl_path: str
    annotated_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.images} images in {self.wall_s:.2f} s ({self.fps:.1f} img/s), latency p50 "
                f"{self.latency_ms_p50:.1f} ms p99 {self.latency_ms_p99:.1f} ms")


def annotated_names(files: Sequence[Path]) -> list[str]:
    """File names of the annotated JPEG copies of ``files`` (one folder's images), unique and stable.

    ``a.png`` -> ``a.jpg`` when no other file shares its stem; ``a.png`` -> ``a.png.jpg`` (the source name kept)
    when another does (``a.jpg`` next to ``a.png``) or when another file is named like its stem (``a.png.jpg``
    next to ``a.png``), so no copy overwrites another. Stems and names compare case-folded: the outputs stay
    distinct on case-insensitive file systems too.

    Args:
        files: image files with distinct names (`retinaedge.runtime.preprocess.list_images`).

    Returns:
        One name per file, in the same order.
    """
    stems = Counter(p.stem.casefold() for p in files)
    taken = {p.name.casefold() for p in files}
    return [f"{p.stem}.jpg" if stems[p.stem.casefold()] == 1 and p.stem.casefold() not in taken else f"{p.name}.jpg"
            for p in files]


def is_image_source(source: str | Path) -> bool:
    """Whether ``infer --source`` names images (a folder, or one image file by suffix) rather than a video."""
    return Path(source).is_dir() or is_image_file(source)


def run_images(
    *,
    detector: Detector,
    source_dir: str | Path,
    out_dir: str | Path,
    batch: int = 1,
    write_images: bool = True,
    min_score: float = 0.3,
    progress: Callable[[int], None] | None = None,
) -> ImageStats:
    """Run a detector over every image of a folder.

    Images are read as viewers display them: the file's EXIF orientation is applied (as OpenCV's ``imread``
    and Ultralytics do), so the model sees the turned photo and boxes, ``width``/``height`` and the annotated
    copies are all in the displayed frame. (Datasets keep COCO's stored-pixel convention: see
    `retinaedge.runtime.preprocess.load_image`.)

    Args:
        detector: runner + spec (activated here, deactivated at the end).
        source_dir: folder of images, or one image file (`retinaedge.runtime.preprocess.image_files`).
        out_dir: where ``detections.jsonl`` and ``annotated/*.jpg`` (named by `annotated_names`) go.
        batch: images per inference call.
        write_images: also write annotated copies.
        min_score: detections below it are not drawn (all are written to the JSONL); 0.3 as in `retinaedge infer`.
        progress: called with the number of images done so far.

    Returns:
        `ImageStats`, also written to ``out_dir/stats.json``.
    """
    from PIL import Image

    if batch <= 0:
        raise InputError(f"batch={batch} must be a positive integer")
    files = image_files(source_dir)
    out_names = annotated_names(files)
    out = ensure_writable_dir(out_dir)
    ann_dir = out / "annotated"
    if write_images:
        ann_dir.mkdir(exist_ok=True)
    start = time.perf_counter()
    latencies: list[float] = []
    jsonl_path = out / JSONL_NAME
    names = detector.spec.class_names
    detector.runner.activate()
    try:
        with open(jsonl_path, "w", encoding="utf-8") as f:
            for i in range(0, len(files), batch):
                chunk, chunk_names = files[i:i + batch], out_names[i:i + batch]
                images = [load_image(p, exif_transpose=True) for p in chunk]
                t0 = time.perf_counter()
                dets = detector(images)
                dt = (time.perf_counter() - t0) / len(chunk)
                latencies.extend([dt] * len(chunk))
                for path, out_name, image, d in zip(chunk, chunk_names, images, dets, strict=True):
                    line: dict[str, Any] = {"file": path.name, "width": int(image.shape[1]),
                                            "height": int(image.shape[0]),
                                            "detections": d.to_json(names, detector.spec.category_ids)}
                    if write_images:
                        line["annotated"] = f"{ann_dir.name}/{out_name}"
                        drawn = draw_detections(image, d, names, min_score=min_score)
                        Image.fromarray(drawn).save(ann_dir / out_name, quality=90)
                    f.write(json.dumps(line) + "\n")
                if progress is not None:
                    progress(min(i + batch, len(files)))
    finally:
        detector.runner.deactivate()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000.0
    stats = ImageStats(
        images=len(files), wall_s=wall, fps=len(files) / wall if wall > 0 else 0.0,
        latency_ms_p50=float(np.percentile(lat, 50)), latency_ms_p99=float(np.percentile(lat, 99)),
        jsonl_path=str(jsonl_path), annotated_dir=str(ann_dir) if write_images else None,
    )
    atomic_write_text(out / STATS_NAME, json.dumps(stats.to_dict(), indent=2) + "\n")
    return stats


# ---- scoring a run against per-frame ground truth ---------------------------------------------------------------
def read_jsonl_detections(jsonl_path: str | Path) -> dict[int, Detections]:
    """Read ``detections.jsonl`` of `run_video` back: frame index -> `Detections` (frame pixels)."""
    out: dict[int, Detections] = {}
    with open(jsonl_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                dets = rec["detections"]
                out[int(rec["frame"])] = Detections(
                    np.asarray([d["bbox"] for d in dets], np.float32).reshape(-1, 4),
                    np.asarray([d["score"] for d in dets], np.float32),
                    np.asarray([d["class"] for d in dets], np.int64),
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise InputError(f"{str(jsonl_path)!r} line {n} is not a detections record ({e})") from None
    return out


def evaluate_video(jsonl_path: str | Path, ann_file: str | Path, *, category_ids: Sequence[int],
                   class_names: Sequence[str]) -> dict[str, Any]:
    """COCO-evaluate a video run against per-frame ground truth (AP50 over the clip, etc.).

    The ground truth is COCO JSON with one image per frame; each image's ``frame_index`` (or, failing that,
    its position in id order) ties it to a JSONL frame. Frames the run did not write are not scored.

    Returns:
        `retinaedge.runtime.cocoeval.coco_evaluate`'s dict.
    """
    from retinaedge.runtime.cocoeval import coco_evaluate

    gt = json.loads(Path(ann_file).read_text())
    images = sorted(gt.get("images", []), key=lambda im: im["id"])
    frame_to_id = {int(im.get("frame_index", pos)): int(im["id"]) for pos, im in enumerate(images)}
    dets = read_jsonl_detections(jsonl_path)
    unknown = sorted(set(dets) - set(frame_to_id))
    if unknown:
        raise InputError(f"frames {unknown[:5]} of {str(jsonl_path)!r} have no ground-truth image in {str(ann_file)!r}")
    return coco_evaluate(ann_file, {frame_to_id[k]: v for k, v in dets.items()}, category_ids, class_names)
