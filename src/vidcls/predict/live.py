"""Live input: ``vidcls watch RUN SOURCE`` classifies sliding windows of a stream as it plays.

SOURCE is anything FFmpeg opens live: a capture device (``/dev/video0`` with ``--format v4l2``), an
``rtsp://`` or ``http://`` stream, a growing file in a streamable container (MPEG-TS, Matroska/WebM,
fragmented MP4), a pipe (``-`` or ``pipe:0`` for stdin). Its frames are taken at the run's sampling
rate, filtered and encoded as extraction did (:func:`vidcls.features.stream.stream_features` with
``live=True``), and every window of ``W`` frames starting at ``0, S, 2S, ...`` (``--segments`` /
``--stride`` as for ``vidcls predict``, default the run's typical window and half of it) is classified
as soon as its last frame is in, exactly as :meth:`Predictor.predict_records` classifies that window
alone. Only the last ``W`` frames' features are held: memory is bounded by the window, not the stream.

Each window gives one record (``window_index``, ``start_frame``, ``end_frame`` (exclusive), ``start_s``,
``end_s`` (the last frame's time plus one frame period), the decision fields of ``predict_records``, and
``latency_s``: from the moment the window's last frame came out of the decoder to the moment the record
was made). When the stream ends, the frames after the last full window (if any) get one more window,
the last ``W`` frames, as :func:`vidcls.predict.segments.window_starts` ends a video.

Frame indices count the frames kept (after the quality filter) from the start of watching.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .segments import RUN, Window, frames_of, parse_window, run_default

if TYPE_CHECKING:
    from ..features.backbone import FrameEncoder
    from .predictor import Predictor

__all__ = ["Watch", "watch", "check_options", "live_encoder", "Summary", "LineWriter", "STDIN"]

STDIN = "-"  # the SOURCE that means standard input (FFmpeg's pipe:0)
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_BATCH = 4  # frames per CNN call: a live chunk rarely holds more, and every call is padded to it
# the decision fields of a predict_records record a window record carries (multi-label: the set too)
_DECISION = ("label", "task", "labels", "thresholds_source", "probabilities", "top_k", "trusted")


def check_options(
    segments: object = None,
    stride: object = None,
    *,
    fmt: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    top_k: int = 3,
    batch_size: int = DEFAULT_BATCH,
) -> Window:
    """The window of ``segments`` / ``stride`` (None: the run's, size None) after checking every option.

    Raises:
        ConfigError: one line naming the bad option (a window or stride as ``parse_window`` refuses,
            a timeout that is not a positive number of seconds, ``top_k`` or ``batch_size`` below 1,
            an FFmpeg input format this build does not have).
    """
    window = parse_window(RUN if segments is None else segments, stride)
    assert window is not None  # RUN at least
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout_s!r}")
    if not math.isfinite(timeout_s):
        raise ConfigError(f"--timeout must be a finite number of seconds, got {timeout_s!r}")
    for name, value in (("--top-k", top_k), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if fmt is not None:
        import av.format

        try:
            readable = av.format.ContainerFormat(fmt).is_input
        except ValueError:
            readable = False
        if not readable:
            raise ConfigError(
                f"--format {fmt}: this FFmpeg has no such input format; give one of "
                f"`python -c 'import av; print(av.formats_available)'` (e.g. mpegts, v4l2), or leave it out"
            )
    return window


def window_frames(predictor: Predictor, window: Window, where: str) -> tuple[int, int]:
    """(W, S) in frames of ``window`` (size None: the run's typical window) at the run's rate.

    Raises:
        ConfigError: the run's features were not sampled at a rate (N frames per video, imported).
    """
    if predictor.fps_ is None:
        raise ConfigError(
            f"{predictor.run_dir}: the run's features took a fixed number of frames per video, not frames "
            f"at a rate, so a stream cannot be cut into its windows; train on features extracted with --fps"
        )
    if window.size is None:
        window = run_default(window, predictor.window_, predictor.fps_)
    return frames_of(window, predictor.fps_, where=where)


def live_encoder(predictor: Predictor, batch_size: int) -> FrameEncoder:
    """The run's frame CNN (``predictor.encoder_``, checked against the run) encoding ``batch_size``
    frames per call: the same network shared, only the (zero-padded) call size differs."""
    encoder = copy.copy(predictor.encoder_)
    encoder.batch_size = int(batch_size)
    return encoder


def _source_name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)  # type: ignore[return-value]
    return str(getattr(source, "name", None) or "<stream>")


class Watch(Iterator[dict]):
    """The window records of a live source, in order (:func:`watch` builds it).

    Attributes:
        source: the source's name. size, stride: W and S in frames. fps: the run's sampling rate.
        frames: frames taken so far. windows: records given so far. ended: the stream came to its end.
    """

    def __init__(
        self,
        predictor: Predictor,
        source: Any,
        *,
        size: int,
        stride: int,
        fmt: str | None,
        timeout_s: float,
        top_k: int,
        encoder: FrameEncoder,
    ) -> None:
        self.source, self.size, self.stride = _source_name(source), size, stride
        self.fps = float(predictor.fps_ or 0.0)
        self.frames = self.windows = 0
        self.ended = False
        self._predictor, self._top_k = predictor, top_k
        opened = "pipe:0" if source == STDIN else source
        self._gen = self._records(opened, encoder, fmt, float(timeout_s))

    def __next__(self) -> dict:
        return next(self._gen)

    def close(self) -> None:
        """Stop watching: the decoder and its thread are let go."""
        self._gen.close()

    def _records(
        self, source: Any, encoder: FrameEncoder, fmt: str | None, timeout_s: float
    ) -> Generator[dict, None, None]:
        from ..features.stream import stream_features

        size, stride = self.size, self.stride
        feats: deque[np.ndarray] = deque(maxlen=size)
        stamps: deque[float] = deque(maxlen=size)
        arrived: deque[float] = deque(maxlen=size)
        chunks = stream_features(
            source,
            encoder,
            fps=self.fps,
            quality=self._predictor.quality_,
            live=True,
            fmt=fmt,
            timeout_s=timeout_s,
        )
        try:
            for chunk in chunks:
                for f, t, a in zip(chunk.features, chunk.timestamps_ms, chunk.arrived):
                    feats.append(f)
                    stamps.append(float(t))
                    arrived.append(float(a))
                    self.frames += 1
                    if self.frames == self.windows * stride + size:  # window k's last frame is in
                        yield self._record(np.stack(feats), stamps, arrived)
            self.ended = True
            covered = (self.windows - 1) * stride + size
            if self.windows and covered < self.frames:  # the tail: the last W frames
                yield self._record(np.stack(feats), stamps, arrived)
        finally:
            getattr(chunks, "close", lambda: None)()

    def _record(self, feats: np.ndarray, stamps: deque[float], arrived: deque[float]) -> dict:
        rec = self._predictor.predict_records([feats], top_k=self._top_k)[0]
        start = self.frames - self.size
        out: dict[str, Any] = {
            "source": self.source,
            "window_index": self.windows,
            "start_frame": start,
            "end_frame": self.frames,
            "start_s": round(stamps[0] / 1000.0, 3),
            "end_s": round(stamps[-1] / 1000.0 + 1.0 / self.fps, 3),
        }
        out.update({k: rec[k] for k in _DECISION if k in rec})
        out["trust_reason"] = rec["trust_reason"]
        out["latency_s"] = round(time.monotonic() - arrived[-1], 4)
        out["error"] = None
        self.windows += 1
        return out


def watch(
    predictor: Predictor,
    source: str | os.PathLike | IO[bytes],
    *,
    window: object = None,
    stride: object = None,
    fmt: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    top_k: int = 3,
    batch_size: int = DEFAULT_BATCH,
) -> Watch:
    """The window records of a live ``source`` as they complete (module docstring).

    Every option is checked and the encoder built here, before the source is opened (on the first
    ``next``). ``window`` / ``stride``: as ``--segments`` / ``--stride`` ("10s", 10; None: the run's
    window, ``predictor.window_``, and half of it).

    Raises:
        ConfigError: a bad option, or a run whose features were not sampled at a rate.
        BackboneError / CheckpointError: the run's frame CNN cannot be built here.
        vidcls.features.stream.StreamError: (while iterating) the source cannot be opened, stalls for
            ``timeout_s`` or disappears.
    """
    chosen = check_options(window, stride, fmt=fmt, timeout_s=timeout_s, top_k=top_k, batch_size=batch_size)
    size, step = window_frames(predictor, chosen, _source_name(source))
    encoder = live_encoder(predictor, batch_size)
    return Watch(
        predictor,
        source,
        size=size,
        stride=step,
        fmt=fmt,
        timeout_s=timeout_s,
        top_k=top_k,
        encoder=encoder,
    )


@contextmanager
def _whole_line() -> Iterator[None]:
    """Hold Ctrl-C back while a line is written: a record line is whole or not there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    before = signal.signal(signal.SIGINT, lambda sig, frame: got.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
        if got and before is not signal.SIG_IGN:
            raise KeyboardInterrupt


class LineWriter:
    """One JSON line per record on stdout, or appended to ``path`` (opened at the first record),
    flushed line by line.

    Raises:
        ConfigError: (built) ``path`` is no ``.jsonl`` file vidcls watch may append to.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        from .outputs import check_output

        self.path = None if path is None else Path(path)
        if self.path is not None:
            if self.path.suffix.lower() != ".jsonl":
                raise ConfigError(
                    f"--output {self.path}: watch writes JSON lines; give a file ending in .jsonl"
                )
            check_output(self.path, "jsonl", contents=False)
            _check_watch_lines(self.path)
        self._fh: IO[str] | None = sys.stdout if self.path is None else None  # a file: at the first record

    def write(self, record: dict) -> None:
        from .outputs import to_json

        line = to_json(record) + "\n"
        with _whole_line():
            if self._fh is None:
                assert self.path is not None
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        if self.path is not None and self._fh is not None:
            self._fh.close()
            self._fh = None


def _check_watch_lines(path: Path) -> None:
    """Refuse an existing ``path`` whose first line is not a watch record (appending would mix them)."""
    import json

    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
    try:
        ok = "window_index" in json.loads(first)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(
            f"--output {path} holds other data than vidcls watch records; it is left untouched: "
            f"choose another --output, or delete it to write there"
        )


class Summary:
    """What a watch did, as the one line printed at its end."""

    def __init__(self, watcher: Watch) -> None:
        self.watcher = watcher
        self.latencies: list[float] = []
        self.t0 = time.monotonic()

    def add(self, record: dict) -> None:
        self.latencies.append(float(record["latency_s"]))

    def line(self, how: str) -> str:
        """``how``: why the watch ended ("the stream ended", "stopped by Ctrl-C", an error)."""
        w = self.watcher
        seconds = f" ({w.size / w.fps:g} s)" if w.fps else ""
        text = (
            f"vidcls watch: {w.source}: {len(self.latencies)} windows of {w.size} frames{seconds} every "
            f"{w.stride} over {w.frames} frames in {time.monotonic() - self.t0:.1f} s"
        )
        if self.latencies:
            text += (
                f"; latency median {statistics.median(self.latencies):.3f} s, max {max(self.latencies):.3f} s"
            )
        elif w.ended and w.frames < w.size:
            text += f"; fewer frames than one window ({w.size})"
        return f"{text}; {how}"


def write_all(watcher: Watch, writer: LineWriter, summary: Summary) -> str:
    """Write every record of ``watcher``; how it ended ("the stream ended" / "stopped by Ctrl-C").

    Raises:
        StreamError: the source could not be opened, stalled or disappeared (records before it are written).
    """
    try:
        for record in watcher:
            writer.write(record)
            summary.add(record)
        return "the stream ended"
    except KeyboardInterrupt:
        return "stopped by Ctrl-C"
    finally:
        watcher.close()
        writer.close()
