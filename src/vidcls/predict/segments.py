"""What happens when in a long video: sliding windows over its frame features, classified one by one.

``vidcls predict RUN VIDEO --segments 10s [--stride 5s]`` (``--segments N --stride M`` in frames;
the stride takes the window's unit; the default stride is half the window) reads the video's
features once, at the run's sampling rate over the whole video (no frame cap over the video: the
run's ``max_frames`` thins each window, as it thinned each training video), and classifies every
window of that length with the served models, exactly as a video of that length would be
(:meth:`Predictor.predict_records`). Without ``--segments`` value (the Python ``window=None``) the
window is the run's typical training length (checkpoint ``"window"``, :mod:`vidcls.data.window`).

The windows start at 0, S, 2S, ... and a last one ends at the last frame, so every frame is covered.
Each frame then gets the mean probabilities of the windows that cover it: a single-label frame
takes the most probable class, a multi-label frame every class at or above its threshold. The spans
are the maximal runs of frames with the same label (single-label: they partition the video;
multi-label: per class, and may overlap). Averaging the covering windows puts a boundary where the
windows' majority content changes, not where the window grid happens to cut.

Frame indices are positions in the feature sequence (end exclusive); seconds come from the frame
timestamps (a video), null for ``.npy`` features.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError, VidclsError
from . import multilabel
from .inputs import as_list, error_record


class Predictor(Protocol):
    """What segments need of a loaded run (``vidcls.load`` gives one; not imported: it imports this)."""

    classes_: list[str]
    thresholds_: multilabel.Thresholds | None
    fps_: float | None
    window_: tuple[float, str]

    def predict_records(self, x: Any, top_k: int = 3) -> list[dict]: ...

    def stream_video(self, path: str) -> dict: ...

    def _check(self, a: Any, name: str) -> np.ndarray: ...


__all__ = [
    "Window",
    "parse_window",
    "frames_of",
    "window_starts",
    "fuse",
    "spans_of",
    "predict_segments",
]

SECONDS, FRAMES = "s", "frames"
RUN = "run"  # --segments run: the run's typical window, as when no length is given in Python
WINDOW_BATCH = 256  # windows per model call: memory stays bounded on hour-long videos
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(s|sec|frames?|f)?\s*$")


@dataclass(frozen=True)
class Window:
    """A window length and stride in seconds (``unit`` "s") or frames (``unit`` "frames");
    ``stride`` None: half the window. ``size`` None: the run's typical window."""

    size: float | None
    stride: float | None
    unit: str
    source: str = "option"  # or "run": the run's typical window


def _parse(value: object, option: str) -> tuple[float, str | None]:
    """(number, unit or None) of '10s' / '10' / 10; ConfigError for anything else."""
    unit: str | None
    if isinstance(value, bool):
        raise ConfigError(f"{option} must be seconds like 10s or frames like 10, got {value!r}")
    if isinstance(value, (int, np.integer)):
        number, unit = float(value), FRAMES
    elif isinstance(value, (float, np.floating)):
        number, unit = float(value), SECONDS
    else:
        m = _NUMBER.match(str(value))
        if not m:
            raise ConfigError(f"{option} must be seconds like 10s or frames like 10, got {value!r}")
        number = float(m.group(1))
        unit = None if m.group(2) is None else (SECONDS if m.group(2).startswith("s") else FRAMES)
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(
            f"{option} must be a positive length (seconds like 10s or frames like 10), got {value!r}"
        )
    return number, unit


def parse_window(segments: object, stride: object = None) -> Window | None:
    """The window of ``--segments`` / ``--stride`` (None without ``segments``; "run" or "": the run's).

    A plain number is frames ("10", 10) and "10s" is seconds (a Python float is seconds too); a stride
    without a unit takes the window's.

    Raises:
        ConfigError: a length that is not positive, not a number, a frame count that is not whole,
            a stride in another unit than the window, or a stride longer than the window (frames
            would be left out).
    """
    if segments is None:
        if stride is not None:
            raise ConfigError("--stride needs --segments (the window it steps); give --segments too")
        return None
    if isinstance(segments, str) and segments.strip().lower() in (RUN, ""):
        if stride is None:
            return Window(None, None, "", RUN)
        every, its_unit = _parse(stride, "--stride")
        return Window(None, every, its_unit or "", RUN)  # unit "": the run window's
    size, given = _parse(segments, "--segments")
    unit = given or FRAMES
    step: float | None = None
    if stride is not None:
        step, step_unit = _parse(stride, "--stride")
        if step_unit is not None and step_unit != unit:
            raise ConfigError(
                f"--stride {stride} is in {step_unit} but --segments {segments} in {unit}; give both in "
                f"seconds (10s) or both in frames (10)"
            )
        if step > size:
            raise ConfigError(
                f"--stride {stride} is longer than the window --segments {segments}: frames between "
                f"windows would be left out; give a stride of at most the window"
            )
    for value, name in ((size, "--segments"), (step, "--stride")):
        if unit == FRAMES and value is not None and value != int(value):
            raise ConfigError(
                f"{name} in frames must be a whole number, got {value:g}; for seconds write {value:g}s"
            )
    return Window(size, step, unit)


def frames_of(window: Window, fps: float | None, *, where: str) -> tuple[int, int]:
    """(window, stride) in frames of a sequence sampled at ``fps`` (None: unknown).

    Raises:
        ConfigError: a window in seconds where the frame rate is unknown (``where`` names the input).
    """
    assert window.size is not None  # the run's default is resolved before (Predictor.window_)
    if window.unit == SECONDS:
        if not fps:
            raise ConfigError(
                f"{where}: windows in seconds need the frame rate, and the run's features were not "
                f"sampled at one; give --segments in frames (e.g. --segments 16)"
            )
        size = max(1, int(round(window.size * fps)))
        stride = size // 2 if window.stride is None else int(round(window.stride * fps))
    else:
        size = int(window.size)
        stride = size // 2 if window.stride is None else int(window.stride)
    return size, max(1, stride)


def window_starts(
    n: int, size: int, stride: int, *, where: str = "the input", fps: float | None = None
) -> np.ndarray:
    """Starts of the windows of ``size`` frames every ``stride`` over ``n`` frames; the last ends at ``n``.

    Raises:
        ConfigError: the window is longer than the sequence.
    """
    if size > n:
        secs = f", {size / fps:g} s" if fps else ""
        raise ConfigError(
            f"{where}: the window ({size} frames{secs}) is longer than the video ({n} frames); give a "
            f"shorter --segments"
        )
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] + size < n:
        starts.append(n - size)
    return np.asarray(starts, np.int64)


def fuse(window_probs: np.ndarray, starts: np.ndarray, size: int, n: int) -> np.ndarray:
    """``(n, C)``: each frame's mean probabilities over the windows covering it."""
    total = np.zeros((n, window_probs.shape[1]), np.float64)
    count = np.zeros(n, np.float64)
    for p, s in zip(window_probs, starts):
        total[s : s + size] += p
        count[s : s + size] += 1
    return total / count[:, None]  # window_starts covers every frame


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of the runs of True in ``flags``."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def spans_of(
    fused: np.ndarray,
    classes: Sequence[str],
    *,
    thresholds: np.ndarray | None = None,
    seconds: np.ndarray | None = None,
) -> list[dict]:
    """The spans of a fused ``(n, C)`` sequence (module docstring), sorted by start then label.

    ``thresholds`` ``(C,)``: a multi-label run's (None: single-label, argmax). ``seconds`` ``(n + 1,)``:
    each frame's start and the end of the last one (None: no timestamps).
    """
    spans = []
    if thresholds is None:
        label = np.argmax(fused, axis=1)
        flags = [(c, label == c) for c in np.unique(label)]
    else:
        flags = [(c, fused[:, c] >= thresholds[c]) for c in range(fused.shape[1])]
    for c, where in flags:
        for a, b in _runs(where):
            spans.append(
                {
                    "label": classes[int(c)],
                    "start_frame": a,
                    "end_frame": b,
                    "start_s": None if seconds is None else round(float(seconds[a]), 3),
                    "end_s": None if seconds is None else round(float(seconds[b]), 3),
                    "probability": float(fused[a:b, c].mean()),
                }
            )
    return sorted(spans, key=lambda s: (s["start_frame"], s["label"]))


def frame_seconds(timestamps_ms: np.ndarray | None, fps: float | None) -> np.ndarray | None:
    """``(n + 1,)`` seconds: each frame's timestamp and the end of the last one (one frame period on)."""
    if timestamps_ms is None or not len(timestamps_ms):
        return None
    t = np.asarray(timestamps_ms, np.float64) / 1000.0
    step = 1.0 / fps if fps else (float(np.median(np.diff(t))) if len(t) > 1 else 0.0)
    return np.concatenate([t, [t[-1] + step]])


def _segment(rec: dict, start: int, size: int, seconds: np.ndarray | None) -> dict:
    """A window's entry in ``segments`` from its ``predict_records`` record."""
    out = {
        "start_frame": int(start),
        "end_frame": int(start + size),
        "start_s": None if seconds is None else round(float(seconds[start]), 3),
        "end_s": None if seconds is None else round(float(seconds[start + size]), 3),
        "label": rec["label"],
        "probabilities": rec["probabilities"],
        "trusted": rec["trusted"],
        "trust_reason": rec["trust_reason"],
    }
    if "labels" in rec:
        out["labels"] = rec["labels"]
    return out


def _read(predictor: Predictor, item: Any, index: int) -> dict:
    """{"input", "features", "timestamps_ms", "decode_s", "features_s"} of one input (raises VidclsError)."""
    from .inputs import FEATURE_SUFFIX, load_npy

    t0 = time.perf_counter()
    if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__"):
        name = str(item)
        if name.lower().endswith(FEATURE_SUFFIX):
            return {
                "input": name,
                "features": predictor._check(load_npy(item), name),
                "timestamps_ms": None,
                "decode_s": time.perf_counter() - t0,
                "features_s": 0.0,
            }
        return {"input": name, **predictor.stream_video(name)}
    name = f"features[{index}]"
    return {
        "input": name,
        "features": predictor._check(item, name),
        "timestamps_ms": None,
        "decode_s": 0.0,
        "features_s": 0.0,
    }


def _windows(
    predictor: Predictor, feats: np.ndarray, starts: np.ndarray, size: int, top_k: int
) -> list[dict]:
    """The ``predict_records`` record of every window, in order, ``WINDOW_BATCH`` windows per call."""
    out: list[dict] = []
    for a in range(0, len(starts), WINDOW_BATCH):
        chunk = [feats[s : s + size] for s in starts[a : a + WINDOW_BATCH]]
        out.extend(predictor.predict_records(chunk, top_k=top_k))
    return out


def _one(predictor: Predictor, got: dict, window: Window, top_k: int) -> dict:
    """The record of one read input with its window, segments and spans."""
    feats, fps = got["features"], predictor.fps_
    size, stride = frames_of(window, fps, where=got["input"])
    if window.source == RUN and size > len(feats):  # the run's window, longer than this video: all of it
        size, stride = len(feats), min(stride, len(feats))
    starts = window_starts(len(feats), size, stride, where=got["input"], fps=fps)
    t0 = time.perf_counter()
    whole = predictor.predict_records([feats], top_k=top_k)[0]
    recs = _windows(predictor, feats, starts, size, top_k)
    classes = predictor.classes_
    probs = np.asarray([[r["probabilities"][c] for c in classes] for r in recs], np.float64)
    seconds = frame_seconds(got["timestamps_ms"], fps)
    thresholds = None if predictor.thresholds_ is None else predictor.thresholds_.values
    whole.update(
        input=got["input"],
        window={
            "frames": size,
            "stride_frames": stride,
            "seconds": round(size / fps, 3) if fps else None,
            "stride_s": round(stride / fps, 3) if fps else None,
            "source": window.source,
        },
        segments=[_segment(r, s, size, seconds) for r, s in zip(recs, starts)],
        spans=spans_of(
            fuse(probs, starts, size, len(feats)), classes, thresholds=thresholds, seconds=seconds
        ),
    )
    if got["timestamps_ms"] is not None:
        for f in whole["frames"]:
            f["timestamp_ms"] = float(got["timestamps_ms"][f["index"]])
    whole["timings"] = {
        "decode_s": round(float(got["decode_s"]), 6),
        "features_s": round(float(got["features_s"]), 6),
        "model_s": round(time.perf_counter() - t0, 6),
    }
    return whole


def run_default(asked: Window, run: tuple[float, str], fps: float | None) -> Window:
    """The run's typical window ``run`` (length, unit) with the stride ``asked`` (in its own unit,
    converted at ``fps`` where it differs)."""
    size, unit = run
    stride = asked.stride
    if stride is not None and asked.unit and asked.unit != unit:
        if not fps:
            raise ConfigError(
                f"--stride is in {asked.unit} but the run's window is in {unit} and the run has no frame "
                f"rate to convert it; give --stride in {unit}"
            )
        stride = stride * fps if unit == FRAMES else stride / fps
    if stride is not None and stride > size:
        raise ConfigError(
            f"--stride is longer than the run's window ({size:g} {unit}): frames would be left out; "
            f"give a stride of at most the window"
        )
    return Window(size, stride, unit, RUN)


def predict_segments(
    predictor: Predictor, x: object, window: object = None, stride: object = None, *, top_k: int = 3
) -> list[dict]:
    """One record per input of ``x`` with ``window``, ``segments`` and ``spans`` (module docstring).

    ``window`` / ``stride``: as ``--segments`` / ``--stride`` ("10s", 10, "run"; None: the run's window).
    An input that cannot be used gives an error record (``segments`` and ``spans`` empty).

    Raises:
        ConfigError: a bad window, stride or top_k (before any input is read).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1 (the classes listed per input), got {top_k!r}")
    chosen = parse_window(RUN if window is None else window, stride)
    assert chosen is not None
    if chosen.size is None:
        chosen = run_default(chosen, predictor.window_, predictor.fps_)
    records = []
    for i, item in enumerate(as_list(x)):
        try:
            records.append(_one(predictor, _read(predictor, item, i), chosen, top_k))
        except VidclsError as err:
            name = str(item) if isinstance(item, str) or hasattr(item, "__fspath__") else f"features[{i}]"
            failed = multilabel.error_fields(error_record(name, str(err)), predictor.thresholds_)
            records.append({**failed, "segments": [], "spans": []})
    return records
