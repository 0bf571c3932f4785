"""Segments' rules on hand-made numbers: the window grammar, the window grid, the per-frame fusion
of the covering windows and the spans (single-label partitions, per-class multi-label runs)."""

from __future__ import annotations

import numpy as np
import pytest

from vidcls.errors import ConfigError
from vidcls.predict.segments import (
    FRAMES,
    RUN,
    SECONDS,
    Window,
    frame_seconds,
    frames_of,
    fuse,
    parse_window,
    run_default,
    spans_of,
    window_starts,
)


# ---- the grammar ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "segments, stride, expected",
    [
        ("10s", None, Window(10.0, None, SECONDS)),
        ("10s", "5", Window(10.0, 5.0, SECONDS)),  # the stride takes the window's unit
        ("2.5s", "0.5s", Window(2.5, 0.5, SECONDS)),
        ("16", "4", Window(16.0, 4.0, FRAMES)),
        (16, None, Window(16.0, None, FRAMES)),
        (7.5, None, Window(7.5, None, SECONDS)),  # a Python float is seconds
        ("12 frames", "12", Window(12.0, 12.0, FRAMES)),  # a stride equal to the window: no overlap
        (None, None, None),
        ("run", None, Window(None, None, "", RUN)),
        ("run", "4", Window(None, 4.0, "", RUN)),  # in the unit of the run's window, whichever it is
        ("run", "2s", Window(None, 2.0, SECONDS, RUN)),
        ("", None, Window(None, None, "", RUN)),
    ],
)
def test_parse_window(segments, stride, expected):
    assert parse_window(segments, stride) == expected


@pytest.mark.parametrize(
    "segments, stride, says",
    [
        ("0", None, "--segments must be a positive"),
        ("0s", None, "positive"),
        ("-3s", None, "positive"),
        ("10s", "-1", "--stride must be a positive"),
        ("10s", "0", "--stride must be a positive"),
        ("run", "-2s", "--stride must be a positive"),
        ("10s", "11s", "longer than the window"),
        ("8", "9", "longer than the window"),
        ("10s", "5 frames", "both in seconds"),
        ("10", "5s", "both in seconds"),
        ("ten", None, "^--segments must be seconds like 10s"),
        ("nan", None, "seconds like 10s"),
        ("inf", None, "seconds like 10s"),
        (float("inf"), None, "positive"),
        ("2.5", None, "--segments in frames must be a whole number"),
        ("8", "2.5", "--stride in frames must be a whole number"),
        (True, None, "seconds like 10s"),
        (None, "5", "^--stride needs --segments"),
    ],
)
def test_bad_windows_are_one_line(segments, stride, says):
    with pytest.raises(ConfigError, match=says) as err:
        parse_window(segments, stride)
    assert "\n" not in str(err.value)


def test_frames_of_rounds_seconds_at_the_rate_and_halves_by_default():
    assert frames_of(Window(10.0, None, SECONDS), 2.0, where="v") == (20, 10)
    assert frames_of(Window(1.3, 0.3, SECONDS), 5.0, where="v") == (6, 2)  # 6.5 -> 6 (even), 1.5 -> 2
    assert frames_of(Window(5.0, None, FRAMES), None, where="v") == (5, 2)
    assert frames_of(Window(1.0, None, FRAMES), None, where="v") == (1, 1)  # never a zero stride
    with pytest.raises(ConfigError, match="v: windows in seconds need the frame rate"):
        frames_of(Window(10.0, None, SECONDS), None, where="v")


def test_run_default_converts_a_stride_in_the_other_unit():
    assert run_default(Window(None, None, "", RUN), (8.0, SECONDS), 2.0) == Window(8.0, None, SECONDS, RUN)
    assert run_default(Window(None, 4.0, FRAMES, RUN), (8.0, SECONDS), 2.0) == Window(8.0, 2.0, SECONDS, RUN)
    assert run_default(Window(None, 3.0, "", RUN), (12.0, FRAMES), None).stride == 3.0
    with pytest.raises(ConfigError, match="no frame rate"):
        run_default(Window(None, 1.0, SECONDS, RUN), (12.0, FRAMES), None)
    with pytest.raises(ConfigError, match="longer than the run's window"):
        run_default(Window(None, 13.0, FRAMES, RUN), (12.0, FRAMES), None)


# ---- the grid, fusion and spans -------------------------------------------------------------------
def test_window_starts_cover_every_frame_and_end_at_the_last():
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]  # 6 + 4 = 10: the tail is covered
    assert window_starts(11, 4, 3).tolist() == [0, 3, 6, 7]  # one more window ends at the last frame
    assert window_starts(4, 4, 2).tolist() == [0]
    assert window_starts(9, 3, 3).tolist() == [0, 3, 6]
    with pytest.raises(
        ConfigError, match=r"clip.npy: the window \(12 frames, 6 s\) is longer than the video"
    ):
        window_starts(5, 12, 6, where="clip.npy", fps=2.0)


def test_fuse_is_the_mean_of_the_covering_windows():
    # windows [0, 4) and [2, 6) over 6 frames: frames 2, 3 are covered by both
    p = np.array([[0.9, 0.1], [0.3, 0.7]])
    fused = fuse(p, np.array([0, 2]), 4, 6)
    expected = np.array([[0.9, 0.1]] * 2 + [[0.6, 0.4]] * 2 + [[0.3, 0.7]] * 2)
    np.testing.assert_allclose(fused, expected)


def test_single_label_spans_partition_the_sequence():
    fused = np.array([[0.9, 0.1]] * 2 + [[0.6, 0.4]] * 2 + [[0.3, 0.7]] * 2)
    seconds = frame_seconds(np.array([0, 500, 1000, 1500, 2000, 2500.0]), 2.0)
    np.testing.assert_allclose(seconds, [0, 0.5, 1, 1.5, 2, 2.5, 3])  # the last frame lasts 1/fps
    spans = spans_of(fused, ["a", "b"], seconds=seconds)
    assert [(s["label"], s["start_frame"], s["end_frame"], s["start_s"], s["end_s"]) for s in spans] == [
        ("a", 0, 4, 0.0, 2.0),
        ("b", 4, 6, 2.0, 3.0),
    ]
    assert spans[0]["probability"] == pytest.approx((0.9 + 0.9 + 0.6 + 0.6) / 4)
    assert spans_of(fused, ["a", "b"])[1]["start_s"] is None  # no timestamps: frames only


def test_multilabel_spans_are_per_class_and_may_overlap():
    fused = np.array([[0.8, 0.1, 0.0], [0.8, 0.6, 0.0], [0.2, 0.6, 0.0], [0.8, 0.2, 0.0]])
    spans = spans_of(fused, ["a", "b", "c"], thresholds=np.array([0.5, 0.5, 0.5]))
    assert [(s["label"], s["start_frame"], s["end_frame"]) for s in spans] == [
        ("a", 0, 2),
        ("b", 1, 3),
        ("a", 3, 4),
    ]
    # a class's own threshold decides: 0.7 keeps b out
    assert [s["label"] for s in spans_of(fused, ["a", "b", "c"], thresholds=np.array([0.5, 0.7, 0.5]))] == [
        "a",
        "a",
    ]


def test_frames_of_edges():
    assert frames_of(Window(3.5, None, SECONDS), 2.0, where="v") == (7, 3)  # half of an odd window, floored
    assert frames_of(Window(0.1, None, SECONDS), 2.0, where="v") == (1, 1)  # never a zero-frame window
    assert frames_of(Window(6.0, 3.0, FRAMES), None, where="v") == (6, 3)


def test_run_default_edges():
    # a stride in seconds for a run window in frames: converted at the rate (1 s at 2 fps = 2 frames)
    assert run_default(Window(None, 1.0, SECONDS, RUN), (12.0, FRAMES), 2.0) == Window(12.0, 2.0, FRAMES, RUN)
    assert run_default(Window(None, 12.0, "", RUN), (12.0, FRAMES), None).stride == 12.0  # = the window: fine


def test_window_starts_never_run_past_the_end():
    assert window_starts(10, 3, 2).tolist() == [0, 2, 4, 6, 7]
    with pytest.raises(ConfigError, match=r"^the input: the window \(5 frames\) is longer"):
        window_starts(4, 5, 1)


def test_frame_seconds_without_a_rate_uses_the_median_step():
    np.testing.assert_allclose(
        frame_seconds(np.array([0.0, 400.0, 800.0, 1300.0]), None), [0, 0.4, 0.8, 1.3, 1.7]
    )
    np.testing.assert_allclose(
        frame_seconds(np.array([250.0]), None), [0.25, 0.25]
    )  # one frame, no step known
    assert frame_seconds(np.array([]), 2.0) is None and frame_seconds(None, 2.0) is None


def test_thresholds_are_inclusive_and_seconds_rounded_to_ms():
    fused = np.array([[0.5, 0.2], [0.1, 0.2]])
    spans = spans_of(fused, ["a", "b"], thresholds=np.array([0.5, 0.9]), seconds=np.array([0, 1 / 3, 2 / 3]))
    assert [(s["label"], s["start_frame"], s["end_frame"], s["end_s"]) for s in spans] == [("a", 0, 1, 0.333)]
    spans = spans_of(fused, ["a", "b"], seconds=np.array([1 / 3, 2 / 3, 1.0]))
    assert [(s["label"], s["start_s"], s["end_s"]) for s in spans] == [("a", 0.333, 0.667), ("b", 0.667, 1.0)]
