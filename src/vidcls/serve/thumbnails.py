"""Small JPEG thumbnails of a video's frames at given timestamps, as data URIs (for the page)."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence

import av
import av.container
import numpy as np

from ..features.video import open_video, to_rgb

THUMB_HEIGHT = 72
SEEK_GAP_S = 2.0  # seek instead of decoding forward when the next time is this far ahead
_EPS_S = 1e-3


def _jpeg_uri(rgb: np.ndarray, height: int) -> str:
    from PIL import Image

    img = Image.fromarray(rgb)
    width = max(1, round(img.width * height / max(1, img.height)))
    img = img.resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def frame_thumbnails(
    path: str | os.PathLike, timestamps_ms: Sequence[float | None], height: int = THUMB_HEIGHT
) -> list[str | None]:
    """One data URI per timestamp: the frame on screen at that time (the last one at or before it).

    Args:
        path: the video file.
        timestamps_ms: frame times in ms (None entries get None).
        height: thumbnail height in pixels (the width keeps the aspect ratio).

    Returns:
        A list as long as ``timestamps_ms``; None where no frame was found. Never raises on a
        broken video: thumbnails are a convenience, the prediction does not depend on them.
    """
    out: list[str | None] = [None] * len(timestamps_ms)
    wanted = sorted((t / 1000.0, i) for i, t in enumerate(timestamps_ms) if t is not None)
    if not wanted:
        return out
    try:
        container, stream = open_video(path)
    except Exception:  # noqa: BLE001 - no thumbnails, nothing else
        return out
    try:
        _fill(container, stream, wanted, out, height)
    except (av.FFmpegError, ValueError, OSError):
        pass
    finally:
        container.close()
    return out


def _fill(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    wanted: list[tuple[float, int]],
    out: list[str | None],
    height: int,
) -> None:
    """Decode forward, seeking ahead when the next wanted time is over SEEK_GAP_S away. Each seek
    target lies beyond the previous one, so the loop ends."""
    assert stream.time_base is not None  # FFmpeg sets it on every demuxed stream
    tb = float(stream.time_base)
    start = stream.start_time or 0
    k, last = 0, None

    def take_until(t_frame: float) -> None:
        nonlocal k
        while k < len(wanted) and wanted[k][0] < t_frame - _EPS_S:  # ``last`` is on screen then
            if last is not None:
                out[wanted[k][1]] = _jpeg_uri(to_rgb(last), height)
            k += 1

    target = wanted[0][0]
    while True:
        container.seek(int(target / tb) + start, stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = (frame.pts - start) * tb
            take_until(t)
            last = frame
            if k >= len(wanted):
                return
            if t >= target - _EPS_S and wanted[k][0] - t > SEEK_GAP_S:
                target = wanted[k][0]
                break
        else:  # end of the stream: the last frame stays on screen
            take_until(float("inf"))
            return
