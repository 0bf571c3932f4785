"""Multi-label metrics and the decision-threshold rule, against hand-computed values and sklearn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from vidcls.errors import ConfigError
from vidcls.evaluation.multilabel import (
    average_precision,
    choose_thresholds,
    exact_set_accuracy,
    f1_scores,
    gap_at_k,
    hit_at_1,
    map_macro,
    multilabel_metrics,
    per_class_ap,
    predicted_sets,
)

GRID = [round(0.05 * k, 2) for k in range(1, 20)]


# --- average precision ---------------------------------------------------------------------------


def test_average_precision_by_hand():
    # ranked 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): precision 1/1 and 2/3 at the two positives
    assert average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(5 / 6)
    # ranked 0.4 (neg), 0.3 (neg), 0.2 (pos): precision 1/3
    assert average_precision(np.array([0, 1, 0, 0]), np.array([0.3, 0.2, 0.4, 0.1])) == pytest.approx(1 / 3)


def test_tied_scores_are_one_threshold():
    # all three tied: one threshold with precision 2/3 and recall 1. Any order inside the tie gives
    # something else (pos, neg, pos: 5/6; pos, pos, neg: 1; neg, pos, pos: 7/12)
    assert average_precision(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.5])) == pytest.approx(2 / 3)
    # 0.9 (pos): precision 1, recall 1/2; then the tie {pos, neg} at 0.5: precision 2/3, recall + 1/2
    got = average_precision(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.9, 0.1]))
    assert got == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # -0.0 and 0.0 are the same score: one tie, precision 1/2
    assert average_precision(np.array([1, 0]), np.array([0.0, -0.0])) == pytest.approx(0.5)


def test_all_zero_scores_give_the_prevalence_and_no_positive_gives_nan():
    assert average_precision(np.array([0, 1, 0, 0, 1]), np.zeros(5)) == pytest.approx(2 / 5)
    assert np.isnan(average_precision(np.array([0, 0, 0]), np.array([0.1, 0.9, 0.5])))
    assert np.isnan(average_precision(np.array([], dtype=int), np.array([])))


def test_per_class_ap_matches_sklearn_on_random_cases_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n, c = int(rng.integers(1, 30)), int(rng.integers(1, 6))
        targets = rng.random((n, c)) < rng.uniform(0.1, 0.9)
        scores = np.round(rng.random((n, c)), int(rng.integers(1, 4)))  # 1 decimal: many ties
        ap = per_class_ap(targets.astype(int), scores)
        assert ap.shape == (c,) and ap.dtype == np.float64
        for j in range(c):
            if targets[:, j].any():
                assert ap[j] == pytest.approx(average_precision_score(targets[:, j], scores[:, j]), abs=1e-12)
            else:
                assert np.isnan(ap[j])


def test_per_class_ap_in_several_chunks_equals_one_chunk(monkeypatch):
    import vidcls.evaluation.multilabel as ml

    rng = np.random.default_rng(1)
    targets, scores = rng.random((7, 23)) < 0.3, np.round(rng.random((7, 23)), 1)
    whole = per_class_ap(targets, scores)
    monkeypatch.setattr(ml, "_CHUNK", 10)  # 1 class per step
    np.testing.assert_array_equal(per_class_ap(targets, scores), whole)


def test_map_macro_leaves_out_the_class_without_a_positive():
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.5, 0.3], [0.8, 0.5, 0.2], [0.7, 0.5, 0.4], [0.1, 0.5, 0.1]])
    ap = per_class_ap(targets, scores)
    # class 0 as in the first hand case (5/6), class 1 has no positive, class 2 as in the second (1/3)
    assert ap[0] == pytest.approx(5 / 6) and np.isnan(ap[1]) and ap[2] == pytest.approx(1 / 3)
    assert map_macro(targets, scores) == pytest.approx((5 / 6 + 1 / 3) / 2)
    assert map_macro(np.zeros((2, 3), dtype=int), scores[:2]) == 0.0


# --- GAP -----------------------------------------------------------------------------------------


def youtube8m_gap(targets, scores, k):
    """eval_util.calculate_gap, transcribed loop for loop (no ties: the shuffle changes nothing)."""
    pairs = []
    for s_row, t_row in zip(scores, targets):
        top = sorted(range(len(s_row)), key=lambda c: -s_row[c])[: min(k, len(s_row))]
        pairs += [(s_row[c], t_row[c]) for c in top]
    pairs.sort(key=lambda p: -p[0])
    total, hits, ap = targets.sum(), 0, 0.0
    for i, (_, truth) in enumerate(pairs):
        if truth:
            hits += 1
            ap += hits / (i + 1) / total
    return ap


def test_gap_by_hand_counts_positives_outside_the_top_k():
    targets = np.array([[1, 1, 0], [0, 1, 0]])
    scores = np.array([[0.9, 0.2, 0.6], [0.3, 0.8, 0.1]])
    # k=2: video 0 keeps (0.9, pos), (0.6, neg): its positive at 0.2 is never retrieved; video 1 keeps
    # (0.8, pos), (0.3, neg). Pooled: 0.9 +, 0.8 +, 0.6 -, 0.3 -: (1/1 + 2/2) / 3 positives in all
    assert gap_at_k(targets, scores, k=2) == pytest.approx(2 / 3)
    # k=3 = C: every pair: 0.9 +, 0.8 +, 0.6 -, 0.3 -, 0.2 +, 0.1 -: (1 + 1 + 3/5) / 3
    assert gap_at_k(targets, scores, k=3) == pytest.approx(13 / 15)
    assert gap_at_k(targets, scores) == pytest.approx(13 / 15)  # k=20 > C: all of them too
    assert youtube8m_gap(targets, scores, 2) == pytest.approx(2 / 3)


def test_gap_matches_the_youtube8m_code_and_the_micro_ap():
    rng = np.random.default_rng(2)
    for _ in range(15):
        n, c, k = int(rng.integers(1, 12)), int(rng.integers(2, 30)), int(rng.integers(1, 25))
        targets = (rng.random((n, c)) < 0.2).astype(int)
        targets[0, 0] = 1
        scores = rng.random((n, c))  # continuous: no ties
        assert gap_at_k(targets, scores, k) == pytest.approx(youtube8m_gap(targets, scores, k), abs=1e-12)
        # with k >= C: the micro AP over all pairs, ties included (sklearn groups them as here)
        rounded = np.round(scores, 1)
        want = average_precision_score(targets.ravel(), rounded.ravel())
        assert gap_at_k(targets, rounded, c) == pytest.approx(want, abs=1e-12)


def test_gap_tie_at_the_kth_score_keeps_the_lowest_class_and_edges_are_zero():
    scores = np.array([[0.5, 0.5, 0.5]])
    assert gap_at_k(np.array([[0, 0, 1]]), scores, k=1) == 0.0  # class 0 kept: a negative
    assert gap_at_k(np.array([[1, 0, 0]]), scores, k=1) == 1.0
    # two of the three tied kept (classes 0, 1): one tie group, precision 1/2, 1 of 2 positives found
    assert gap_at_k(np.array([[1, 0, 1]]), scores, k=2) == pytest.approx(0.5 * 0.5)
    # all-zero scores, every pair kept: one tie group with precision 2/6 and recall 1
    assert gap_at_k(np.array([[1, 0, 0], [0, 1, 0]]), np.zeros((2, 3))) == pytest.approx(1 / 3)
    assert gap_at_k(np.zeros((0, 4)), np.zeros((0, 4))) == 0.0
    assert gap_at_k(np.zeros((2, 4)), np.ones((2, 4))) == 0.0
    with pytest.raises(ValueError, match="k must be at least 1"):
        gap_at_k(np.ones((1, 2)), np.ones((1, 2)), k=0)


def test_gap_in_several_chunks_equals_one_chunk(monkeypatch):
    import vidcls.evaluation.multilabel as ml

    rng = np.random.default_rng(3)
    targets, scores = rng.random((9, 6)) < 0.3, np.round(rng.random((9, 6)), 1)
    whole = gap_at_k(targets, scores, k=3)
    monkeypatch.setattr(ml, "_CHUNK", 10)  # 1 video per step
    assert gap_at_k(targets, scores, k=3) == whole


# --- hit@1, sets, F1, exact sets ------------------------------------------------------------------


def test_hit_at_1_by_hand():
    targets = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    # video 0: top a (a label); video 1: top a (not a label); video 2: all tied -> a, the lowest index
    scores = np.array([[0.9, 0.1, 0.2], [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]])
    assert hit_at_1(targets, scores) == pytest.approx(1 / 3)
    assert hit_at_1(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0


def test_predicted_sets_per_class_or_one_threshold():
    scores = np.array([[0.5, 0.4], [0.7, 0.9]])
    np.testing.assert_array_equal(
        predicted_sets(scores, np.array([0.5, 0.95])), [[True, False], [True, False]]
    )
    np.testing.assert_array_equal(predicted_sets(scores, 0.5), [[True, False], [True, True]])  # >= counts
    assert predicted_sets(scores, 0.5).dtype == np.bool_
    with pytest.raises(ValueError, match="thresholds"):
        predicted_sets(scores, np.array([0.5, 0.5, 0.5]))


def test_f1_by_hand():
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    predicted = np.array([[1, 1, 0], [0, 1, 1], [0, 1, 0]], dtype=bool)
    micro, macro, per_class = f1_scores(targets, predicted)
    # class 0: tp 1, predicted 1, true 2 -> 2/3; class 1: tp 1, predicted 3, true 1 -> 2/4;
    # class 2: predicted once, never true -> 0 (and counted in the macro mean)
    np.testing.assert_allclose(per_class, [2 / 3, 1 / 2, 0.0])
    assert macro == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert micro == pytest.approx(2 * 2 / (5 + 3))  # tp 2, predicted 5, true 3
    # a class never true nor predicted is left out of the macro mean
    _, macro2, per2 = f1_scores(targets, np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0]]))
    assert per2[2] == 0.0 and macro2 == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert f1_scores(np.zeros((2, 2)), np.zeros((2, 2))) == (0.0, 0.0, pytest.approx([0.0, 0.0]))


def test_f1_matches_sklearn_on_random_cases():
    rng = np.random.default_rng(4)
    for _ in range(20):
        n, c = int(rng.integers(1, 20)), int(rng.integers(2, 8))  # 2+ columns: sklearn multilabel
        targets, predicted = rng.random((n, c)) < 0.3, rng.random((n, c)) < 0.3
        micro, macro, per_class = f1_scores(targets, predicted)
        assert micro == pytest.approx(f1_score(targets, predicted, average="micro", zero_division=0))
        np.testing.assert_allclose(per_class, f1_score(targets, predicted, average=None, zero_division=0))
        active = [j for j in range(c) if targets[:, j].any() or predicted[:, j].any()]
        want = f1_score(targets[:, active], predicted[:, active], average="macro", zero_division=0)
        assert macro == pytest.approx(want if active else 0.0)


def test_exact_set_accuracy_by_hand():
    targets = np.array([[1, 0], [0, 1], [0, 0]])
    predicted = np.array([[1, 0], [1, 1], [0, 0]])  # right, one label too many, right (both empty)
    assert exact_set_accuracy(targets, predicted) == pytest.approx(2 / 3)
    assert exact_set_accuracy(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        per_class_ap(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="0 or 1"):
        map_macro(np.array([[2, 0]]), np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gap_at_k(np.array([[1, 0]]), np.array([[np.nan, 0.5]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hit_at_1(np.array([[1, 0]]), np.array([[1.5, 0.5]]))
    with pytest.raises(ValueError, match="predicted"):
        f1_scores(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="vectors"):
        average_precision(np.ones((2, 2)), np.ones((2, 2)))


# --- thresholds ----------------------------------------------------------------------------------

# class 0: positives 0.8, 0.3, negatives 0.2, 0.1; class 1: positive 0.6, negatives 0.35, 0.1, 0.1;
# class 2: no positive, every score 0.1
T3 = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
S3 = np.array([[0.8, 0.6, 0.1], [0.3, 0.35, 0.1], [0.2, 0.1, 0.1], [0.1, 0.1, 0.1]])


def test_global_threshold_by_hand_ties_go_closest_to_one_half():
    # micro F1 = 2 tp / (predicted + 3): t <= 0.10: 6/15; 0.15, 0.20: 6/8; 0.25, 0.30: tp 3 of 4
    # predicted -> 6/7 (best, twice); 0.35: 4/6; 0.40 .. 0.60: 4/5; 0.65 .. 0.80: 2/4; above: 0
    out = choose_thresholds(T3, S3, rule="global")
    assert out["rule"] == "global" and out["global"] == pytest.approx(0.30)  # 0.30 beats 0.25: nearer 0.5
    assert out["per_class"] == pytest.approx([0.30, 0.30, 0.30])
    assert out["support"] == [2, 1, 0]


def test_an_f1_tie_as_near_one_half_on_both_sides_goes_to_the_lower_threshold():
    # positives 0.9 and 0.47, negatives 0.52 and 0.53: F1 2/3 up to 0.45 (4 predicted, 2 right),
    # 2/5 at 0.50, 2/3 again from 0.55 to 0.90 (only 0.9 predicted): 0.45 and 0.55 are as near 0.5
    targets, scores = np.array([[1], [1], [0], [0]]), np.array([[0.9], [0.47], [0.52], [0.53]])
    assert choose_thresholds(targets, scores, rule="global")["global"] == pytest.approx(0.45)
    assert choose_thresholds(targets, scores, shrink=0.0)["per_class"] == pytest.approx([0.45])


def test_per_class_thresholds_by_hand_shrunk_toward_the_global_one():
    # class 0: F1 1 at 0.25 and 0.30 -> 0.30; class 1: F1 1 from 0.40 to 0.60 -> 0.50 (nearest 0.5);
    # class 2 has no positive: the global 0.30 (its own F1 is 0 everywhere, which would say 0.5)
    unshrunk = choose_thresholds(T3, S3, rule="per_class", shrink=0.0)
    assert unshrunk["per_class"] == pytest.approx([0.30, 0.50, 0.30])
    out = choose_thresholds(T3, S3)  # per_class, shrink 10
    assert out["rule"] == "per_class" and out["global"] == pytest.approx(0.30)
    # (n_c t_c + 10 t_g) / (n_c + 10): class 0 (2 * 0.3 + 3) / 12; class 1 (1 * 0.5 + 3) / 11
    assert out["per_class"] == pytest.approx([0.30, 3.5 / 11, 0.30])
    assert all(isinstance(x, float) for x in out["per_class"]) and isinstance(out["global"], float)
    json.dumps(out)


def test_fixed_thresholds_and_bad_options():
    out = choose_thresholds(T3, S3, rule="fixed", fixed=0.4)
    assert out == {"rule": "fixed", "global": 0.4, "per_class": [0.4, 0.4, 0.4], "support": [2, 1, 0]}
    with pytest.raises(ConfigError, match="'best'.*fixed, global, per_class"):
        choose_thresholds(T3, S3, rule="best")
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="strictly between 0 and 1"):
            choose_thresholds(T3, S3, rule="fixed", fixed=bad)
    for bad in (-1.0, float("inf")):
        with pytest.raises(ConfigError, match="shrink"):
            choose_thresholds(T3, S3, shrink=bad)


def shrinkage_case(moved_score: float) -> tuple[np.ndarray, np.ndarray]:
    """40 videos. Class B (column 1) pins the global threshold at 0.50: videos 0-19 carry it with score
    0.52, videos 20-39 do not, with 0.48. Class A (column 0), 2 positives: video 0 (0.9), video 1 (0.2);
    negatives: video 2 (0.4), video 3 (``moved_score``), the rest 0.02."""
    targets, scores = np.zeros((40, 2), dtype=int), np.zeros((40, 2))
    targets[:20, 1], scores[:20, 1], scores[20:, 1] = 1, 0.52, 0.48
    targets[:2, 0] = 1
    scores[:, 0] = 0.02
    scores[:4, 0] = [0.9, 0.2, 0.4, moved_score]
    return targets, scores


def test_moving_one_video_moves_a_rare_class_threshold_less_than_unshrunk():
    # class A, video 3 at 0.02: F1 4/5 for t <= 0.20 (3 predicted, 2 right), 2/4 up to 0.40, 2/3 up
    # to 0.90 -> t_A = 0.20. Video 3 moved to 0.3: t <= 0.20 gives 2*2/(4+2) = 2/3, a tie with the
    # 2/3 of 0.45 .. 0.90, and the tie goes nearest 0.5 -> t_A = 0.50: unshrunk, a move of 0.30
    before, after = shrinkage_case(0.02), shrinkage_case(0.3)
    raw = [choose_thresholds(*case, shrink=0.0) for case in (before, after)]
    assert [r["per_class"][0] for r in raw] == pytest.approx([0.20, 0.50])
    # the global threshold stays 0.50 (micro F1 42/43 there: class B's 20 + class A's video 0)
    assert [r["global"] for r in raw] == pytest.approx([0.50, 0.50])
    shrunk = [choose_thresholds(*case)["per_class"][0] for case in (before, after)]
    # (2 * 0.2 + 10 * 0.5) / 12 = 0.45, then (2 * 0.5 + 10 * 0.5) / 12 = 0.50: a move of 0.05
    assert shrunk == pytest.approx([0.45, 0.50])
    assert abs(shrunk[1] - shrunk[0]) < abs(raw[1]["per_class"][0] - raw[0]["per_class"][0])
    # class B, 20 positives, F1-best at 0.50 itself: unmoved by shrinkage
    assert choose_thresholds(*before)["per_class"][1] == pytest.approx(0.50)


def brute_best(targets, scores):
    """The grid threshold of highest micro F1 over these columns, ties to the nearest 0.5 then the
    lower one: by loops over the public functions."""
    best, best_f1 = None, -1.0
    for t in sorted(GRID, key=lambda t: (abs(round(t * 20) - 10), t)):
        f1 = f1_scores(targets, predicted_sets(scores, t))[0]
        if f1 > best_f1:
            best, best_f1 = t, f1
    return best


def test_thresholds_match_a_brute_force_search_over_the_grid():
    rng = np.random.default_rng(5)
    for _ in range(5):
        targets = (rng.random((25, 6)) < 0.3).astype(int)
        targets[:, 5] = 0
        scores = np.round(rng.random((25, 6)), 2)  # scores on the grid itself: >= must count
        t_g = brute_best(targets, scores)
        out = choose_thresholds(targets, scores, shrink=4.0)
        assert out["global"] == pytest.approx(t_g)
        for c in range(6):
            n_c = int(targets[:, c].sum())
            t_c = brute_best(targets[:, [c]], scores[:, [c]])
            want = (n_c * t_c + 4.0 * t_g) / (n_c + 4.0) if n_c else t_g
            assert out["per_class"][c] == pytest.approx(want)
            assert 0.0 < out["per_class"][c] < 1.0


def test_thresholds_without_videos_do_not_crash():
    out = choose_thresholds(np.zeros((0, 2)), np.zeros((0, 2)))
    assert out == {"rule": "per_class", "global": 0.5, "per_class": [0.5, 0.5], "support": [0, 0]}


# --- the whole report ----------------------------------------------------------------------------


def test_multilabel_metrics_by_hand():
    targets = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.5, 0.1], [0.7, 0.2, 0.3], [0.4, 0.6, 0.2]])
    out = multilabel_metrics(targets, scores, np.array([0.5, 0.5, 0.5]), ["a", "b", "c"])
    # AP a: 0.9 +, 0.7 +, 0.4 - -> 1; b: 0.6 -, 0.5 +, 0.2 - -> 1/2; c: no positive
    assert out["ap_per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(0.5), "c": None}
    assert out["map_macro"] == pytest.approx(0.75)
    # every pair (C < 20): 0.9 +, 0.7 +, 0.6 -, 0.5 +, 0.4, 0.3, 0.2, 0.2, 0.1 -: (1 + 1 + 3/4) / 3
    assert out["gap_at_20"] == pytest.approx(11 / 12)
    assert out["hit_at_1"] == pytest.approx(2 / 3)  # tops a, a, b
    # predicted {a, b}, {a}, {b}: a tp 2 of 2 -> F1 1; b tp 1, predicted 2, true 1 -> 2/3; c neither
    assert out["f1_per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(2 / 3), "c": 0.0}
    assert out["f1_macro"] == pytest.approx(5 / 6)
    assert out["f1_micro"] == pytest.approx(6 / 7)  # tp 3, predicted 4, true 3
    assert out["exact_set_accuracy"] == pytest.approx(2 / 3)
    assert out["support_per_class"] == {"a": 2, "b": 1, "c": 0}
    assert out["n"] == 3 and out["label_cardinality"] == pytest.approx(1.0)
    assert out["predicted_cardinality"] == pytest.approx(4 / 3)
    assert out["cooccurrence"] == {"classes": ["a", "b"], "counts": [[2, 1], [1, 1]]}
    json.dumps(out, allow_nan=False)
    assert multilabel_metrics(targets, scores, 0.5, ["a", "b", "c"]) == out
    with pytest.raises(ValueError, match="2 class names for 3"):
        multilabel_metrics(targets, scores, 0.5, ["a", "b"])


def test_cooccurrence_keeps_the_20_most_frequent_classes():
    # class j is carried by videos 0 .. j (support j + 1): nested sets, so the count of a pair is the
    # smaller support; the 20 most frequent are classes 24 down to 5
    targets = np.zeros((30, 25), dtype=int)
    for j in range(25):
        targets[: j + 1, j] = 1
    names = [f"c{j}" for j in range(25)]
    co = multilabel_metrics(targets, np.full((30, 25), 0.5), 0.5, names)["cooccurrence"]
    assert co["classes"] == [f"c{j}" for j in range(24, 4, -1)]
    supports = list(range(25, 5, -1))
    assert co["counts"] == [[min(a, b) for b in supports] for a in supports]


def test_multilabel_metrics_without_videos_is_all_zero():
    out = multilabel_metrics(np.zeros((0, 2), dtype=int), np.zeros((0, 2)), 0.5, ["a", "b"])
    assert out == {
        "n": 0,
        "gap_at_20": 0.0,
        "map_macro": 0.0,
        "f1_micro": 0.0,
        "f1_macro": 0.0,
        "hit_at_1": 0.0,
        "exact_set_accuracy": 0.0,
        "ap_per_class": {"a": None, "b": None},
        "f1_per_class": {"a": 0.0, "b": 0.0},
        "support_per_class": {"a": 0, "b": 0},
        "label_cardinality": 0.0,
        "predicted_cardinality": 0.0,
        "cooccurrence": {"classes": [], "counts": []},
    }
    json.dumps(out, allow_nan=False)
