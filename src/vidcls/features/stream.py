"""Frame features of a whole video or of a live source, encoded as it is decoded.

``vidcls extract`` decodes a video's sampled frames first and encodes them after; a video longer than
the frame cap is thinned to it. Segments (``vidcls predict --segments``) and live input (``vidcls
watch``) need every frame at the run's rate over the whole video, or of a stream that has no end, so
here decoding and the CNN take turns: a decoder thread takes the frames at the rate and drops dark /
blurry ones, and the frames that wait are encoded ``encoder.batch_size`` at a time (live: whatever
waits, at once) and handed on as :class:`FrameChunk`. Memory holds at most a bounded queue of
resized frames (``QUEUE_FRAMES``) and one CNN batch, never the decoded video.

The frames are chosen as extraction chooses them (:mod:`vidcls.features.video`): the frame used for
time ``k / fps`` (k = 0, 1, 2, ...) is the frame on screen then, its own presentation time is what is
recorded, and a frame is never used twice; packets far before the next time are decoded with
``skip_frame=NONREF`` as there. A file's times count from its video stream's start (as extraction's),
a live source's from its first frame. A video no longer than the run's frame cap gets the very frames
(and timestamps) extraction gives it. Two differences: the quality filter decides frame by frame (a
video whose frames are all too dark gets none here, where extraction keeps its best share), and a
file whose frames stop before its declared end is taken as far as it goes.

Live sources (``live=True``): anything FFmpeg opens (a URL, ``pipe:N``, a device with ``fmt``, a
binary file-like object, a growing file, read with FFmpeg's ``follow``), decoded without frame
threading (which holds frames back). A source that sends no frame for ``timeout_s`` seconds has
stalled: :class:`StreamError`; so has one that breaks off with a read error.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import av
import av.container
import numpy as np
import torch

from ..errors import ExtractError
from .backbone import FrameEncoder
from .quality import Quality
from .video import (
    _EPS_S,
    MAX_DECODE_ERRORS,
    VideoSkip,
    _Clock,
    _ffmpeg_msg,
    _is_cover_art,
    open_video,
    to_rgb,
)

__all__ = ["FrameChunk", "StreamError", "stream_features", "QUEUE_FRAMES"]

QUEUE_FRAMES = 64  # resized frames the decoder may hold ahead of the CNN (it waits beyond that)
LIVE_PROBESIZE, LIVE_ANALYZE_US = "8192", "100000"  # bytes, microseconds (FFmpeg: 5 MB, 5 s)
_PUT_WAIT_S = 0.25  # the decoder re-checks for a stop this often while the queue is full


@dataclass
class FrameChunk:
    """Frames in a row out of :func:`stream_features`.

    Attributes:
        features: (n, D) float32. timestamps_ms: (n,) presentation times. arrived: (n,)
            ``time.monotonic()`` when each frame was taken (came out of the decoder as the frame on
            screen at its time).
    """

    features: np.ndarray
    timestamps_ms: np.ndarray
    arrived: np.ndarray


class StreamError(ExtractError):
    """A source that cannot be opened, stalls or breaks off (the message names it and says why)."""


class _OnScreen:
    """The frame on screen at ``k / fps``, k = 0, 1, ..., for frames given in presentation order."""

    def __init__(self, fps: float) -> None:
        self.fps, self.k = float(fps), 0
        self.prev: tuple[float, Any] | None = None
        self.last_used: float | None = None

    @property
    def target(self) -> float:
        return self.k / self.fps  # as Sampling.times computes k / fps

    def push(self, t: float, frame: Any) -> list[tuple[float, Any]]:
        """The frames to use now that the frame at ``t`` s has come (0, 1 or more)."""
        used = []
        while t > self.target + _EPS_S:  # the previous frame was on screen at the target
            used += self._use(*(self.prev or (t, frame)))
            self.k += 1
        if abs(t - self.target) <= _EPS_S:  # this frame is on screen at the target: no need to wait
            used += self._use(t, frame)
            self.k += 1
        self.prev = (t, frame)
        return used

    def finish(self, frame_s: float) -> list[tuple[float, Any]]:
        """At the end: the last frame, when a target falls within its display time."""
        if self.prev is None or not self.target < self.prev[0] + frame_s - _EPS_S:
            return []
        return self._use(*self.prev)

    def _use(self, t: float, frame: Any) -> list[tuple[float, Any]]:
        if self.last_used is not None and abs(t - self.last_used) <= _EPS_S:
            return []  # the same frame serves two times: used once
        self.last_used = t
        return [(t, frame)]


def _name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)  # type: ignore[return-value]
    return str(getattr(source, "name", None) or "<stream>")


def _open_live(
    source: Any, fmt: str | None, timeout_s: float, options: dict | None
) -> tuple[av.container.InputContainer, av.VideoStream]:
    # FFmpeg probes 5 s or 5 MB of a stream before its first frame; a live one needs its first packets
    opts = {"probesize": LIVE_PROBESIZE, "analyzeduration": LIVE_ANALYZE_US, **(options or {})}
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        source = f"file:{os.fspath(source)}"  # a growing file: read on at its end (FFmpeg's follow)
        opts.setdefault("follow", "1")
        opts.setdefault("seekable", "0")  # else FFmpeg reads the end for the duration: waits for it
        opts.setdefault("rw_timeout", str(int(timeout_s * 1e6)))
    name = _name(source)
    try:
        container = av.open(source, format=fmt, options=opts, timeout=timeout_s, metadata_errors="ignore")
    except (av.FFmpegError, OSError) as err:
        raise StreamError(
            f"{name}: cannot open the stream ({_ffmpeg_msg(err)}); check the address or path, that it is "
            f"playing, and --format"
        ) from None
    streams = [s for s in container.streams.video if not _is_cover_art(s)]
    if not streams:
        container.close()
        raise StreamError(f"{name}: the stream has no video; give a source with video")
    return container, streams[0]


class _Decoder(threading.Thread):
    """Opens the source, takes the frames at the rate, filters and resizes them into ``out``."""

    def __init__(
        self,
        opener: Callable[[], tuple],
        name: str,
        take: _OnScreen,
        encoder: FrameEncoder,
        quality: Quality,
        live: bool,
    ) -> None:
        super().__init__(daemon=True, name=f"vidcls-decode {name}")
        self.opener, self.source, self.take, self.live = opener, name, take, live
        self.geometry, self.quality = encoder.preprocess.geometry, quality
        self.out: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self.stop = threading.Event()
        self.decoded = 0

    def run(self) -> None:
        try:
            container, stream = self.opener()
        except VideoSkip as skip:
            self._put(("error", StreamError(str(skip))))
            return
        except BaseException as err:  # a StreamError, or a bug: raised again in the reader's thread
            self._put(("error", err))
            return
        try:
            self._decode(container, stream)
            self._put(("end", None))
        except BaseException as err:
            self._put(("error", err))
        finally:
            container.close()

    def _decode(self, container: av.container.InputContainer, stream: av.VideoStream) -> None:
        stream.thread_type = "SLICE" if self.live else "AUTO"  # frame threads hold frames back
        stream.codec_context.thread_count = 1
        clock, errors = _Clock(stream), []
        origin: float | None = None if self.live or stream.start_time is None else 0.0
        ctx = stream.codec_context
        mode: Literal["DEFAULT", "NONREF"] = "DEFAULT"
        for packet in self._packets(container, stream):
            if packet.pts is not None and origin is not None:
                far = clock.seconds(packet.pts, None) - origin < self.take.target - 2 * clock.frame_s
                if far != (mode == "NONREF"):
                    mode = "NONREF" if far else "DEFAULT"
                    ctx.skip_frame = mode
            try:
                frames = packet.decode()
            except av.FFmpegError as err:
                errors.append(_ffmpeg_msg(err))
                if len(errors) >= MAX_DECODE_ERRORS:
                    break
                continue
            for frame in frames:
                prev = self.take.prev[0] if self.take.prev else None
                t = clock.seconds(frame.pts, None if prev is None else prev + (origin or 0.0))
                origin = t if origin is None else origin
                self._emit(self.take.push(t - origin, frame))
                if self.stop.is_set():
                    return
        self._emit(self.take.finish(clock.frame_s))
        if not self.decoded and errors:
            raise StreamError(f"{self.source}: no frame could be decoded ({errors[0]}); the video is damaged")

    def _packets(self, container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[Any]:
        demux = container.demux(stream)
        while not self.stop.is_set():
            try:
                packet = next(demux)
            except StopIteration:
                return
            except (av.FFmpegError, OSError) as err:
                if not self.live:  # a damaged file: its end, as extraction takes it
                    return
                raise StreamError(
                    f"{self.source}: the stream broke off after {self.decoded} frames ({_ffmpeg_msg(err)})"
                ) from None
            yield packet

    def _emit(self, used: list[tuple[float, Any]]) -> None:
        for t, frame in used:
            x = self.geometry(torch.from_numpy(to_rgb(frame)).permute(2, 0, 1))
            self.decoded += 1
            bright, sharp = self.quality.measure(x.numpy())
            dark = bright < self.quality.min_brightness
            blurry = (
                self.quality.min_sharpness > 0 and sharp is not None and sharp < self.quality.min_sharpness
            )
            # a dropped frame still tells the reader that the source is alive
            self._put(("tick", None) if dark or blurry else ("frame", (t * 1000.0, x, time.monotonic())))

    def _put(self, item: tuple) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=_PUT_WAIT_S)
                return
            except queue.Full:
                continue


def stream_features(
    source: str | os.PathLike | IO[bytes],
    encoder: FrameEncoder,
    *,
    fps: float,
    quality: Quality,
    live: bool = False,
    fmt: str | None = None,
    timeout_s: float = 10.0,
    options: dict | None = None,
) -> Iterator[FrameChunk]:
    """The features of ``source``'s frames at ``fps``, in order, as they are encoded (module docstring).

    Args:
        source: a video file; live: a URL, ``pipe:N``, a device, a growing file or a binary file-like.
        encoder: the frame CNN (its ``batch_size`` frames per call). fps: frames per second taken.
        quality: the frame filter. live: read a source that has no end yet (module docstring).
        fmt: FFmpeg's input format (live). timeout_s: a live source without a frame for this long has
            stalled. options: FFmpeg options for opening a live source.

    Raises:
        StreamError: the source cannot be opened or decoded, stalls or breaks off (while iterating).
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ExtractError(f"fps must be a positive number, got {fps!r}")
    name = _name(source)
    if live:
        opener: Callable[[], tuple] = lambda: _open_live(source, fmt, float(timeout_s), options)  # noqa: E731
    else:
        opener = lambda: open_video(source)  # type: ignore[arg-type]  # noqa: E731
    decoder = _Decoder(opener, name, _OnScreen(fps), encoder, quality, live)
    decoder.start()
    try:
        yield from _chunks(decoder, encoder, timeout_s if live else None)
    finally:
        decoder.stop.set()  # the thread ends at its next frame (a blocked read: with the process)


def _chunks(decoder: _Decoder, encoder: FrameEncoder, timeout_s: float | None) -> Iterator[FrameChunk]:
    pending: list[tuple[float, torch.Tensor, float]] = []
    ended = False
    while not ended:
        kind, value = _get(decoder, timeout_s)
        while True:
            if kind == "frame":
                pending.append(value)
            elif kind == "end":
                ended = True
            elif kind == "error":
                raise value
            if ended or len(pending) >= encoder.batch_size:
                break
            try:
                kind, value = decoder.out.get_nowait()
            except queue.Empty:
                break
        live_ready = timeout_s is not None and pending
        while pending and (ended or live_ready or len(pending) >= encoder.batch_size):
            batch, pending = pending[: encoder.batch_size], pending[encoder.batch_size :]
            yield FrameChunk(
                features=encoder.encode(torch.stack([x for _, x, _ in batch])),
                timestamps_ms=np.asarray([t for t, _, _ in batch], np.float64),
                arrived=np.asarray([a for _, _, a in batch], np.float64),
            )
            live_ready = False


def _get(decoder: _Decoder, timeout_s: float | None) -> tuple[str, Any]:
    try:
        return decoder.out.get(timeout=timeout_s)
    except queue.Empty:
        when = "before its first frame" if decoder.decoded == 0 else f"after {decoder.decoded} frames"
        raise StreamError(
            f"{decoder.source}: no frame for {timeout_s:g} s {when}: the source stalled or stopped sending; "
            f"check it, or raise --timeout"
        ) from None
