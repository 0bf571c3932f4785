"""Attention timelines: one PNG per predicted video, frame thumbnails along time.

The picture shows, left to right, up to ``MAX_THUMBS`` of the frames the model saw (spread over the
video, always including the frame with the highest attention), each with its attention weight as a
bar under it and its timestamp; below them, the attention of every frame against time. The title
gives the input, the label with its probability (a multi-label run: and its label set, ``a|b``) and
the trust verdict. Frames are decoded again
from the video at the record's timestamps (the frame on screen at each, as extraction picks them).
Inputs without a video (feature files), or a video that cannot be decoded again, get the attention
strip alone.

A segments record (``vidcls predict --segments``) also gets its spans as coloured bands over the
attention strip, on the same time axis (seconds, or frame positions for features without
timestamps), one colour per class of the run and a legend on the right (:mod:`vidcls.predict.bands`;
multi-label: one lane per class). Its thumbnails are spread over the whole video, as its ``frames``
are.

Class names and paths are drawn literally (no mathtext), and the figure never touches pyplot.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..features.sampling import Sampling
from ..reporting.plots import LITERAL, new_figure, to_png
from ..utils.fs import atomic_write_bytes
from ..utils.sampling import uniform_indices
from . import bands
from .multilabel import labels_cell
from .verdict import NOT_TRUSTED, UNKNOWN, state

__all__ = [
    "MAX_THUMBS",
    "TIMELINE_SIZE",
    "timeline_name",
    "frame_thumbnails",
    "thumbnail_frames",
    "timeline_png",
    "write_timeline",
]

MAX_THUMBS = 12
TIMELINE_SIZE = (15.0, 5.0)  # inches; at plots.DPI (80): 1200 x 400 px, the same for every video
STRIP_LEFT, STRIP_BOTTOM = 0.06, 0.10  # the attention strip (and the bands over it), figure fractions
STRIP_WIDTH, STRIP_WIDTH_SPANS = 0.9, 0.8  # with spans: room on the right for their legend
BAND_ROW, BAND_LANE, BAND_MAX, BAND_GAP = 0.06, 0.035, 0.14, 0.015  # band heights (figure fractions)
THUMB_PX = (160, 120)  # the largest thumbnail kept in memory, (w, h)
MAX_NAME = 120  # characters of the file name taken from the input path
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def timeline_name(input_name: str, taken: set[str] | None = None) -> str:
    """A file name (``.png``) for ``input_name``, safe on every file system and unique in ``taken``.

    The path's separators and unsafe characters become ``_``; a name that would be too long, or
    that ``taken`` already holds, gets a short hash of the full input so that it stays unique (and
    the same on every run). The name returned is added to ``taken``.
    """
    base = _UNSAFE.sub("_", str(input_name).replace("\\", "/").strip("/").replace("/", "__"))
    base = base.strip("._") or "input"
    digest = hashlib.sha1(str(input_name).encode("utf-8", "surrogatepass")).hexdigest()[:10]
    if len(base) > MAX_NAME:
        base = f"{base[-MAX_NAME:].lstrip('._')}-{digest}"
    name = f"{base}.png"
    if taken is not None:
        if name.lower() in taken:  # case-insensitive file systems: Clip.mp4 vs clip.mp4
            name = f"{base}-{digest}.png"
            n = 2
            while name.lower() in taken:
                name = f"{base}-{digest}-{n}.png"
                n += 1
        taken.add(name.lower())
    return name


@dataclass(frozen=True)
class _AtTimes(Sampling):
    """A sampling of exactly the given times (seconds), for ``read_frames``: only ``times`` is read."""

    seconds: tuple[float, ...] = ()

    def times(self, duration_s: float | None) -> np.ndarray:
        return np.asarray(sorted(self.seconds), np.float64)


def frame_thumbnails(path: str | os.PathLike, timestamps_ms: Iterable[float]) -> list[np.ndarray | None]:
    """The frames of video ``path`` at ``timestamps_ms``, as small RGB arrays (None where missing).

    Raises:
        vidcls.features.video.VideoSkip: the video cannot be decoded.
    """
    from PIL import Image

    from ..features.video import read_frames

    wanted = [float(t) for t in timestamps_ms]
    if not wanted:
        return []

    def small(rgb: np.ndarray) -> np.ndarray:
        img = Image.fromarray(rgb)
        img.thumbnail(THUMB_PX)
        return np.asarray(img)

    decoded = read_frames(path, _AtTimes(seconds=tuple(t / 1000.0 for t in wanted)), small)
    got = np.asarray(decoded.timestamps_ms, np.float64)
    out: list[np.ndarray | None] = []
    for t in wanted:
        if not len(got):
            out.append(None)
            continue
        j = int(np.argmin(np.abs(got - t)))
        out.append(decoded.items[j] if abs(got[j] - t) <= 1.0 else None)
    return out


def _pick(attention: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` frame positions spread over the video, the most attended one included."""
    n = len(attention)
    picks = [int(i) for i in uniform_indices(n, k)] if n else []
    if n > k:
        top = int(np.argmax(attention))
        if top not in picks:
            nearest = min(range(len(picks)), key=lambda i: abs(picks[i] - top))
            picks[nearest] = top
            picks.sort()
    return picks


def _seconds(t: float | None) -> str:
    return "?" if t is None else f"{float(t) / 1000.0:.1f} s"


def _title(record: dict) -> str:
    top = record.get("top_k") or []
    prob = f" ({float(top[0]['probability']):.1%})" if top else ""
    said = state(record.get("trusted"))
    if said == UNKNOWN:
        said = "trust unknown (not calibrated: run `vidcls calibrate RUN_DIR`)"
    elif said == NOT_TRUSTED:
        said = f"not trusted: {record.get('trust_reason') or '?'}"
    labels = f", labels {labels_cell(record)}" if record.get("task") == "multilabel" else ""
    return f"{record.get('input', '')}\n{record.get('label')}{prob}{labels}, {said}"


def thumbnail_frames(record: dict) -> list[int]:
    """Positions in ``record["frames"]`` the timeline shows as thumbnails."""
    att = np.asarray([float(f.get("attention") or 0.0) for f in record.get("frames") or []])
    return _pick(att, MAX_THUMBS)


def _thumbnail_row(fig: Figure, record: dict, att: np.ndarray, thumbs: dict) -> None:
    """The thumbnails of ``thumbnail_frames(record)`` with their attention bars, in equal slots."""
    times = [f.get("timestamp_ms") for f in record.get("frames") or []]
    picks = thumbnail_frames(record)
    width = 0.92 / MAX_THUMBS
    left0 = 0.04 + (MAX_THUMBS - len(picks)) * width / 2  # centred when fewer
    peak = float(att.max()) if len(att) and att.max() > 0 else 1.0
    for slot, i in enumerate(picks):
        left = left0 + slot * width
        ax = fig.add_axes((left + 0.004, 0.58, width - 0.008, 0.26))
        ax.set_axis_off()
        if thumbs.get(i) is not None:
            ax.imshow(thumbs[i], aspect="auto", interpolation="bilinear")
        else:
            ax.text(0.5, 0.5, "not decoded", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        bar = fig.add_axes((left + 0.004, 0.50, width - 0.008, 0.07))
        bar.barh([0], [att[i] / peak], color="tab:orange", height=0.8)
        bar.set_xlim(0, 1)
        bar.set_ylim(-0.5, 0.5)
        bar.set_xticks([])
        bar.set_yticks([])
        bar.set_title(f"{_seconds(times[i])}   {att[i]:.3f}", fontsize=7, y=-0.9)


def _span_seconds(record: dict) -> bool:
    """Whether the strip and the bands are in seconds: every frame and span has its times."""
    frames, spans = record.get("frames") or [], record.get("spans") or []
    return all(f.get("timestamp_ms") is not None for f in frames) and all(
        s.get("start_s") is not None and s.get("end_s") is not None for s in spans
    )


def _window_note(record: dict) -> str:
    """ "; bands: spans of 2 s windows every 1 s" (the record's ``window``), "" without one."""
    w = record.get("window") or {}
    if w.get("seconds") is not None and w.get("stride_s") is not None:
        return f"; bands: spans of {w['seconds']:g} s windows every {w['stride_s']:g} s"
    if w.get("frames") is not None:
        return f"; bands: spans of {w['frames']}-frame windows every {w.get('stride_frames')}"
    return ""


def _strip(ax: Axes, record: dict, att: np.ndarray, shown: set[int]) -> tuple[float, float] | None:
    """The attention of every frame against time on ``ax``; its x limits (None: no frames).

    A record with spans puts its bars at the frames' times (seconds) or at their positions in the
    input (``index``, the spans' frame unit); one without, at seconds or at 0, 1, 2, ...
    """
    frames = record.get("frames") or []
    if not len(att):
        ax.text(0.5, 0.5, "no frames", ha="center", va="center", transform=ax.transAxes)
        return None
    spans = bands.has_spans(record)
    known = _span_seconds(record) if spans else all(f.get("timestamp_ms") is not None for f in frames)
    if known:
        x = np.asarray([float(f["timestamp_ms"]) / 1000.0 for f in frames])
    elif spans and all(f.get("index") is not None for f in frames):
        x = np.asarray([float(f["index"]) for f in frames])
    else:
        x = np.arange(len(att), dtype=np.float64)
    width = float(np.min(np.diff(x))) * 0.8 if len(x) > 1 and np.all(np.diff(x) > 0) else 0.8
    colors = ["tab:red" if i in shown else "tab:orange" for i in range(len(att))]
    ax.bar(x, att, width=width, color=colors)
    label = "time (s), thumbnails in red" if shown else ("time (s)" if known else "frame")
    ax.set_xlabel(label + (_window_note(record) if spans else ""), **LITERAL)
    if not known:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return float(x[0] - width / 2), float(x[-1] + width / 2)


def timeline_png(record: dict, thumbnails: dict | None = None) -> bytes:
    """The timeline PNG of a prediction record.

    Args:
        record: a ``predict_records`` record (``frames`` with ``attention`` and ``timestamp_ms``); a
            ``predict_segments`` record's ``spans`` are drawn as coloured bands over the attention
            strip, on its time axis, with a legend of their classes (:mod:`vidcls.predict.bands`).
        thumbnails: {position in ``frames``: RGB array or None} for the positions of
            ``thumbnail_frames(record)``, or None for the attention strip alone.

    Returns:
        PNG bytes, always ``TIMELINE_SIZE`` at ``plots.DPI``.
    """
    frames = record.get("frames") or []
    att = np.asarray([float(f.get("attention") or 0.0) for f in frames], np.float64)
    fig = new_figure(*TIMELINE_SIZE)
    fig.suptitle(_title(record), fontsize=10, y=0.985, **LITERAL)
    thumbs = thumbnails or {}
    has_thumbs = any(t is not None for t in thumbs.values())
    top = 0.42 if has_thumbs else 0.78
    if has_thumbs:
        _thumbnail_row(fig, record, att, thumbs)
    spans = bands.has_spans(record)
    width = STRIP_WIDTH_SPANS if spans else STRIP_WIDTH
    band_h = (
        BAND_ROW if bands.lanes(record) == [None] else min(BAND_MAX, BAND_LANE * len(bands.lanes(record)))
    )
    strip_top = top - band_h - BAND_GAP if spans else top
    ax = fig.add_axes((STRIP_LEFT, STRIP_BOTTOM, width, strip_top - STRIP_BOTTOM))
    shown = set(thumbnail_frames(record)) if has_thumbs else set()
    limits = _strip(ax, record, att, shown)
    ax.set_ylabel("attention")
    ax.grid(True, axis="y", alpha=0.3)
    if spans:
        band = bands.draw_bands(
            fig, (STRIP_LEFT, top - band_h, width, band_h), record, seconds=_span_seconds(record)
        )
        xs = [x for s in record["spans"] for x in bands.span_x(s, _span_seconds(record))]
        lo, hi = min(xs), max(xs)
        if limits is not None:
            lo, hi = min(lo, limits[0]), max(hi, limits[1])
        ax.set_xlim(lo, hi)
        band.set_xlim(lo, hi)
        bands.legend(fig, record, left=STRIP_LEFT + width + 0.012, top=top, bottom=STRIP_BOTTOM)
    return to_png(fig)


def write_timeline(
    record: dict, out_dir: str | os.PathLike, *, names: set[str] | None = None, label: str | None = None
) -> Path:
    """Write the timeline PNG of ``record`` into ``out_dir``; returns its path.

    The input's frames are decoded again when it is a video file (the attention strip alone when
    it is not, or when it cannot be decoded). The file is named after ``label`` (default: the
    input path; see ``timeline_name``); ``names`` holds the names already written in this run.
    """
    import av

    from ..features.video import VIDEO_EXTENSIONS, VideoSkip

    name = str(record.get("input", "input"))
    thumbs = None
    frames = record.get("frames") or []
    stamps = [f.get("timestamp_ms") for f in frames]
    if Path(name).suffix.lower() in VIDEO_EXTENSIONS and frames and all(t is not None for t in stamps):
        picks = thumbnail_frames(record)
        try:
            thumbs = dict(zip(picks, frame_thumbnails(name, [stamps[i] for i in picks])))
        except (VideoSkip, OSError, av.FFmpegError):  # a file that decoded once may fail now
            thumbs = None
    path = Path(out_dir) / timeline_name(label or name, names)
    return atomic_write_bytes(path, timeline_png(record, thumbs))
