"""What ``retinaedge infer --source`` names: an image folder or image file, a video file, a live URL or a capture
device; and opening a video source with PyAV (timeouts and retries for live ones).

Split from the video pipeline because choosing and opening the input is its own job: the CLI asks
`is_image_source` before any pipeline exists, and the pipeline only consumes an opened container.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retinaedge.runtime._lazy import require
from retinaedge.runtime.errors import InputError
from retinaedge.runtime.preprocess import is_image_file

SourceKind = Literal["file", "live", "device"]

LIVE_SCHEMES = ("tcp", "udp", "rtp", "rtsp", "rtsps", "rtmp", "rtmps", "srt", "http", "https", "hls")
"""URL schemes read as live sources (bounded latency, drop policy, stall timeout)."""

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


def is_image_source(source: str | Path) -> bool:
    """Whether ``infer --source`` names images (a folder, or one image file by suffix) rather than a video."""
    return Path(source).is_dir() or is_image_file(source)


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
