"""Video decoding (PyAV / FFmpeg) and frame sampling for feature extraction.

Sampling (:mod:`vidcls.features.sampling`) picks *times*; the frame used for time t is the frame on
screen at t, i.e. the last frame whose presentation time is <= t, and its own presentation time is
what gets recorded. A frame is never used twice (``--fps`` above the video's frame rate gives fewer
frames, not copies).

Decoding goes forward from the start and stops as soon as the last sampled frame is reached. Two
shortcuts keep it cheap (on a small machine decoding shares the CPU with the CNN):

- when the container has an index (MP4, MOV, AVI ...) and a keyframe lies between the current
  position and the next sampled time, the reader seeks to that keyframe instead of decoding the gap;
- packets more than two frame intervals before the next sampled time are decoded with
  ``skip_frame=NONREF``: frames no other frame refers to (most B-frames) are not decoded at all.
  In a video with a gap of more than two frame intervals right before a sampled time this can pick
  an earlier frame than the one on screen; the recorded timestamp is always the frame's own.

Nothing here imports torch: this module runs in the decode worker processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import av
import av.container
import numpy as np

from .sampling import Sampling  # also importable from here, its first home

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .mpg .mpeg .wmv .flv .ts .mts .m2ts .3gp .ogv".split()
)
SKIP_REASONS = {  # code -> what it means; every skipped video in the report carries one
    "not_video": "the file name does not have a video extension",
    "empty": "the file has 0 bytes",
    "unreadable": "the file cannot be read (permissions, I/O error)",
    "cannot_open": "FFmpeg cannot open it: corrupt, truncated before the index, or not a video",
    "no_video_stream": "no video stream (audio-only or another kind of file)",
    "corrupt": "no frame could be decoded",
    "truncated": "the frames stop well before the duration the file declares",
    "too_short": "no frame at any sampled time (the video stream holds no frames)",
    "duplicate": "byte-identical to a video kept in another split",
    "bad_features": "the CNN gave NaN/Inf features",
    "error": "an unexpected error (a bug: please report it with the file)",
}
# frames may stop this much (or this share) before the declared end without being "truncated":
# durations are rounded, edit lists trim, a last frame can be dropped by the encoder
TRUNCATED_MIN_S = 1.0
TRUNCATED_MIN_SHARE = 0.05
MAX_DECODE_ERRORS = 50  # give up on a stream after this many undecodable packets
SEEK_MIN_GAIN_FRAMES = 8  # seek only when it skips at least this many frames
_EPS_S = 1e-6  # timestamps within a microsecond count as equal (float rounding of pts * time_base)


class VideoSkip(Exception):
    """A video that cannot be used. ``code`` is a key of SKIP_REASONS; the message names the file
    and says how to fix it."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame, turned upright by its display rotation."""
    rgb = frame.to_ndarray(format="rgb24")
    # PyAV reports the display matrix angle counter-clockwise (as FFmpeg), like np.rot90's k > 0
    k = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


@dataclass
class DecodedVideo:
    """What ``read_frames`` returns: one ``on_frame`` result and one timestamp per used frame."""

    items: list = field(default_factory=list)
    timestamps_ms: list = field(default_factory=list)
    duration_s: float = 0.0
    decoded_frames: int = 0
    seeks: int = 0
    decode_errors: list = field(default_factory=list)
    duration_trusted: bool = True  # False: only the container's duration, which other streams set
    notes: list = field(default_factory=list)


class _Clock:
    """Presentation time in seconds of a frame or index entry, from the stream start."""

    def __init__(self, stream: av.VideoStream):
        assert stream.time_base is not None  # FFmpeg sets it on every demuxed stream
        self.tb = float(stream.time_base)
        self.start = stream.start_time or 0
        rate = stream.average_rate or stream.guessed_rate
        self.frame_s = 1.0 / float(rate) if rate and float(rate) > 0 else 0.04

    def seconds(self, pts: int | None, previous: float | None) -> float:
        if pts is None:  # a few raw/AVI streams lack pts: assume a constant rate
            return 0.0 if previous is None else previous + self.frame_s
        return (pts - self.start) * self.tb

    def pts(self, seconds: float) -> int:
        return int(round(seconds / self.tb)) + self.start


def _unreadable_fix(err: OSError) -> str:
    """Why a path cannot be read, and the fix that matches the reason."""
    if isinstance(err, FileNotFoundError):
        return "no such file (moved or deleted?); check the path"
    if isinstance(err, IsADirectoryError):
        return "is a folder, not a video file; give the video files in it, or the folder itself where folders are read"
    if isinstance(err, PermissionError):
        return f"cannot be read ({err.strerror}); fix its permissions (chmod a+r) or remove it"
    return f"cannot be read ({err.strerror or err}); check the disk or copy the file elsewhere"


def open_video(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open ``path`` with FFmpeg and pick its video stream.

    Returns:
        (container, stream).

    Raises:
        VideoSkip: empty, unreadable, not openable, or without a video stream.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as err:
        raise VideoSkip("unreadable", f"{path}: {_unreadable_fix(err)}") from None
    if size == 0:
        raise VideoSkip("empty", f"{path}: empty file (0 bytes); re-download it or remove it")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as err:
        raise VideoSkip(
            "cannot_open",
            f"{path}: FFmpeg cannot open it ({_ffmpeg_msg(err)}); the "
            f"file is corrupt, truncated or not a video: re-download "
            f"or re-encode it",
        ) from None
    streams = [s for s in container.streams.video if not _is_cover_art(s)]
    if not streams:
        kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoSkip(
            "no_video_stream",
            f"{path}: no video stream (streams: {', '.join(kinds)});"
            f" audio-only files cannot be classified, remove it",
        )
    return container, streams[0]


def _is_cover_art(stream: av.VideoStream) -> bool:
    """An attached picture (album art in an audio file) shows up as a one-frame video stream."""
    try:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except (AttributeError, TypeError):  # PyAV versions without the Disposition flags
        return False


def _ffmpeg_msg(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def read_frames(
    path: str | os.PathLike,
    sampling: Sampling,
    on_frame: Callable[[np.ndarray], Any] = lambda rgb: rgb,
    *,
    threads: int = 1,
    seek: bool = True,
    skip_unused: bool = True,
) -> DecodedVideo:
    """Decode the frames at ``sampling``'s times and pass each, as RGB, to ``on_frame``.

    Args:
        path: the video file.
        sampling: which times to take.
        on_frame: called with each used (H, W, 3) uint8 frame; its results are returned.
        threads: FFmpeg decoder threads.
        seek: allow seeking to index keyframes (False: always decode forward from the start).
        skip_unused: skip non-reference frames far from the sampled times (see the module doc).

    Returns:
        DecodedVideo with the results, their timestamps (ms) and decoding statistics.

    Raises:
        VideoSkip: the video cannot be used; the code and message say why.
    """
    container, stream = open_video(path)
    try:
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = max(1, int(threads))
        clock = _Clock(stream)
        duration, trusted = _duration(container, stream, clock, path)
        times = sampling.times(duration)
        if not len(times):
            raise VideoSkip("too_short", f"{path}: the video stream holds no frames; remove it")
        assert duration is not None  # no duration gives no sampled times
        keyframes = _keyframe_times(stream, clock) if seek else None
        out = DecodedVideo(duration_s=float(duration), duration_trusted=trusted)
        _Picker(
            container,
            stream,
            clock,
            times,
            keyframes=keyframes,
            on_frame=on_frame,
            out=out,
            path=Path(path),
            skip_unused=skip_unused,
        ).run()
        return out
    finally:
        container.close()


def _duration(
    container: av.container.InputContainer, stream: av.VideoStream, clock: _Clock, path: str | os.PathLike
) -> tuple[float | None, bool]:
    """(seconds, trusted): the video stream's duration (header, or Matroska's DURATION tag), else
    the container's, else the last packet's end. The container's is not trusted to be the video's
    when there is an audio stream: a longer soundtrack sets it."""
    if stream.duration:
        return stream.duration * clock.tb, True
    tag = _parse_hms((stream.metadata or {}).get("DURATION"))
    if tag:
        return tag, True
    if container.duration:
        return container.duration / av.time_base, not container.streams.audio
    return _scan_duration(path, stream, clock), True


def _parse_hms(text: object) -> float | None:
    """'01:02:03.5' -> 3723.5 seconds; None if not in that form."""
    try:
        h, m, sec = str(text).split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (TypeError, ValueError):
        return None


def _scan_duration(path: str | os.PathLike, stream: av.VideoStream, clock: _Clock) -> float | None:
    """The end of the last video packet (for streams without any duration in their headers)."""
    end = None
    with av.open(str(path), metadata_errors="ignore") as scan:  # no header duration (raw streams)
        s = next((x for x in scan.streams.video if x.index == stream.index), None)
        if s is None:
            return None
        try:
            for packet in scan.demux(s):
                if packet.pts is not None:
                    stop = clock.seconds(packet.pts, None) + (packet.duration or 0) * clock.tb
                    end = stop if end is None else max(end, stop)
        except av.FFmpegError:
            pass
    return end


def _keyframe_times(stream: av.VideoStream, clock: _Clock) -> np.ndarray | None:
    """Keyframe times from the container index (None without a usable index)."""
    try:
        entries = stream.index_entries
        times = [clock.seconds(e.timestamp, None) for e in entries if e.is_keyframe]
    except (AttributeError, av.FFmpegError):  # older PyAV or no index
        return None
    return np.asarray(sorted(times)) if len(times) >= 2 else None


class _Picker:
    """The decode loop of ``read_frames``: forward decoding, optional seeks, end-of-stream rules."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        clock: _Clock,
        times: np.ndarray,
        *,
        keyframes: np.ndarray | None,
        on_frame: Callable[[np.ndarray], Any],
        out: DecodedVideo,
        path: Path,
        skip_unused: bool,
    ):
        self.container, self.stream, self.clock = container, stream, clock
        self.skip_unused, self.target = skip_unused, times[0]  # target: the next sampled time
        self.times, self.keyframes, self.on_frame = times, keyframes, on_frame
        self.out, self.path = out, path
        self.last_used: float | None = None
        self.seek_floor = -math.inf  # the keyframe of the last seek: only ever seek further on
        self.before_seek = -math.inf  # where decoding was when it last sought

    def run(self) -> None:
        times, i, prev = self.times, 0, None  # prev: (t, frame) of the latest decoded frame
        frames = self._frames()
        while i < len(times):
            frame = next(frames, None)
            if frame is None:
                break
            self.out.decoded_frames += 1
            t = self.clock.seconds(frame.pts, prev[0] if prev else None)
            while i < len(times) and t > times[i] + _EPS_S:  # the frame on screen at times[i]
                self._use(*(prev or (t, frame)))
                i += 1
                self.target = times[i] if i < len(times) else math.inf
            if self.out.seeks and prev is None and t < self.before_seek - _EPS_S:
                self.keyframes = None  # the seek went backwards: this index misleads, stop seeking
            prev = (t, frame)
            if i < len(times) and self._maybe_seek(t, times[i]):
                self.before_seek = t
                frames, prev = self._frames(), None
        self._finish(i, prev)

    def _frames(self) -> Iterator[av.VideoFrame]:
        """Decoded frames in presentation order; undecodable packets are counted and skipped."""
        packets = self.container.demux(self.stream)
        ctx = self.stream.codec_context
        mode: Literal["DEFAULT", "NONREF"] = "DEFAULT"
        ctx.skip_frame = mode
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as err:  # a damaged container: treat as the end of the stream
                self.out.decode_errors.append(f"demux: {_ffmpeg_msg(err)}")
                return
            if self.skip_unused:
                far = (
                    packet.pts is not None
                    and self.clock.seconds(packet.pts, None) < self.target - 2 * self.clock.frame_s
                )
                if far != (mode == "NONREF"):
                    mode = "NONREF" if far else "DEFAULT"
                    ctx.skip_frame = mode
            try:
                decoded = packet.decode()
            except av.FFmpegError as err:
                self.out.decode_errors.append(_ffmpeg_msg(err))
                if len(self.out.decode_errors) >= MAX_DECODE_ERRORS:
                    return
                continue
            yield from decoded

    def _maybe_seek(self, t: float, target: float) -> bool:
        """Seek when the index has a keyframe between here and ``target`` (then seek to it)."""
        if self.keyframes is None:
            return False
        fs = self.clock.frame_s
        # Index times may be decode times, a few frames before presentation: keep a margin so
        # the keyframe is on screen before the target, and aim a little past the entry.
        j = int(np.searchsorted(self.keyframes, target - 3 * fs, side="right")) - 1
        if j < 0 or self.keyframes[j] <= max(t + SEEK_MIN_GAIN_FRAMES * fs, self.seek_floor):
            return False
        self.seek_floor = self.keyframes[j]
        self.container.seek(
            self.clock.pts(self.keyframes[j] + 2 * fs), backward=True, any_frame=False, stream=self.stream
        )
        self.out.seeks += 1
        return True

    def _use(self, t: float, frame: av.VideoFrame) -> None:
        if self.last_used is not None and abs(t - self.last_used) <= _EPS_S:
            return  # the same frame serves two sampled times: use it once
        self.out.items.append(self.on_frame(to_rgb(frame)))
        self.out.timestamps_ms.append(t * 1000.0)
        self.last_used = t

    def _finish(self, i: int, prev: tuple[float, av.VideoFrame] | None) -> None:
        """The stream ended with sampled times left: use the last frame, or call it truncated."""
        times, out, path = self.times, self.out, self.path
        if prev is None and not out.items:
            if out.decode_errors:
                raise VideoSkip(
                    "corrupt",
                    f"{path}: no frame could be decoded ({out.decode_errors[0]});"
                    f" the file is damaged: re-download or re-encode it",
                )
            raise VideoSkip("too_short", f"{path}: the video stream holds no frames; remove it")
        if i >= len(times):
            return
        end = prev[0] + self.clock.frame_s if prev else out.timestamps_ms[-1] / 1000.0
        missing = out.duration_s - end
        if times[-1] > end + 0.5 * self.clock.frame_s and missing > max(
            TRUNCATED_MIN_S, TRUNCATED_MIN_SHARE * out.duration_s
        ):
            errors = f", decoder: {out.decode_errors[-1]}" if out.decode_errors else ""
            if out.duration_trusted:
                raise VideoSkip(
                    "truncated",
                    f"{path}: frames stop at {end:.2f} s but the video "
                    f"stream declares {out.duration_s:.2f} s (an interrupted"
                    f" download?{errors}); re-download or re-encode it",
                )
            # only the container's duration is known, and its audio may simply be longer
            out.notes.append(
                f"frames stop at {end:.2f} s, the file declares {out.duration_s:.2f} s "
                f"(a longer audio track, or a truncated file{errors})"
            )
        if prev is not None:  # the declared end is a little past the last frame: it stays on screen
            self._use(*prev)
