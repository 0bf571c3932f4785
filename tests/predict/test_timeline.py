"""Attention timeline PNGs: file names, thumbnails decoded at the record's timestamps, sizes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vidcls.predict.timeline import (
    MAX_THUMBS,
    TIMELINE_SIZE,
    frame_thumbnails,
    thumbnail_frames,
    timeline_name,
    timeline_png,
    write_timeline,
)
from vidcls.reporting.plots import DPI
from videos import frame_index, shapes_frames, write_clip

EXPECTED_PX = (int(TIMELINE_SIZE[0] * DPI), int(TIMELINE_SIZE[1] * DPI))


def _record(name: str, n: int, step_ms: float | None = 100.0, label="$5_to_$10 <script>") -> dict:
    att = np.linspace(1, 2, n)
    att /= att.sum()
    return {
        "input": name,
        "label": label,
        "top_k": [{"class": label, "probability": 0.9}],
        "probabilities": {label: 0.9},
        "trusted": False,
        "trust_reason": "energy below $x_1$",
        "ood_score": 1.0,
        "error": None,
        "frames": [
            {"index": i, "timestamp_ms": None if step_ms is None else i * step_ms, "attention": float(a)}
            for i, a in enumerate(att)
        ],
        "timings": {"decode_s": 0.0, "features_s": 0.0, "model_s": 0.0},
    }


def _size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def test_names_are_safe_unique_and_stable():
    taken: set = set()
    a = timeline_name("videos/cats/clip 01.mp4", taken)
    assert a == "videos__cats__clip_01.mp4.png"
    b = timeline_name("videos/cats/clip_01.mp4", taken)  # the same safe name: made unique
    assert b != a and b.startswith("videos__cats__clip_01.mp4-") and b.endswith(".png")
    assert timeline_name("videos/cats/clip_01.mp4", set(taken)) != b  # a third one differs again
    assert timeline_name("/abs/../x$<y>.mkv") == "abs__..__x_y_.mkv.png"
    long = timeline_name("d/" * 200 + "v.mp4")
    assert len(long) < 150 and long.endswith(".png")
    assert timeline_name("../..") != ".png" and "/" not in timeline_name("a/../../b")


def test_thumbnails_are_the_frames_at_the_timestamps(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", shapes_frames(30), fps=10)
    thumbs = frame_thumbnails(clip, [0.0, 300.0, 1200.0, 2900.0])
    assert [frame_index(t) for t in thumbs] == [0, 3, 12, 29 % 32]


def test_video_timeline_png_has_the_expected_size(tmp_path):
    clip = write_clip(tmp_path / "v" / "clip.mp4", shapes_frames(40), fps=10)
    record = _record(str(clip), 20, step_ms=200.0)
    assert len(thumbnail_frames(record)) == MAX_THUMBS and 19 in thumbnail_frames(record)  # the peak
    path = write_timeline(record, tmp_path / "tl", names=set())
    assert path.exists() and path.parent == tmp_path / "tl"
    assert _size(path) == EXPECTED_PX
    # thumbnails make a different picture than the attention strip alone
    assert path.read_bytes() != timeline_png(record)


def test_feature_input_gets_an_attention_strip(tmp_path):
    path = write_timeline(_record(str(tmp_path / "x.npy"), 7, step_ms=None), tmp_path)
    assert path.name.endswith("x.npy.png") and _size(path) == EXPECTED_PX
    # an undecodable video falls back to the strip; no frames at all still draws
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert _size(write_timeline(_record(str(tmp_path / "bad.mp4"), 3), tmp_path)) == EXPECTED_PX
    with Image.open(io.BytesIO(timeline_png(_record("y", 0)))) as img:
        assert img.size == EXPECTED_PX
