"""The choices made on validation data, from hand-made softmax and metrics.

Every expected number is worked out by hand in the comments (accuracy = correct / N, F1 from the
counts); each scenario makes exactly one rule decide the outcome. The softmax is written per member,
split and view (``views``); ``outputs`` turns it into the ``{split: Outputs}`` the policy reads, with
logits ``log(p)`` (whose softmax is ``p`` again).
"""

from __future__ import annotations

import numpy as np
import pytest

from vidcls.engine.forward import Outputs
from vidcls.evaluation.policy import (
    COLLAPSE_MARGIN,
    MCNEMAR_ALPHA,
    FinalChoice,
    Policy,
    brief,
    brief_mean,
    choose_final,
    collapse_reason,
    collapsed_members,
    combine,
    decide_tta,
    discordant_counts,
    ensemble_probs,
    ensemble_view,
    mcnemar_exact,
    mcnemar_record,
    member_rows,
    score,
    served,
    view_names,
    view_probs,
)

AB = ["a", "b"]
ABC = ["a", "b", "c"]
REV = ("reverse",)  # "with TTA" = the reverse view alone: the hand sums stay short


def P(*rows) -> np.ndarray:
    return np.array(rows, dtype=float)


def views(labels, original, reverse=None, **more) -> dict:
    return {
        "original": P(*original),
        "reverse": P(*(reverse or original)),
        **{k: P(*v) for k, v in more.items()},
        "labels": np.array(labels),
    }


def outputs(member_probs: list[dict]) -> dict:
    """``{split: Outputs}`` from per member ``{split: {view: (N, C) softmax, "labels": (N,)}}``: logits
    ``log(p)``, models ``0 .. M - 1``, the views of member 0 in its order."""
    out = {}
    for split, first in member_probs[0].items():
        names = [v for v in first if v != "labels"]
        with np.errstate(divide="ignore"):  # log(0) = -inf: softmax gives 0 back
            z = np.stack(
                [np.stack([np.log(m[split][v]) for v in names], axis=1) for m in member_probs], axis=1
            )
        out[split] = Outputs(z, range(len(member_probs)), names, first["labels"])
    return out


def onehot(pred, n_classes=3, conf=0.8) -> np.ndarray:
    p = np.full((len(pred), n_classes), (1 - conf) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


# ---------------------------------------------------------------- small pieces


def test_score_picks_the_select_metric():
    m = {"accuracy": 0.8, "f1_macro": 0.6}
    assert score(m, "val_acc") == 0.8 and score(m, "val_f1_macro") == 0.6


def test_decide_tta_auto_needs_a_strict_gain_and_on_off_force():
    better, worse = {"accuracy": 0.8, "f1_macro": 0.7}, {"accuracy": 0.7, "f1_macro": 0.75}
    assert decide_tta(worse, better, "val_acc", "auto") is True  # (off, on): on is better
    assert decide_tta(better, worse, "val_acc", "auto") is False
    assert decide_tta(better, worse, "val_f1_macro", "auto") is True  # macro F1 says the opposite
    assert decide_tta(better, better, "val_acc", "auto") is False  # a tie keeps the original view
    assert decide_tta(better, worse, "val_acc", "on") is True  # forced, though it is worse
    assert decide_tta(worse, better, "val_acc", "off") is False  # forced, though it is better


def test_view_and_ensemble_probs():
    m0 = {
        "v": views(
            [0, 1], [[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.4, 0.6]], speed_up=[[0.1, 0.9], [0.0, 1.0]]
        )
    }
    m1 = {
        "v": views(
            [0, 1], [[0.7, 0.3], [0.6, 0.4]], [[0.3, 0.7], [0.2, 0.8]], speed_up=[[0.3, 0.7], [0.2, 0.8]]
        )
    }
    out = outputs([m0, m1])
    np.testing.assert_allclose(
        view_probs(out, 0, "v", ("reverse", "speed_up"), False), [[0.9, 0.1], [0.2, 0.8]]
    )
    np.testing.assert_allclose(
        view_probs(out, 0, "v", ("reverse", "speed_up"), True), [[0.3, 0.7], [0.2, 0.8]]
    )
    np.testing.assert_allclose(view_probs(out, 1, "v", ("speed_up",), True), [[0.3, 0.7], [0.2, 0.8]])
    np.testing.assert_allclose(view_probs(out, 1, "v", ("speed_up",), False), [[0.7, 0.3], [0.6, 0.4]])
    # without TTA: (m0 original + m1 original) / 2; with TTA over reverse only: (m0 rev + m1 rev) / 2
    np.testing.assert_allclose(ensemble_probs(out, [0, 1], "v", REV, False), [[0.8, 0.2], [0.4, 0.6]])
    np.testing.assert_allclose(ensemble_probs(out, [0, 1], "v", REV, True), [[0.4, 0.6], [0.3, 0.7]])
    np.testing.assert_allclose(ensemble_probs(out, [1], "v", REV, True), [[0.3, 0.7], [0.2, 0.8]])
    # over members and views at once: (m0 rev + m0 speed_up + m1 rev + m1 speed_up) / 4
    np.testing.assert_allclose(
        ensemble_probs(out, [1, 0], "v", ("reverse", "speed_up"), True), [[0.3, 0.7], [0.2, 0.8]]
    )
    np.testing.assert_allclose(
        ensemble_probs(out, [0, 1], "v", ("original", "reverse"), True), [[0.6, 0.4], [0.35, 0.65]]
    )


def test_view_names_original_without_tta_else_exactly_the_modes():
    assert view_names(("reverse", "speed_up"), False) == ("original",)
    assert view_names(("reverse", "speed_up"), True) == ("reverse", "speed_up")
    assert view_names(["speed_up"], True) == ("speed_up",)


# ---------------------------------------------------------------- collapse

GOOD3 = [[8, 1, 1], [1, 8, 1], [1, 1, 8]]


@pytest.mark.parametrize(
    "cm,want",
    [
        ([[3, 0, 0], [3, 0, 0], [4, 0, 0]], "predicts a single class for all 10 validation videos"),
        # class c absent from val: still a single-class member (balanced accuracy 1/2 is above chance)
        ([[5, 0, 0], [5, 0, 0], [0, 0, 0]], "predicts a single class for all 10 validation videos"),
        ([[0, 4, 0], [0, 6, 0], [0, 0, 0]], "predicts a single class for all 10 validation videos"),
        # a val split of one class, all predicted right: nothing wrong with the member
        ([[5, 0, 0], [0, 0, 0], [0, 0, 0]], None),
        # one class for all videos but one: not "single class"; balanced (1 + 1/5 + 0) / 3 = 0.4 > 1/3
        ([[5, 0, 0], [4, 1, 0], [5, 0, 0]], None),
        # balanced accuracy (.4 + .3 + .3) / 3 = 1/3 exactly: at chance
        ([[4, 3, 3], [3, 3, 4], [3, 4, 3]], "validation balanced accuracy 0.333 is at chance (1/3)"),
        ([[1, 1], [1, 1]], "validation balanced accuracy 0.500 is at chance (1/2)"),
        # (34 + 34 + 34) / 300 = .34: just above chance
        ([[34, 33, 33], [33, 34, 33], [33, 33, 34]], None),
        # balanced accuracy is the mean recall, not accuracy: (8/9 + 0/1) / 2 = .444 at chance (accuracy .8)
        ([[8, 1], [1, 0]], "validation balanced accuracy 0.444 is at chance (1/2)"),
        ([[9, 0], [1, 1]], None),  # recalls 1 and 1/2: .75
    ],
)
def test_collapse_reason_single_class_and_chance(cm, want):
    # score == median: the margin rule stays out of these cases
    assert collapse_reason(np.array(cm), 0.8, 0.8, "val_acc") == want


def test_collapse_reason_margin_boundary():
    cm = np.array(GOOD3)
    assert collapse_reason(cm, 0.5, 0.75, "val_acc", margin=0.25) is None  # exactly at the margin: kept
    assert collapse_reason(cm, 0.49, 0.75, "val_f1_macro", margin=0.25) == (
        "validation val_f1_macro 0.490 is more than 0.25 below the members' median 0.750"
    )
    assert COLLAPSE_MARGIN == 0.10
    assert collapse_reason(cm, 0.66, 0.75, "val_acc") is None  # 0.09 under the median
    assert collapse_reason(cm, 0.64, 0.75, "val_acc") == (
        "validation val_acc 0.640 is more than 0.10 below the members' median 0.750"
    )


def m(acc, cm=GOOD3, f1=None):
    return {"accuracy": acc, "f1_macro": acc if f1 is None else f1, "confusion_matrix": cm}


def test_collapsed_members_by_rule():
    ok = [m(0.9), m(0.85), m(0.88)]
    far_below = m(0.70)  # median of the five: 0.85, 0.15 under
    chance = m(0.34, [[4, 3, 3], [3, 3, 4], [3, 4, 3]])
    out = collapsed_members(ok + [far_below, chance], "val_acc")
    assert out == [
        {"member": 3, "reason": "validation val_acc 0.700 is more than 0.10 below the members' median 0.850"},
        {"member": 4, "reason": "validation balanced accuracy 0.333 is at chance (1/3)"},
    ]
    assert collapsed_members(ok + [m(0.78)], "val_acc") == []  # 0.78: 0.085 under the median 0.865
    assert collapsed_members([chance], "val_acc") == []  # a lone member is never excluded
    single = m(0.4, [[4, 0, 0], [3, 0, 0], [3, 0, 0]])
    assert collapsed_members([m(0.9), single], "val_acc") == [
        {"member": 1, "reason": "predicts a single class for all 10 validation videos"}
    ]


def test_collapsed_members_keeps_the_best_even_when_every_member_is_bad():
    single = [[4, 0, 0], [3, 0, 0], [3, 0, 0]]
    out = collapsed_members([m(0.3, single), m(0.4, single), m(0.4, single)], "val_acc")
    assert [e["member"] for e in out] == [0, 2]  # member 1, the first of the best two, stays


def test_collapsed_members_uses_the_select_metric_and_margin():
    members = [m(0.9, f1=0.8), m(0.85, f1=0.8), m(0.70, f1=0.78)]
    assert [e["member"] for e in collapsed_members(members, "val_acc")] == [2]  # 0.15 under 0.85
    assert collapsed_members(members, "val_f1_macro") == []  # 0.02 under 0.80
    assert collapsed_members(members, "val_acc", margin=0.2) == []  # 0.15 is within 0.2


def test_combine_excludes_by_the_select_metric():
    """y: 17 a, 2 b, 1 c. Members 0 and 1 are perfect. Member 2 calls the c video a: accuracy 19/20 =
    .95 (0.05 under the median 1: kept by accuracy); F1 a = 2*(17/18)/(17/18 + 1) = 34/35, b 1, c 0:
    macro 69/105 = .657, more than 0.10 under the median 1: excluded by macro F1."""
    y = [0] * 17 + [1] * 2 + [2]

    def member(pred):
        return {"val": {"original": onehot(pred), "reverse": onehot(pred), "labels": np.array(y)}}

    members = [member(y), member(y), member(y[:-1] + [0])]
    by_acc = combine(outputs(members), ABC, Policy("val_acc", "auto", REV))
    by_f1 = combine(outputs(members), ABC, Policy("val_f1_macro", "auto", REV))
    assert by_acc["members"][2]["val"]["f1_macro"] == pytest.approx(69 / 105)
    assert by_acc["ensemble"]["members_used"] == [0, 1, 2] and by_acc["ensemble"]["excluded"] == []
    assert by_f1["ensemble"]["members_used"] == [0, 1]
    assert by_f1["ensemble"]["excluded"] == [
        {
            "member": 2,
            "reason": "validation val_f1_macro 0.657 is more than 0.10 below the members' median 1.000",
        }
    ]


# ---------------------------------------------------------------- whole decisions from softmax

Y4 = [0, 0, 1, 1]


def tta_helps_member_0_not_the_ensemble():
    """Member 0: original 3/4 (video 3 wrong), reverse 4/4. Member 1: original 3/4 (video 0 wrong),
    reverse 2/4 (all class b). Ensemble without TTA: v0 (.9+.4)/2=.65 a, v3 (.6+.1)/2=.35 a -> b: 4/4.
    Ensemble with TTA: v0 (.6+.1)/2=.35 a -> b wrong, v1 (.6+.2)/2=.4 -> b wrong: 2/4."""
    m0 = {
        "val": views(
            Y4,
            [[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.6, 0.4]],
            [[0.6, 0.4], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]],
        )
    }
    m1 = {
        "val": views(
            Y4,
            [[0.4, 0.6], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]],
            [[0.1, 0.9], [0.2, 0.8], [0.1, 0.9], [0.1, 0.9]],
        )
    }
    return [m0, m1]


def test_tta_helps_a_member_but_not_the_ensemble():
    res = combine(outputs(tta_helps_member_0_not_the_ensemble()), AB, Policy("val_acc", "auto", REV))
    m0, m1 = res["members"]
    assert (m0["val"]["accuracy"], m0["val_tta"]["accuracy"], m0["tta_used"]) == (0.75, 1.0, True)
    assert (m1["val"]["accuracy"], m1["val_tta"]["accuracy"], m1["tta_used"]) == (0.75, 0.5, False)
    # member 1 with TTA says b for all: F1(a) = 0, F1(b) = 2*.5*1/1.5 = 2/3, macro 1/3
    assert m1["val_tta"]["f1_macro"] == pytest.approx(1 / 3)
    ens = res["ensemble"]
    assert ens["members_used"] == [0, 1] and ens["excluded"] == []
    assert ens["tta_used"] is False and ens["val"]["accuracy"] == 1.0
    assert ens["without_tta"]["val"]["accuracy"] == 1.0 and ens["with_tta"]["val"]["accuracy"] == 0.5
    # member 0 with TTA also scores 4/4: a tie, and a tie keeps the ensemble
    assert res["final"]["source"] == "ensemble" and res["final"]["tta_used"] is False
    c = res["choice"]
    assert (c.members, c.tta_used, c.ensemble_tta_used, c.member_tta_used) == (
        [0, 1],
        False,
        False,
        [True, False],
    )
    assert c.val_score == 1.0 and res["final"]["reason"] == c.reason
    assert (res["tta"]["mode"], res["tta"]["modes"], res["tta"]["used"]) == ("auto", ["reverse"], False)
    np.testing.assert_allclose(
        res["predictions"]["val"], [[0.65, 0.35], [0.85, 0.15], [0.15, 0.85], [0.35, 0.65]]
    )


def test_tta_helps_the_ensemble_but_no_member():
    """Original: both members wrong on video 3 (a .9 and .8). Reverse: member 0 wrong on video 2
    (a .55), member 1 wrong on video 3 (a .55); each member 3/4 either way (a tie: no TTA). Ensemble
    with TTA: v2 (.55+.1)/2 = .325 a, v3 (.1+.55)/2 = .325 a -> both right, 4/4 against 3/4."""
    yt = [0, 1]
    m0 = {
        "val": views(
            Y4,
            [[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]],
            [[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.1, 0.9]],
        ),
        "test": views(yt, [[0.6, 0.4], [0.6, 0.4]], [[0.6, 0.4], [0.2, 0.8]]),
    }
    m1 = {
        "val": views(
            Y4,
            [[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.8, 0.2]],
            [[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.55, 0.45]],
        ),
        "test": views(yt, [[0.6, 0.4], [0.6, 0.4]], [[0.7, 0.3], [0.4, 0.6]]),
    }
    res = combine(outputs([m0, m1]), AB, Policy("val_acc", "auto", REV))
    assert [r["tta_used"] for r in res["members"]] == [False, False]
    assert [(r["val"]["accuracy"], r["val_tta"]["accuracy"]) for r in res["members"]] == [(0.75, 0.75)] * 2
    assert res["ensemble"]["tta_used"] is True and res["tta"]["used"] is True
    assert res["ensemble"]["with_tta"]["val"]["accuracy"] == 1.0
    assert res["ensemble"]["without_tta"]["val"]["accuracy"] == 0.75
    # test, only scored: without TTA both videos get a (.6) -> 1/2; with TTA v1 (.2+.4)/2 = .3 a -> 2/2
    assert res["ensemble"]["without_tta"]["test"]["accuracy"] == 0.5
    assert res["final"]["source"] == "ensemble" and res["final"]["tta_used"] is True
    assert res["final"]["val"]["accuracy"] == 1.0 and res["final"]["test"]["accuracy"] == 1.0
    np.testing.assert_allclose(res["predictions"]["test"], [[0.65, 0.35], [0.3, 0.7]])
    assert res["tta"]["per_mode"] == {
        "reverse": {
            "val": {"accuracy": 1.0, "f1_weighted": 1.0, "f1_macro": 1.0, "worst_class_f1": 1.0},
            "test": {"accuracy": 1.0, "f1_weighted": 1.0, "f1_macro": 1.0, "worst_class_f1": 1.0},
        }
    }


def three_members(m0_val, m0_rev=None):
    """Members 1 and 2: a at .1 on video 0 (wrong), right and sure elsewhere: 3/4 either view."""
    other = views(Y4, [[0.1, 0.9], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    test_other = views([0, 1], [[0.9, 0.1], [0.9, 0.1]])
    m0 = {
        "val": views(Y4, m0_val, m0_rev),
        "test": views([0, 1], [[0.6, 0.4], [0.6, 0.4]], [[0.6, 0.4], [0.3, 0.7]]),
    }
    return [m0, {"val": other, "test": test_other}, {"val": other, "test": test_other}]


def test_one_video_better_on_four_is_noise():
    """Member 0 right on all four at .6: 4/4. Ensemble: v0 (.6+.1+.1)/3 = .27 a -> wrong: 3/4. Member 0
    scores higher, but on one video: b = 1 (v0), c = 0, p = min(1, 2 * C(1,0)/2) = 1: the ensemble stays."""
    res = combine(
        outputs(three_members([[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.4, 0.6]])),
        AB,
        Policy("val_acc", "auto", REV),
    )
    assert res["ensemble"]["members_used"] == [0, 1, 2] and res["ensemble"]["val"]["accuracy"] == 0.75
    assert res["members"][0]["val"]["accuracy"] == 1.0
    assert res["final"]["source"] == "ensemble" and res["final"]["val"]["accuracy"] == 0.75
    assert res["choice"] == FinalChoice(
        source="ensemble",
        members=[0, 1, 2],
        tta_used=False,
        tta_modes=["reverse"],
        select="val_acc",
        reason="member 0 scored higher on validation (val_acc 1.0000 vs 0.7500) but not significantly "
        "(McNemar b=1, c=0, p=1.000 >= 0.05): the ensemble is served",
        val_score=0.75,
        ensemble_members=[0, 1, 2],
        ensemble_tta_used=False,
        member_tta_used=[False, False, False],
        excluded=[],
        tta="auto",
        mcnemar={"member": 0, "b": 1, "c": 0, "p_value": 1.0, "alpha": 0.05},
    )


Y45 = [0, 1] * 22 + [0]


def test_one_video_better_on_45_videos_keeps_the_ensemble():
    """45 videos, every view at .9. Members 0 and 1 miss videos 0-4: 40/45 = .8889. Member 2 misses 2-5:
    41/45 = .9111, the best. Ensemble: videos 0, 1 (.1+.1+.9)/3 = .37 for the truth -> wrong, 2-4 wrong
    in all three, video 5 (.9+.9+.1)/3 = .63 -> right: 40/45. b = 2 (videos 0, 1), c = 1 (video 5):
    p = min(1, 2 * (C(3,0) + C(3,1)) / 2^3) = min(1, 2 * 4/8) = 1 -> the ensemble is served."""

    def member(wrong):
        p = onehot(flip(Y45, wrong), 2, 0.9)
        return {"val": {"original": p, "reverse": p, "labels": np.array(Y45)}}

    res = combine(
        outputs([member(range(5)), member(range(5)), member(range(2, 6))]), AB, Policy("val_acc", "auto", REV)
    )
    assert res["ensemble"]["members_used"] == [0, 1, 2] and res["ensemble"]["excluded"] == []
    assert res["members"][2]["val"]["accuracy"] == pytest.approx(41 / 45)
    c = res["choice"]
    assert (c.source, c.members, c.val_score) == ("ensemble", [0, 1, 2], pytest.approx(40 / 45))
    assert c.mcnemar == {"member": 2, "b": 2, "c": 1, "p_value": 1.0, "alpha": 0.05}
    assert c.reason == (
        "member 2 scored higher on validation (val_acc 0.9111 vs 0.8889) but not significantly "
        "(McNemar b=2, c=1, p=1.000 >= 0.05): the ensemble is served"
    )


Y20 = [0, 1] * 10


def flip(labels, wrong):
    """Predictions: the true class, except the other one (of two) on the videos ``wrong``."""
    return [1 - y if v in wrong else y for v, y in enumerate(labels)]


def twenty_videos(m0_original, m0_reverse):
    """Members 1 and 2: wrong at .9 on videos 0-7 (four a, four b), right at .9 elsewhere: 12/20 = .6,
    recalls 6/10 each (kept). Member 0 predicts ``m0_*`` at .6; on test (a, b) it says a a, reversed a b."""
    other = onehot(flip(Y20, range(8)), 2, 0.9)
    test_other = views([0, 1], [[0.9, 0.1], [0.9, 0.1]])
    m0 = {
        "val": {
            "original": onehot(m0_original, 2, 0.6),
            "reverse": onehot(m0_reverse, 2, 0.6),
            "labels": np.array(Y20),
        },
        "test": views([0, 1], [[0.6, 0.4], [0.6, 0.4]], [[0.6, 0.4], [0.3, 0.7]]),
    }
    return [m0] + [
        {"val": {"original": other, "reverse": other, "labels": np.array(Y20)}, "test": test_other}
    ] * 2


def test_a_significantly_better_member_is_served():
    """Member 0 right on all 20: 1.0. Ensemble: videos 0-7 (.6+.1+.1)/3 = .27 for the truth -> wrong,
    elsewhere (.6+.9+.9)/3 right: 12/20. b = 8, c = 0: p = 2 * (1/2)^8 = 1/128 = .0078 < .05."""
    res = combine(outputs(twenty_videos(Y20, Y20)), AB, Policy("val_acc", "auto", REV))
    assert res["ensemble"]["members_used"] == [0, 1, 2] and res["ensemble"]["val"]["accuracy"] == 0.6
    assert res["final"]["source"] == "member 0" and res["final"]["tta_used"] is False
    assert res["final"]["val"]["accuracy"] == 1.0
    assert res["final"]["test"]["accuracy"] == 0.5  # member 0's original test view: a, a
    assert res["choice"] == FinalChoice(
        source="member 0",
        members=[0],
        tta_used=False,
        tta_modes=["reverse"],
        select="val_acc",
        reason="member 0 scored higher on validation (val_acc 1.0000 vs 0.6000) and significantly "
        "(McNemar b=8, c=0, p=0.008 < 0.05): member 0 alone is served",
        val_score=1.0,
        ensemble_members=[0, 1, 2],
        ensemble_tta_used=False,
        member_tta_used=[False, False, False],
        excluded=[],
        tta="auto",
        mcnemar={"member": 0, "b": 8, "c": 0, "p_value": 1 / 128, "alpha": 0.05},
    )


def test_the_served_member_keeps_its_own_tta_choice():
    """Member 0: original misses video 19 (b, called a at .6): 19/20; reverse right on all: 20/20, TTA
    used. The ensemble is 12/20 both ways (video 19 (.4+.9+.9)/3 = .73 b, right): no TTA. Compared as
    served, member 0 reversed: b = 8, c = 0 (its unused original view would give c = 1, video 19).
    Served: its test predictions are its reverse view, a .6, b .7 -> 2/2."""
    res = combine(outputs(twenty_videos(flip(Y20, [19]), Y20)), AB, Policy("val_acc", "auto", REV))
    assert res["members"][0]["tta_used"] is True and res["ensemble"]["tta_used"] is False
    assert res["final"]["source"] == "member 0" and res["final"]["tta_used"] is True
    assert res["final"]["val"]["accuracy"] == 1.0 and res["final"]["test"]["accuracy"] == 1.0
    np.testing.assert_allclose(res["predictions"]["test"], [[0.6, 0.4], [0.3, 0.7]])
    assert res["choice"].members == [0] and res["choice"].member_tta_used == [True, False, False]
    assert res["choice"].mcnemar == {"member": 0, "b": 8, "c": 0, "p_value": 1 / 128, "alpha": 0.05}


@pytest.mark.parametrize(
    "tta,member_tta,ens_tta,source,val_acc",
    [
        # on: every model with TTA; the ensemble falls to 2/4 and member 0 with TTA scores 4/4, but on
        # two videos (b = 2: v0, v1; c = 0): p = 2 * (1/2)^2 = .5, not significant: the ensemble is served
        ("on", [True, True], True, "ensemble", 0.5),
        # off: no TTA anywhere; the ensemble (4/4) beats both members (3/4)
        ("off", [False, False], False, "ensemble", 1.0),
    ],
)
def test_tta_on_and_off_force_every_decision(tta, member_tta, ens_tta, source, val_acc):
    res = combine(outputs(tta_helps_member_0_not_the_ensemble()), AB, Policy("val_acc", tta, REV))
    assert [r["tta_used"] for r in res["members"]] == member_tta
    assert res["ensemble"]["tta_used"] is ens_tta
    assert res["ensemble"]["val"]["accuracy"] == (0.5 if ens_tta else 1.0)
    assert res["final"]["source"] == source and res["final"]["val"]["accuracy"] == val_acc
    assert res["final"]["tta_used"] is ens_tta and res["choice"].tta == tta


def test_select_changes_the_tta_choice():
    """y = a a a a b c. Original predicts a a a a a c: accuracy 5/6; F1 a = 2*.8*1/1.8 = 8/9, b 0,
    c 1: macro 17/27 = .630. Reverse predicts a a b c b c: accuracy 4/6; F1 a = 2*1*.5/1.5 = 2/3,
    b = 2*.5*1/1.5 = 2/3, c = 2/3: macro 2/3 = .667. Accuracy keeps the original view, macro F1 takes TTA."""
    y = [0, 0, 0, 0, 1, 2]
    mp = [
        {
            "val": {
                "original": onehot([0, 0, 0, 0, 0, 2]),
                "reverse": onehot([0, 0, 1, 2, 1, 2]),
                "labels": np.array(y),
            }
        }
    ]
    by_acc = combine(outputs(mp), ABC, Policy("val_acc", "auto", REV))
    by_f1 = combine(outputs(mp), ABC, Policy("val_f1_macro", "auto", REV))
    row = by_acc["members"][0]
    assert row["val"]["accuracy"] == pytest.approx(5 / 6) and row["val_tta"]["accuracy"] == pytest.approx(
        4 / 6
    )
    assert row["val"]["f1_macro"] == pytest.approx(17 / 27) and row["val_tta"]["f1_macro"] == pytest.approx(
        2 / 3
    )
    assert row["tta_used"] is False and by_f1["members"][0]["tta_used"] is True
    assert by_acc["final"]["tta_used"] is False and by_f1["final"]["tta_used"] is True
    assert by_acc["choice"].val_score == pytest.approx(5 / 6) and by_f1["choice"].val_score == pytest.approx(
        2 / 3
    )
    # one member: the ensemble is that member, so it is kept; nothing to test it against
    assert by_acc["final"]["source"] == by_f1["final"]["source"] == "ensemble"
    assert by_acc["choice"].mcnemar == {} and by_acc["choice"].reason == (
        "the ensemble has a single member (0): it is served"
    )


def test_collapsed_member_is_left_out_of_the_average():
    yv, yt = [0, 1, 2, 0, 1, 2], [0, 1, 2, 2]

    def member(val_pred, test_pred):
        return {
            "val": {"original": onehot(val_pred), "reverse": onehot(val_pred), "labels": np.array(yv)},
            "test": {"original": onehot(test_pred), "reverse": onehot(test_pred), "labels": np.array(yt)},
        }

    good1 = member([0, 1, 2, 0, 1, 1], [0, 1, 2, 1])
    good2 = member([0, 1, 2, 0, 2, 2], [0, 1, 1, 2])
    collapsed = member([0] * 6, [0] * 4)
    res = combine(outputs([good1, good2, collapsed]), ABC, Policy("val_acc", "off", REV))
    assert res["ensemble"]["members_used"] == [0, 1]
    assert res["ensemble"]["excluded"] == [
        {"member": 2, "reason": "predicts a single class for all 6 validation videos"}
    ]
    assert res["choice"].excluded == res["ensemble"]["excluded"] and res["choice"].members == [0, 1]
    np.testing.assert_allclose(
        res["predictions"]["test"], (good1["test"]["original"] + good2["test"]["original"]) / 2
    )
    # videos 0, 1 agree and are right; videos 2 and 3 (both c) average a (c .8, b .1) vote with a
    # (b .8, c .1) vote -> a b/c tie, broken to the lower index (b): wrong
    assert res["ensemble"]["test"]["accuracy"] == pytest.approx(2 / 4)
    assert res["members"][2]["test"]["accuracy"] == pytest.approx(1 / 4)


def test_the_per_mode_figures_leave_the_collapsed_member_out_too():
    """Members 0 and 1 right at .6 on every video, member 2 says a at .99 for all (excluded). Without
    it, reversed: 4/4. With it, the b videos get a at (.4 + .4 + .99) / 3 = .597: 2/4."""
    right = onehot(Y4, 2, 0.6)
    member = [{"val": {"original": right, "reverse": right, "labels": np.array(Y4)}}] * 2
    collapsed = {
        "val": {
            "original": onehot([0] * 4, 2, 0.99),
            "reverse": onehot([0] * 4, 2, 0.99),
            "labels": np.array(Y4),
        }
    }
    res = combine(outputs(member + [collapsed]), AB, Policy("val_acc", "auto", REV))
    assert res["ensemble"]["members_used"] == [0, 1]
    assert res["tta"]["per_mode"]["reverse"]["val"]["accuracy"] == 1.0
    assert res["tta"]["per_mode"]["reverse"] == res["ensemble"]["with_tta"]


# ---------------------------------------------------------------- choose_final on hand-made metrics
# The select scores come from the hand-made metric rows; the softmax only decides McNemar's b and c.

Y10 = [0, 1] * 5


def row(i, val, val_tta, tta_used):
    return {"member": i, "val": val, "val_tta": val_tta, "tta_used": tta_used}


def ens_view(val_off, val_on, tta_used, used=(0, 1)):
    return {
        "members_used": list(used),
        "without_tta": {"val": val_off},
        "with_tta": {"val": val_on},
        "tta_used": tta_used,
    }


def val_probs(*members):
    """The outputs on Y10 from ``(original predictions, reverse predictions, confidence)`` per member."""
    return outputs(
        [
            {"val": {"original": onehot(o, 2, conf), "reverse": onehot(r, 2, conf), "labels": np.array(Y10)}}
            for o, r, conf in members
        ]
    )


# member 0 wrong at .9 on videos 0-5, member(s) right at .6 on all: the ensemble's truth on 0-5 is
# (.1 + .6) / 2 = .35 (or (.1 + .6 + .6) / 3 = .43): wrong; b = 6, c = 0, p = 2 * (1/2)^6 = .03125
WRONG_0_5 = (flip(Y10, range(6)), flip(Y10, range(6)), 0.9)
RIGHT = (Y10, Y10, 0.6)


def test_choose_final_depends_on_the_select_metric():
    """Member 1: accuracy .9, macro F1 .5; the ensemble: .8 and .7. By accuracy member 1 wins (and is
    significantly better: b = 6, c = 0), by macro F1 the ensemble."""
    low, member1 = {"accuracy": 0.6, "f1_macro": 0.4}, {"accuracy": 0.9, "f1_macro": 0.5}
    members = [row(0, low, low, False), row(1, member1, low, False)]
    ens = ens_view({"accuracy": 0.8, "f1_macro": 0.7}, low, False)
    probs = val_probs(WRONG_0_5, RIGHT)
    by_acc = choose_final(probs, members, ens, [], Policy("val_acc", "auto", ("original", "reverse")))
    by_f1 = choose_final(probs, members, ens, [], Policy("val_f1_macro", "auto", ("original", "reverse")))
    assert (by_acc.source, by_acc.members, by_acc.val_score) == ("member 1", [1], 0.9)
    assert (by_f1.source, by_f1.members, by_f1.val_score) == ("ensemble", [0, 1], 0.7)
    assert by_f1.reason == (
        "the ensemble of members [0, 1] scored val_f1_macro 0.7000 on validation, no "
        "lower than the best single member (member 1, 0.5000; McNemar b=6, c=0, p=0.031)"
    )
    assert by_acc.mcnemar == by_f1.mcnemar == {"member": 1, "b": 6, "c": 0, "p_value": 0.03125, "alpha": 0.05}
    assert by_acc.tta_modes == ["original", "reverse"] and by_f1.select == "val_f1_macro"


def test_choose_final_reads_the_view_each_model_uses():
    """The ensemble uses TTA (.8); member 0 scores .9 only without TTA, but it uses TTA (.7): the
    ensemble is kept. Member 1 uses its TTA view (.85) and would beat the ensemble's unused view (.6).
    Softmax: member 0 original wrong (.9) on videos 0-5, reverse right; member 1 original wrong (.6) on
    all, reverse right. Member 1 reversed against the ensemble's original view ((.1 + .4) / 2 = .25 for
    the truth on 0-5, (.9 + .4) / 2 = .65 on 6-9): b = 6, c = 0. Had either side used its other view,
    b would be 0 (member 1 original: all wrong; ensemble reversed: all right)."""
    members = [
        row(0, {"accuracy": 0.9}, {"accuracy": 0.7}, True),
        row(1, {"accuracy": 0.5}, {"accuracy": 0.75}, True),
    ]
    probs = val_probs((flip(Y10, range(6)), Y10, 0.9), (flip(Y10, range(10)), Y10, 0.6))
    policy = Policy("val_acc", "auto", REV)
    choice = choose_final(probs, members, ens_view({"accuracy": 0.6}, {"accuracy": 0.8}, True), [], policy)
    assert (choice.source, choice.tta_used, choice.val_score) == ("ensemble", True, 0.8)
    assert choice.ensemble_tta_used is True and choice.member_tta_used == [True, True]
    choice = choose_final(probs, members, ens_view({"accuracy": 0.8}, {"accuracy": 0.6}, False), [], policy)
    assert (choice.source, choice.tta_used, choice.val_score) == ("ensemble", False, 0.8)
    members[1]["val_tta"] = {"accuracy": 0.85}
    choice = choose_final(probs, members, ens_view({"accuracy": 0.8}, {"accuracy": 0.6}, False), [], policy)
    assert (choice.source, choice.members, choice.tta_used, choice.val_score) == ("member 1", [1], True, 0.85)
    assert choice.mcnemar == {"member": 1, "b": 6, "c": 0, "p_value": 0.03125, "alpha": 0.05}


def test_choose_final_ties_keep_the_ensemble_and_the_first_best_member():
    same = {"accuracy": 0.75}
    members = [row(0, same, same, False), row(1, same, same, False)]
    probs = val_probs(RIGHT, RIGHT)
    assert choose_final(probs, members, ens_view(same, same, False), [], Policy()).source == "ensemble"
    better = {"accuracy": 0.9}
    members = [row(0, same, same, False), row(1, better, same, False), row(2, better, same, False)]
    choice = choose_final(
        val_probs(WRONG_0_5, RIGHT, RIGHT),
        members,
        ens_view(same, same, False, (0, 1, 2)),
        [{"member": 9, "reason": "x"}],
        Policy(),
    )
    assert choice.to_dict() == {
        "source": "member 1",
        "members": [1],
        "tta_used": False,
        "tta_modes": ["original", "reverse", "speed_up", "speed_down"],
        "select": "val_acc",
        "val_score": 0.9,
        "ensemble_members": [0, 1, 2],
        "ensemble_tta_used": False,
        "member_tta_used": [False, False, False],
        "excluded": [{"member": 9, "reason": "x"}],
        "tta": "auto",
        "mcnemar": {"member": 1, "b": 6, "c": 0, "p_value": 0.03125, "alpha": 0.05},
        "checkpoints": [],
        "reason": "member 1 scored higher on validation (val_acc 0.9000 vs 0.7500) and significantly "
        "(McNemar b=6, c=0, p=0.031 < 0.05): member 1 alone is served",
    }


def test_an_excluded_member_is_never_served_alone():
    """Member 0 misses videos 0-5 (.9): 4/10; member 1 misses 1-5 (.6): 5/10; member 2, excluded, is
    right on all (.9): 10/10, the best. Ensemble of 0 and 1: video 0 (.1 + .6) / 2 = .35 -> wrong, 1-5
    wrong in both, 6-9 right: 4/10. Member 2 would pass the test (b = 6, c = 0, p = .03125) but is not a
    candidate; member 1 is higher (.5 vs .4) on one video only (b = 1, c = 0, p = 1): the ensemble stays."""
    probs = val_probs(WRONG_0_5, (flip(Y10, range(1, 6)),) * 2 + (0.6,), (Y10, Y10, 0.9))
    policy = Policy("val_acc", "auto", REV)
    members = member_rows(probs, AB, policy)
    ens = ensemble_view(probs, AB, [0, 1], policy)
    assert mcnemar_record(probs, members[2], ens, policy) == {
        "member": 2,
        "b": 6,
        "c": 0,
        "p_value": 0.03125,
        "alpha": 0.05,
    }
    choice = choose_final(probs, members, ens, [{"member": 2, "reason": "set by the test"}], policy)
    assert (choice.source, choice.members, choice.val_score) == ("ensemble", [0, 1], 0.4)
    assert choice.mcnemar == {"member": 1, "b": 1, "c": 0, "p_value": 1.0, "alpha": 0.05}
    assert choice.reason == (
        "member 1 scored higher on validation (val_acc 0.5000 vs 0.4000) but not "
        "significantly (McNemar b=1, c=0, p=1.000 >= 0.05): the ensemble is served"
    )


@pytest.mark.parametrize(
    "b,c,source",
    [
        (5, 0, "ensemble"),  # p = 2/32 = .0625
        (6, 0, "member 1"),  # p = 2/64 = .03125
        (8, 1, "member 1"),  # p = 2 * (1 + 9) / 512 = .0391, just under .05
        (9, 2, "ensemble"),  # p = 2 * (1 + 11 + 55) / 2048 = .0654
    ],
)
def test_choose_final_serves_a_member_only_below_alpha(b, c, source):
    """20 videos. Member 0 (sure, .9) misses videos 0..b-1, member 1 (unsure, .6) misses the next c: the
    ensemble follows member 0 (.9 against .6), so member 1 alone is right on b videos and wrong on c.
    Member 1 scores higher (.9 against .8) in every case; only the test decides."""
    y = np.array(Y20)
    m0, m1 = onehot(flip(Y20, range(b)), 2, 0.9), onehot(flip(Y20, range(b, b + c)), 2, 0.6)
    probs = outputs([{"val": {"original": p, "reverse": p, "labels": y}} for p in (m0, m1)])
    members = [row(0, {"accuracy": 0.7}, {}, False), row(1, {"accuracy": 0.9}, {}, False)]
    choice = choose_final(
        probs, members, ens_view({"accuracy": 0.8}, {}, False), [], Policy("val_acc", "auto", REV)
    )
    assert choice.source == source and (choice.mcnemar["b"], choice.mcnemar["c"]) == (b, c)


# ---------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    "b,c,p",
    [
        (0, 6, 2 / 64),  # 2 * C(6,0) / 2^6 = .03125
        (1, 5, 2 * (1 + 6) / 64),  # 2 * (C(6,0) + C(6,1)) / 2^6 = .21875
        (0, 5, 2 / 32),  # .0625: five videos to none is not enough at .05
        (8, 0, 2 / 256),  # .0078
        (2, 12, 2 * (1 + 14 + 91) / 2**14),  # 2 * (C(14,0) + C(14,1) + C(14,2)) / 2^14 = .01294
        (3, 3, 1.0),  # 2 * (1 + 6 + 15 + 20) / 64 = 84/64, capped at 1
        (1, 1, 1.0),  # 2 * 3/4, capped
        (0, 0, 1.0),  # no discordant video: no evidence either way
    ],
)
def test_mcnemar_exact_by_hand(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)  # two-sided: symmetric


def test_mcnemar_rejects_negative_counts_and_alpha_is_005():
    with pytest.raises(ValueError, match="b=-1, c=2"):
        mcnemar_exact(-1, 2)
    assert MCNEMAR_ALPHA == 0.05


def test_discordant_counts_pair_each_video():
    """y = a b c a b. Member predicts a b a b b: right, right, wrong, wrong, right. Ensemble predicts
    a a c b a: right, wrong, right, wrong, wrong. b (only the member right) = videos 1, 4; c = video 2."""
    y = [0, 1, 2, 0, 1]
    assert discordant_counts(onehot([0, 1, 0, 1, 1]), onehot([0, 0, 2, 1, 0]), np.array(y)) == (2, 1)
    assert discordant_counts(onehot([0, 0, 2, 1, 0]), onehot([0, 1, 0, 1, 1]), y) == (1, 2)


def test_brief_mean_averages_the_headline_metrics():
    a = {"accuracy": 0.5, "f1_weighted": 0.4, "f1_macro": 0.3, "worst_class_f1": 0.0, "n": 10}
    b = {"accuracy": 1.0, "f1_weighted": 0.8, "f1_macro": 0.5, "worst_class_f1": 0.2, "n": 10}
    assert brief_mean([a, b]) == pytest.approx(
        {"accuracy": 0.75, "f1_weighted": 0.6, "f1_macro": 0.4, "worst_class_f1": 0.1}
    )
    assert brief(a) == {"accuracy": 0.5, "f1_weighted": 0.4, "f1_macro": 0.3, "worst_class_f1": 0.0}


def test_served_reads_the_tta_view_only_when_used():
    r = row(0, {"accuracy": 0.1}, {"accuracy": 0.2}, True)
    assert served(r) == {"accuracy": 0.2}
    r["tta_used"] = False
    assert served(r) == {"accuracy": 0.1}
    r["test"] = {"accuracy": 0.3}
    assert served(r, "test") == {"accuracy": 0.3}


def test_the_policy_refuses_outputs_without_labels():
    out = outputs([{"val": views([0, 1], [[0.9, 0.1], [0.2, 0.8]])}])
    assert member_rows(out, AB, Policy(tta="off", modes=REV))[0]["val"]["accuracy"] == 1.0
    unlabelled = {"val": Outputs(out["val"].logits, (0,), out["val"].views)}
    with pytest.raises(ValueError, match="the val outputs carry no labels"):
        member_rows(unlabelled, AB, Policy(tta="off", modes=REV))
