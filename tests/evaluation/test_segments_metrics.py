"""Segment metrics on hand-computed cases: frame accuracy, boundary error, temporal-detection mAP."""

from __future__ import annotations

import numpy as np
import pytest

from vidcls.errors import ConfigError
from vidcls.evaluation.segments import (
    boundary_errors,
    frame_accuracy,
    interpolated_ap,
    span_ap,
    span_map,
)
from vidcls.predict.segments import spans_of


def sp(label, a, b, p=None):
    out = {"label": label, "start_frame": a, "end_frame": b}
    if p is not None:
        out["probability"] = p
    return out


TRUTH = [sp("A", 0, 10), sp("B", 10, 20), sp("C", 20, 40)]


def test_perfect_prediction_scores_one_everywhere():
    pred = [{**s, "probability": 0.9} for s in TRUTH]
    assert frame_accuracy(pred, TRUTH, 40) == 1.0
    b = boundary_errors(pred, TRUTH)
    assert b.errors.tolist() == [0.0, 0.0] and (b.missed, b.extra, b.n_predicted) == (0, 0, 2)
    assert span_map(pred, TRUTH, ["A", "B", "C"]) == 1.0


def test_boundary_off_by_three_frames():
    truth = [sp("A", 0, 10), sp("B", 10, 20)]
    pred = [sp("A", 0, 13), sp("B", 13, 20)]
    assert frame_accuracy(pred, truth, 20) == pytest.approx(17 / 20)
    assert boundary_errors(pred, truth).errors.tolist() == [3.0]
    assert boundary_errors(pred, truth, seconds_per_frame=0.5).errors.tolist() == [1.5]
    tight = boundary_errors(pred, truth, tolerance=2)
    assert (tight.missed, tight.extra) == (1, 1)
    loose = boundary_errors(pred, truth, tolerance=3)
    assert (loose.missed, loose.extra) == (0, 0)
    # in seconds the tolerance is in seconds too: 3 frames = 1.5 s
    assert boundary_errors(pred, truth, seconds_per_frame=0.5, tolerance=1.4).missed == 1


def test_boundary_errors_nearest_and_missing():
    pred = [sp("A", 0, 12), sp("C", 12, 40)]  # one boundary at 12 for true ones at 10 and 20
    b = boundary_errors(pred, TRUTH, tolerance=5)
    assert b.errors.tolist() == [2.0, 8.0] and (b.missed, b.extra) == (1, 0)
    # no predicted boundary: every true one costs the sequence length and is missed
    none = boundary_errors([sp("A", 0, 40)], TRUTH)
    assert none.errors.tolist() == [40.0, 40.0] and none.missed == 2 and none.n_predicted == 0
    # predicted boundaries where the truth has none are all extra
    assert boundary_errors(pred, [sp("A", 0, 40)]).extra == 1


def test_frame_accuracy_counts_uncovered_frames_wrong_and_refuses_bad_spans():
    assert frame_accuracy([sp("A", 0, 5)], TRUTH, 40) == pytest.approx(5 / 40)
    with pytest.raises(ConfigError, match="overlaps"):
        frame_accuracy([sp("A", 0, 10), sp("B", 5, 20)], TRUTH, 40)
    with pytest.raises(ConfigError, match="do not cover"):
        frame_accuracy([sp("A", 0, 10)], [sp("A", 0, 10)], 40)
    with pytest.raises(ConfigError, match="partition"):
        boundary_errors([], [sp("A", 0, 10), sp("B", 12, 20)])


def test_two_class_toy_over_two_sequences_known_ap():
    truth = [
        [sp("A", 0, 10), sp("B", 10, 20), sp("A", 20, 30)],
        [sp("B", 0, 20), sp("A", 20, 30)],
    ]
    pred = [
        [sp("A", 0, 10, 0.9), sp("A", 20, 28, 0.7), sp("B", 10, 20, 0.8)],
        # seq 2's [0, 10) would match seq 1's first A if sequences were pooled: here it is a false positive
        [sp("A", 0, 10, 0.95), sp("A", 20, 30, 0.6), sp("B", 0, 9, 0.5), sp("C", 9, 20, 0.99)],
    ]
    # A ranked: .95 FP, .9 TP, .7 TP (IoU .8), .6 TP -> precision 0, 1/2, 2/3, 3/4 at recall 0..1
    # -> interpolated 3/4 at each third of recall -> AP .75
    # B ranked: .8 TP, .5 FP (IoU 9/20 = .45) -> precision 1 at recall 1/2, then nothing -> AP .5
    aps = span_ap(pred, truth, ["A", "B", "C"])
    assert aps["A"] == pytest.approx(0.75) and aps["B"] == pytest.approx(0.5) and aps["C"] is None
    assert span_map(pred, truth, ["A", "B", "C"]) == pytest.approx(0.625)
    with pytest.raises(ConfigError, match="sequences"):
        span_map(pred[:1], truth, ["A"])


def test_iou_049_vs_051_flips_a_true_positive():
    truth = [sp("A", 0, 100)]
    assert span_map([sp("A", 0, 51, 0.9)], truth, ["A"], iou=0.5) == 1.0
    assert span_map([sp("A", 0, 49, 0.9)], truth, ["A"], iou=0.5) == 0.0
    # at a lower threshold the 0.49 span counts again
    assert span_map([sp("A", 0, 49, 0.9)], truth, ["A"], iou=0.45) == 1.0


def test_a_second_detection_of_a_matched_span_is_a_false_positive():
    truth = [sp("A", 0, 10), sp("A", 10, 20)]
    pred = [sp("A", 0, 10, 0.9), sp("A", 0, 10, 0.8), sp("A", 10, 20, 0.7)]
    # TP, FP (already matched), TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> .5 + .5 * 2/3
    assert span_map(pred, truth, ["A"]) == pytest.approx(0.5 + 1 / 3)
    assert span_map([], truth, ["A"]) == 0.0  # nothing predicted for a class with truth


def test_interpolated_ap_matches_activitynet_loop():
    rng = np.random.default_rng(0)
    prec, rec = rng.random(12), np.sort(rng.random(12))
    mprec, mrec = np.hstack([[0], prec, [0]]), np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 1)[::-1]:  # ActivityNet's interpolated_prec_rec, written out
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
    assert interpolated_ap(prec, rec) == pytest.approx(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def test_metrics_read_the_spans_predict_segments_writes():
    fused = np.zeros((12, 2))
    fused[:7, 0], fused[7:, 1] = 0.8, 0.7  # class 0 on frames 0-6, class 1 on 7-11
    spans = spans_of(fused, ["walk", "run"])
    truth = [sp("walk", 0, 6), sp("run", 6, 12)]
    assert frame_accuracy(spans, truth, 12) == pytest.approx(11 / 12)
    assert boundary_errors(spans, truth).errors.tolist() == [1.0]
    # walk: IoU 6/7 with its truth; run: 5/6 -> both TPs
    assert span_map(spans, truth, ["walk", "run"]) == 1.0


def test_a_class_predicted_where_its_sequence_has_no_truth_is_a_false_positive():
    truth = [[sp("A", 0, 10), sp("B", 10, 20)], [sp("B", 0, 20)]]
    # A: .9 in sequence 2 (no A there: FP), then .8 on its truth (TP) -> precision 0, 1/2 at recall 0, 1
    pred = [[sp("A", 0, 10, 0.8), sp("B", 10, 20, 0.7)], [sp("A", 0, 20, 0.9)]]
    aps = span_ap(pred, truth, ["A", "B"])
    assert aps["A"] == pytest.approx(0.5)
    # B: .7 TP in sequence 1; sequence 2's B span never predicted -> recall 1/2 at precision 1
    assert aps["B"] == pytest.approx(0.5)
    assert span_map(pred, truth, ["A", "B"]) == pytest.approx(0.5)
