"""Spans as coloured bands on the timeline: read back from the PNG's pixels at the spans' x positions."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vidcls.predict import bands
from vidcls.predict.timeline import (
    STRIP_LEFT,
    STRIP_WIDTH_SPANS,
    TIMELINE_SIZE,
    timeline_png,
    write_timeline,
)
from vidcls.reporting.plots import DPI
from videos import shapes_frames, write_clip

W, H = int(TIMELINE_SIZE[0] * DPI), int(TIMELINE_SIZE[1] * DPI)
CLASSES = ["walk", "run", "$jump$"]


def _span(label, a, b, fps=None, p=0.8):
    return {
        "label": label,
        "start_frame": a,
        "end_frame": b,
        "start_s": None if fps is None else a / fps,
        "end_s": None if fps is None else b / fps,
        "probability": p,
    }


def _record(n=20, fps: float | None = 2.0, spans=(), task=None) -> dict:
    """n frames 0.5 s apart (fps 2) or without timestamps; its frames at 0.25 s, ... inside [0, n/fps]."""
    frames = [
        {"index": i, "timestamp_ms": None if fps is None else (i + 0.5) * 1000 / fps, "attention": 1 / n}
        for i in range(n)
    ]
    rec = {
        "input": "long.mp4",
        "label": "walk",
        "top_k": [{"class": "walk", "probability": 0.6}],
        "probabilities": {"walk": 0.6, "run": 0.3, "$jump$": 0.1},
        "trusted": None,
        "trust_reason": "not calibrated",
        "frames": frames,
        "window": {"frames": 4, "stride_frames": 2, "seconds": None, "stride_s": None, "source": "option"},
        "spans": list(spans),
        "segments": [],
        "error": None,
    }
    if task:
        rec.update(task=task, labels=[{"label": "walk", "probability": 0.6}], thresholds_source="default")
    return rec


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (W, H)
        return np.asarray(img.convert("RGB")).astype(int)


def _px(x: float, lo: float, hi: float) -> int:
    """The pixel column of data x on the strip's axis spanning [lo, hi]."""
    return int(round((STRIP_LEFT + STRIP_WIDTH_SPANS * (x - lo) / (hi - lo)) * W))


def _rows_of(img: np.ndarray, col: int, color: str) -> set[int]:
    return set(np.flatnonzero(np.abs(img[:, col] - _rgb(color)).max(axis=1) <= 3).tolist())


def test_colours_follow_the_runs_class_order():
    colors = bands.class_colors(CLASSES)
    assert colors == {"walk": bands.PALETTE[0], "run": bands.PALETTE[1], "$jump$": bands.PALETTE[2]}
    assert len(set(bands.PALETTE)) == len(bands.PALETTE)
    # the attention strip's orange and red are never a class colour
    assert not {"#ff7f0e", "#d62728"} & set(bands.PALETTE)
    rec = _record(spans=[_span("$jump$", 0, 5, 2.0), _span("walk", 5, 20, 2.0)])
    assert bands.class_order(rec) == CLASSES  # the order of probabilities, not of the spans


def test_single_label_spans_are_bands_at_their_seconds():
    spans = [_span("walk", 0, 6, 2.0), _span("$jump$", 6, 10, 2.0), _span("run", 10, 20, 2.0)]
    img = _pixels(timeline_png(_record(spans=spans)))
    colors = bands.class_colors(CLASSES)
    lo, hi = 0.0, 10.0  # the spans cover 0-10 s; the frames' bars lie inside
    rows = [_rows_of(img, _px((s["start_s"] + s["end_s"]) / 2, lo, hi), colors[s["label"]]) for s in spans]
    band = set.intersection(*rows)
    assert len(band) >= 15  # one band row, the same rows under every span, ~24 px high
    y = int(np.median(sorted(band)))
    # just inside each span's ends its colour; just across a boundary the next span's
    for s in spans:
        a, b = _px(s["start_s"], lo, hi), _px(s["end_s"], lo, hi)
        for col in (a + 2, (a + b) // 2, b - 2):
            assert np.abs(img[y, col] - _rgb(colors[s["label"]])).max() <= 3, (s["label"], col)
    assert np.abs(img[y, _px(3.0, lo, hi) + 3] - _rgb(colors["$jump$"])).max() <= 3
    assert np.abs(img[y, _px(3.0, lo, hi) - 3] - _rgb(colors["walk"])).max() <= 3
    # nothing of the band's colours left of the axis or over its right end (the legend's squares are)
    assert not _rows_of(img, _px(lo, lo, hi) - 4, colors["walk"]) & band
    assert not _rows_of(img, _px(hi, lo, hi) + 4, colors["run"]) & band


def test_features_spans_are_on_frame_positions():
    # no timestamps: the strip's x and the bands' x are positions in the input (frames 0-20)
    spans = [_span("run", 0, 8), _span("walk", 8, 20)]
    img = _pixels(timeline_png(_record(fps=None, spans=spans)))
    colors = bands.class_colors(CLASSES)
    lo, hi = -0.4, 20.0  # the first frame's bar (x 0, width 0.8) starts left of the spans
    band = _rows_of(img, _px(4, lo, hi), colors["run"]) & _rows_of(img, _px(14, lo, hi), colors["walk"])
    assert band
    y = min(band) + 2
    assert np.abs(img[y, _px(8, lo, hi) - 3] - _rgb(colors["run"])).max() <= 3
    assert np.abs(img[y, _px(8, lo, hi) + 3] - _rgb(colors["walk"])).max() <= 3


def test_multilabel_spans_get_one_lane_per_class():
    spans = [_span("walk", 0, 12, 2.0), _span("$jump$", 8, 20, 2.0)]  # overlapping 4-6 s
    rec = _record(spans=spans, task="multilabel")
    assert bands.lanes(rec) == ["walk", "$jump$"]  # present classes, in class order
    img = _pixels(timeline_png(rec))
    colors = bands.class_colors(CLASSES)
    lo, hi = 0.0, 10.0
    both = _px(5.0, lo, hi)  # in both spans: two lanes, walk above jump
    walk, jump = _rows_of(img, both, colors["walk"]), _rows_of(img, both, colors["$jump$"])
    assert walk and jump and max(walk) < min(jump)
    assert not _rows_of(img, _px(8.0, lo, hi), colors["walk"]) & walk  # walk ends at 6 s
    assert not _rows_of(img, _px(2.0, lo, hi), colors["$jump$"]) & jump  # jump starts at 4 s
    assert _rows_of(img, _px(8.0, lo, hi), colors["$jump$"]) & jump


def test_records_without_spans_are_drawn_as_before(tmp_path):
    rec = _record()
    rec.pop("spans"), rec.pop("segments"), rec.pop("window")
    assert timeline_png({**rec, "spans": []}) == timeline_png(rec)
    img = _pixels(timeline_png(rec))
    for color in bands.PALETTE[:3]:  # no band colour anywhere
        assert not (np.abs(img - _rgb(color)).max(axis=2) <= 3).any()


def test_a_segments_video_timeline_has_thumbnails_and_bands(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", shapes_frames(100), fps=10)  # 10 s
    spans = [_span("walk", 0, 10, 2.0), _span("run", 10, 20, 2.0)]
    rec = {**_record(spans=spans), "input": str(clip)}
    for i, f in enumerate(rec["frames"]):  # at frames the clip has (0, 0.5, ... 9.5 s), as extraction gives
        f["timestamp_ms"] = i * 500.0
    path = write_timeline(rec, tmp_path / "tl")
    img = _pixels(path.read_bytes())
    colors = bands.class_colors(CLASSES)
    lo, hi = -0.2, 10.0  # the first frame's bar (x 0, width 0.4) starts left of the spans
    walk = _rows_of(img, _px(2.5, lo, hi), colors["walk"])
    run = _rows_of(img, _px(7.5, lo, hi), colors["run"])
    assert walk & run and max(walk & run) > H * 0.55  # in the lower part: the thumbnails are above
    assert img[: int(H * 0.4)].std() > 10  # thumbnails drawn (not a blank top)
