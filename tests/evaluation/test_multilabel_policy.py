"""The ensemble policy on multi-label outputs (one sigmoid per class), on hand-made logits whose outcome
is known: the scores choices are made on, the collapse rule, hit@1 McNemar, TTA, the decision thresholds
chosen after the final choice, and the final.json / eval record fields they produce."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidcls.engine.forward import Outputs
from vidcls.errors import ConfigError
from vidcls.evaluation.multilabel_policy import (
    chance_map,
    correct_per_video,
    degenerate_reason,
    label_set_predictions,
)
from vidcls.evaluation.policy import (
    Policy,
    brief,
    brief_mean,
    collapsed_members,
    combine,
    discordant_counts,
    score,
)
from vidcls.run.final import FinalChoice, load_final_choice, write_final_choice

NAMES = ["outdoor", "dog", "music"]
# six validation videos, every class on half of them (prevalence 0.5 each)
TARGETS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]])
GOOD = 4.0 * (2 * TARGETS - 1)  # logit +4 on every label of a video, -4 elsewhere: sigmoid 0.982 / 0.018


def outputs(member_logits: list[np.ndarray], targets: np.ndarray = TARGETS, views=("original",)) -> Outputs:
    """Multi-label Outputs of members given as (N, C) logits (one view) or (N, V, C) (several)."""
    z = np.stack([m if m.ndim == 3 else m[:, None, :] for m in member_logits], axis=1)
    return Outputs(
        z, tuple(range(len(member_logits))), tuple(views), targets.astype(np.int64), task="multilabel"
    )


OFF = Policy(select="val_map", tta="off", modes=("original",))


def test_score_reads_map_and_gap_and_still_accuracy_and_macro_f1():
    ml = {"map_macro": 0.7, "gap_at_20": 0.6}
    assert score(ml, "val_map") == 0.7 and score(ml, "val_gap") == 0.6 and score(ml, "auto") == 0.7
    single = {"accuracy": 0.8, "f1_macro": 0.5}
    assert score(single, "val_acc") == 0.8 and score(single, "val_f1_macro") == 0.5
    assert score(single, "auto") == 0.8


def test_brief_of_multilabel_metrics_is_map_gap_micro_f1_and_exact_set():
    m = {"map_macro": 0.9, "gap_at_20": 0.8, "f1_micro": 0.7, "exact_set_accuracy": 0.5, "f1_macro": 0.1}
    assert brief(m) == {"map_macro": 0.9, "gap_at_20": 0.8, "f1_micro": 0.7, "exact_set_accuracy": 0.5}
    other = {**m, "map_macro": 0.7}
    assert brief_mean([m, other])["map_macro"] == pytest.approx(0.8)


def test_chance_map_is_the_mean_prevalence_of_the_classes_present():
    t = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
    # class 3 has no positive: left out; prevalences 3/4, 1/4, 1/4
    assert chance_map(t) == pytest.approx((0.75 + 0.25 + 0.25) / 3)
    assert chance_map(np.zeros((3, 2))) == 0.0


def test_a_member_predicting_one_set_for_every_video_is_degenerate():
    probs = np.tile([0.9, 0.2, 0.7], (6, 1))  # {outdoor, music} for all six videos
    reason = degenerate_reason(TARGETS, probs, {"map_macro": 0.5}, NAMES)
    assert reason == "predicts the label set {outdoor, music} for all 6 validation videos (at threshold 0.5)"
    nothing = degenerate_reason(TARGETS, np.full((6, 3), 0.1), {"map_macro": 0.9}, NAMES)
    assert nothing == "predicts no label for all 6 validation videos (at threshold 0.5)"
    # a split holding a single distinct set: one predicted set for all is then no sign of collapse
    same = np.tile([1, 0, 1], (6, 1))
    assert degenerate_reason(same, np.tile([0.9, 0.1, 0.9], (6, 1)), {"map_macro": 1.0}, NAMES) is None


def test_a_member_at_chance_map_is_degenerate_and_a_good_one_is_not():
    inverted = 1 / (1 + np.exp(GOOD))  # every label scored below every non-label
    # each class: its 3 positives ranked 4th, 5th, 6th: AP = (1/4 + 2/5 + 3/6) / 3
    ap = (1 / 4 + 2 / 5 + 3 / 6) / 3
    reason = degenerate_reason(TARGETS, inverted, {"map_macro": ap}, NAMES)
    assert reason == f"validation mAP {ap:.3f} is at chance (the mean prevalence of its classes, 0.500)"
    good = 1 / (1 + np.exp(-GOOD))
    assert degenerate_reason(TARGETS, good, {"map_macro": 1.0}, NAMES) is None


def test_collapsed_multilabel_members_by_reason_or_margin_and_the_best_stays():
    val = [{"map_macro": s, "gap_at_20": s} for s in (0.90, 0.85, 0.70, 0.88)]
    out = collapsed_members(val, "val_map", degenerate=[None, "predicts no label", None, None])
    assert out == [
        {"member": 1, "reason": "predicts no label"},
        {
            "member": 2,
            "reason": "validation val_map 0.700 is more than 0.10 below the members' median 0.865",
        },
    ]
    # the best member is never left out, degenerate or not
    assert collapsed_members(val, "val_map", degenerate=["x", None, None, None])[0]["member"] == 2


def test_mcnemar_pairs_hit_at_1_of_label_sets():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    member = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.6], [0.1, 0.7]])  # top: 0, 0, 1, 1 -> ok, no, ok, ok
    ensemble = np.array([[0.1, 0.9], [0.3, 0.8], [0.6, 0.2], [0.7, 0.1]])  # top: 1, 1, 0, 0 -> no, ok, ok, no
    assert correct_per_video(member, labels).tolist() == [True, False, True, True]
    assert discordant_counts(member, ensemble, labels) == (2, 1)
    # ties go to the lowest class index, as hit_at_1 has them
    assert correct_per_video(np.array([[0.5, 0.5]]), np.array([[0, 1]])).tolist() == [False]


def test_combine_leaves_out_a_collapsed_member_and_chooses_thresholds_on_validation():
    constant = np.tile([3.0, -3.0, -3.0], (6, 1))  # {outdoor} for every video
    out = {"val": outputs([GOOD, GOOD * 0.5, constant]), "test": outputs([GOOD, GOOD * 0.5, constant])}
    res = combine(out, NAMES, OFF)
    assert res["ensemble"]["excluded"] == [
        {
            "member": 2,
            "reason": "predicts the label set {outdoor} for all 6 validation videos (at threshold 0.5)",
        }
    ]
    choice = res["choice"]
    assert choice.source == "ensemble" and choice.members == [0, 1] and choice.task == "multilabel"
    # perfectly separated: F1 is 1 at every grid threshold, the tie goes to 0.5; shrinking keeps it
    assert choice.thresholds == {
        "rule": "per_class",
        "global": 0.5,
        "per_class": [0.5, 0.5, 0.5],
        "support": [3, 3, 3],
    }
    assert res["final"]["val"]["map_macro"] == 1.0 and res["final"]["test"]["exact_set_accuracy"] == 1.0
    assert set(res["ensemble"]["with_tta"]["val"]) == {
        "map_macro",
        "gap_at_20",
        "f1_micro",
        "exact_set_accuracy",
    }
    assert choice.to_dict()["task"] == "multilabel"


def test_final_metrics_use_the_recorded_thresholds_and_member_rows_use_one_half():
    out = {"val": outputs([GOOD])}
    res = combine(
        out,
        NAMES,
        Policy(select="val_map", tta="off", modes=("original",), thresholds="fixed", threshold=0.99),
    )
    assert res["choice"].thresholds["per_class"] == [0.99, 0.99, 0.99]
    # every probability is 0.982: nothing reaches 0.99, everything reaches 0.5
    assert res["final"]["val"]["f1_micro"] == 0.0 and res["final"]["val"]["exact_set_accuracy"] == 0.0
    assert res["members"][0]["val"]["f1_micro"] == 1.0
    assert res["final"]["val"]["map_macro"] == 1.0  # threshold-free


def test_global_rule_takes_the_best_micro_f1_threshold():
    p_pos, p_neg = 0.32, 0.12  # grid 0.15 .. 0.30 separate them; of those, 0.30 is closest to 0.5
    logits = np.where(TARGETS == 1, np.log(p_pos / (1 - p_pos)), np.log(p_neg / (1 - p_neg)))
    res = combine({"val": outputs([logits])}, NAMES, Policy("val_map", "off", ("original",), "global"))
    th = res["choice"].thresholds
    assert th["rule"] == "global" and th["global"] == pytest.approx(0.30)
    assert th["per_class"] == pytest.approx([0.30] * 3)
    assert res["final"]["val"]["exact_set_accuracy"] == 1.0


def test_tta_auto_is_decided_on_the_select_score_of_sigmoid_outputs():
    noisy = GOOD.copy()
    noisy[0] = -GOOD[0]  # video 0 upside down in the original view: mAP < 1
    z = np.stack([noisy, GOOD], axis=1)  # (N, V=2, C): original, reverse
    out = {"val": outputs([z], views=("original", "reverse"))}
    res = combine(out, NAMES, Policy("val_map", "auto", ("reverse",)))
    row = res["members"][0]
    assert row["val"]["map_macro"] < 1.0 and row["val_tta"]["map_macro"] == 1.0
    assert row["tta_used"] and res["choice"].tta_used
    assert res["final"]["val"]["map_macro"] == 1.0


def test_label_set_predictions_of_the_eval_record():
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.2]])
    targets = np.array([[1, 0, 1], [0, 1, 0]])
    th = {"per_class": [0.5, 0.5, 0.7]}
    got = label_set_predictions(["a", "b"], NAMES, targets, probs, th)
    assert got == [
        {
            "video_id": "a",
            "label": "outdoor|music",
            "pred": "outdoor",
            "confidence": 0.9,
            "correct": False,
            "hit_at_1": True,
        },
        {"video_id": "b", "label": "dog", "pred": "", "confidence": 0.3, "correct": False, "hit_at_1": True},
    ]


def _choice(**kw) -> FinalChoice:
    base = dict(
        source="ensemble",
        members=[0, 1],
        tta_used=False,
        tta_modes=["reverse"],
        select="val_map",
        reason="r",
        val_score=0.9,
    )
    return FinalChoice(**{**base, **kw})


def test_final_json_records_task_and_thresholds_and_old_ones_still_load(tmp_path):
    th = {"rule": "per_class", "global": 0.4, "per_class": [0.3, 0.45, 0.5], "support": [3, 1, 2]}
    write_final_choice(tmp_path, _choice(task="multilabel", thresholds=th))
    data = json.loads((tmp_path / "final.json").read_text())
    assert data["task"] == "multilabel" and data["thresholds"] == th
    assert load_final_choice(tmp_path) == _choice(task="multilabel", thresholds=th)
    # a single-label choice writes neither field: its final.json is what it always was
    write_final_choice(tmp_path, _choice(select="val_acc"))
    data = json.loads((tmp_path / "final.json").read_text())
    assert "task" not in data and "thresholds" not in data
    assert load_final_choice(tmp_path).task == "single"


@pytest.mark.parametrize(
    "bad",
    [
        {"task": "multi"},
        {"task": "single", "thresholds": {"per_class": [0.5]}},
        {"task": "multilabel", "thresholds": {"per_class": [0.5, 1.0]}},
        {"task": "multilabel", "thresholds": {"per_class": "0.5"}},
        {"task": "multilabel", "thresholds": [0.5]},
    ],
    ids=["unknown-task", "single-with-thresholds", "threshold-1", "not-a-list", "not-a-dict"],
)
def test_a_final_json_with_a_bad_task_or_thresholds_is_refused(tmp_path, bad):
    (tmp_path / "config.yaml").write_text("{}")
    write_final_choice(tmp_path, _choice())
    data = {**json.loads((tmp_path / "final.json").read_text()), **bad}
    (tmp_path / "final.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="task or thresholds"):
        load_final_choice(tmp_path)
