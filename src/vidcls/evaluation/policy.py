"""The ensemble policy: which members, TTA or not, ensemble or one member, made on validation data only.

The source system averaged every ensemble member, including collapsed ones, and always applied TTA.
Here a member far below the others is excluded (with the reason recorded), and TTA is used for a
member or the ensemble only when it improved that model's validation metric (``--tta auto``).
A single member replaces the ensemble only when it is better on validation by more than noise: a
higher score and a significant exact McNemar test on the paired per-video correctness.

Every step is a small function over metrics or the models' outputs, in the order ``combine`` runs them:
``member_rows`` -> ``collapsed_members`` -> ``ensemble_view`` -> ``choose_final`` -> ``final_predictions``.
The outputs come as ``{split: engine.forward.Outputs}``, each with the raw logits of every model
(indices ``0 .. M - 1``) on every view of ``views_to_predict(modes)`` and the split's labels. A model
or an ensemble predicts the mean over its members and views of the softmax (``Outputs.probs``; of the
sigmoids for a multi-label run): "without TTA" is always the ``original`` view, "with TTA" exactly the
listed modes. A multi-label run's metrics, collapse rule, McNemar correctness and decision thresholds
are defined in :mod:`vidcls.evaluation.multilabel_policy`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..config import MULTILABEL, TTA_MODES
from ..engine.forward import Outputs
from ..run.final import FinalChoice
from . import multilabel_policy as ml
from .multilabel import choose_thresholds

COLLAPSE_MARGIN = 0.10  # a member this far below the members' median validation score is excluded
BRIEF = ("accuracy", "f1_weighted", "f1_macro", "worst_class_f1")
MCNEMAR_ALPHA = 0.05  # a member must beat the ensemble at this significance level to be served alone


@dataclass(frozen=True)
class Policy:
    """How the choices are made: ``select`` (val_acc | val_f1_macro; multi-label: val_map | val_gap),
    ``tta`` (auto | on | off), the TTA ``modes`` averaged "with TTA", and for a multi-label run the
    rule of its decision ``thresholds`` (per_class | global | fixed) and the ``threshold`` of "fixed"."""

    select: str = "val_acc"
    tta: str = "auto"
    modes: tuple = TTA_MODES
    thresholds: str = "per_class"
    threshold: float = 0.5


def score(metrics: dict, select: str) -> float:
    """The validation number a choice is made on: accuracy (val_acc) or macro F1 (val_f1_macro);
    for multi-label metrics mAP (val_map: ``map_macro``) or GAP@20 (val_gap: ``gap_at_20``). "auto"
    reads accuracy, or mAP from multi-label metrics."""
    if select == "auto":
        select = "val_map" if ml.is_multilabel_metrics(metrics) else "val_acc"
    return metrics[ml.SELECT_KEYS[select]]


def _below_median(member_score: float, median: float, select: str, margin: float) -> str | None:
    if member_score < median - margin:
        return (
            f"validation {select} {member_score:.3f} is more than {margin:.2f} below the members' "
            f"median {median:.3f}"
        )
    return None


def collapse_reason(
    cm: np.ndarray, member_score: float, median: float, select: str, margin: float = COLLAPSE_MARGIN
) -> str | None:
    """Why a member with validation confusion matrix ``cm`` (rows: true class) should be left out of
    the ensemble, or None to keep it: one class predicted for every video (of a split holding several
    classes), balanced accuracy (mean recall) at chance (<= 1/C), or a score more than ``margin`` below
    the members' ``median``."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    # exact fractions: a member exactly at chance (recalls .4, .3, .3 of 1/3) must not be saved by rounding
    recalls = [Fraction(int(cm[c, c]), int(support[c])) for c in range(len(cm)) if support[c] > 0]
    balanced = sum(recalls) / len(recalls)
    if len(recalls) > 1 and np.count_nonzero(cm.sum(axis=0)) == 1:
        return f"predicts a single class for all {int(cm.sum())} validation videos"
    if balanced <= Fraction(1, len(cm)):
        return f"validation balanced accuracy {float(balanced):.3f} is at chance (1/{len(cm)})"
    return _below_median(member_score, median, select, margin)


def collapsed_members(
    val_metrics: list[dict],
    select: str,
    margin: float = COLLAPSE_MARGIN,
    *,
    degenerate: Sequence[str | None] | None = None,
) -> list[dict]:
    """Members to leave out of the ensemble, each ``{"member": i, "reason": ...}`` (see
    ``collapse_reason``). The best member (the first, on a tie) always stays in.

    ``degenerate``: for multi-label members (whose metrics hold no confusion matrix), per member the
    reason ``multilabel_policy.degenerate_reason`` gives (None: not degenerate); the margin rule then
    applies as for single-label members.
    """
    scores = [score(m, select) for m in val_metrics]
    median, best = float(np.median(scores)), int(np.argmax(scores))
    out = []
    for i, m in enumerate(val_metrics):
        if degenerate is None:
            reason = collapse_reason(m["confusion_matrix"], scores[i], median, select, margin)
        else:
            reason = degenerate[i] or _below_median(scores[i], median, select, margin)
        if i != best and reason is not None:
            out.append({"member": i, "reason": reason})
    return out


def decide_tta(val_off: dict, val_on: dict, select: str, tta: str) -> bool:
    """Whether to use TTA: ``on``/``off`` as asked; ``auto`` only if it improved the validation score
    (a tie keeps the cheaper original view)."""
    if tta in ("on", "off"):
        return tta == "on"
    return score(val_on, select) > score(val_off, select)


def view_names(modes: Sequence[str], tta_used: bool) -> tuple:
    """The views a model is seen through: exactly ``modes`` with TTA, else the original sequence."""
    return tuple(modes) if tta_used else ("original",)


def ensemble_probs(
    outputs: dict[str, Outputs], members: list, split: str, modes: Sequence[str], tta_used: bool
) -> np.ndarray:
    """Mean softmax (N, C) over ``members`` (model indices) on ``split``, every member seen the same
    way: the mean over them and over their views (``view_names``)."""
    return outputs[split].select(members=members, views=view_names(modes, tta_used)).probs()


def view_probs(
    outputs: dict[str, Outputs], member: int, split: str, modes: Sequence[str], tta_used: bool
) -> np.ndarray:
    """One member's (N, C) prediction on ``split``: the mean over ``modes`` with TTA, else the original sequence."""
    return ensemble_probs(outputs, [member], split, modes, tta_used)


def labels_of(outputs: dict[str, Outputs], split: str) -> np.ndarray:
    """The labels of ``split``: the policy only ever scores labelled outputs."""
    labels = outputs[split].labels
    if labels is None:
        raise ValueError(f"the {split} outputs carry no labels; the policy scores labelled splits only")
    return labels


def _metrics(
    outputs: dict[str, Outputs],
    split: str,
    probs: np.ndarray,
    names: list,
    thresholds: np.ndarray | float = ml.POLICY_THRESHOLD,
) -> dict:
    """``probs`` scored on ``split``, multi-label outputs at ``thresholds`` (``ml.split_metrics``)."""
    return ml.split_metrics(labels_of(outputs, split), probs, names, outputs[split].task, thresholds)


def member_rows(outputs: dict[str, Outputs], names: list, policy: Policy) -> list[dict]:
    """Per model: ``{"member": i, <split>: metrics without TTA, "<split>_tta": with TTA, ...,
    "tta_used": bool}`` for every split of ``outputs`` ("val" must be one)."""
    rows = []
    for i in outputs["val"].members:
        row: dict[str, Any] = {"member": i}
        for split in outputs:
            for suffix, tta_used in (("", False), ("_tta", True)):
                probs = view_probs(outputs, i, split, policy.modes, tta_used)
                row[split + suffix] = _metrics(outputs, split, probs, names)
        row["tta_used"] = decide_tta(row["val"], row["val_tta"], policy.select, policy.tta)
        rows.append(row)
    return rows


def ensemble_view(outputs: dict[str, Outputs], names: list, used: list, policy: Policy) -> dict:
    """The ensemble of ``used``: ``{"members_used", "without_tta": {split: metrics}, "with_tta": {...},
    "tta_used"}``; TTA is decided on its validation metrics."""
    view: dict[str, Any] = {"members_used": list(used)}
    for key, tta_used in (("without_tta", False), ("with_tta", True)):
        view[key] = {
            s: _metrics(outputs, s, ensemble_probs(outputs, used, s, policy.modes, tta_used), names)
            for s in outputs
        }
    view["tta_used"] = decide_tta(
        view["without_tta"]["val"], view["with_tta"]["val"], policy.select, policy.tta
    )
    return view


def served(row: dict, split: str = "val") -> dict:
    """A member's metrics on ``split`` as it would be served: with TTA if its TTA was chosen."""
    return row[f"{split}_tta" if row["tta_used"] else split]


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs: under "both models are
    equally good" each discordant video goes either way with probability 1/2, so
    ``p = min(1, 2 * P(X <= min(b, c)))`` for ``X ~ Binomial(b + c, 1/2)``; 1 when ``b + c == 0``."""
    if b < 0 or c < 0:
        raise ValueError(f"McNemar counts must be >= 0; got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    # exact integer tail: no float rounding at the 0.05 boundary
    tail = Fraction(sum(math.comb(n, k) for k in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def discordant_counts(member: np.ndarray, ensemble: np.ndarray, labels: np.ndarray | None) -> tuple[int, int]:
    """McNemar's ``(b, c)`` from two (N, C) predictions of the same videos: ``b`` videos only the
    member gets right (argmax == label; for (N, C) label sets hit@1, the argmax is one of the video's
    labels), ``c`` videos only the ensemble gets right."""
    labels = np.asarray(labels)
    member_ok = ml.correct_per_video(member, labels)
    ensemble_ok = ml.correct_per_video(ensemble, labels)
    return int(np.sum(member_ok & ~ensemble_ok)), int(np.sum(~member_ok & ensemble_ok))


def mcnemar_record(outputs: dict[str, Outputs], row: dict, ensemble: dict, policy: Policy) -> dict:
    """The test of member ``row`` against ``ensemble`` on validation, each as it would be served (its
    own TTA choice): ``{"member", "b", "c", "p_value", "alpha"}``."""
    mine = view_probs(outputs, row["member"], "val", policy.modes, row["tta_used"])
    theirs = ensemble_probs(outputs, ensemble["members_used"], "val", policy.modes, ensemble["tta_used"])
    b, c = discordant_counts(mine, theirs, outputs["val"].labels)
    return {"member": row["member"], "b": b, "c": c, "p_value": mcnemar_exact(b, c), "alpha": MCNEMAR_ALPHA}


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def choose_final(
    outputs: dict[str, Outputs], members: list[dict], ensemble: dict, excluded: list, policy: Policy
) -> FinalChoice:
    """The ensemble, unless its best member (an ensemble member, with its own TTA choice; the first of
    equals) is better on validation by more than noise: a strictly higher ``select`` score AND an
    exact McNemar test on the paired per-video correctness with ``p < MCNEMAR_ALPHA``. A tie, a
    higher but not significant score, or a one-member ensemble keeps the ensemble; an excluded
    (collapsed) member is never served alone.

    Args:
        outputs: the models' outputs (as for ``combine``); members: ``member_rows``;
        ensemble: ``ensemble_view``; excluded: ``collapsed_members``.
    """
    used = list(ensemble["members_used"])
    ens_score = score(ensemble["with_tta" if ensemble["tta_used"] else "without_tta"]["val"], policy.select)
    record = {
        "tta_modes": list(policy.modes),
        "select": policy.select,
        "tta": policy.tta,
        "ensemble_members": list(used),
        "ensemble_tta_used": ensemble["tta_used"],
        "member_tta_used": [m["tta_used"] for m in members],
        "excluded": list(excluded),
        "task": outputs["val"].task,
    }
    keep = {"source": "ensemble", "members": used, "tta_used": ensemble["tta_used"], "val_score": ens_score}
    if len(used) == 1:  # the ensemble of one is that member, as it would be served alone
        return FinalChoice(
            **keep, reason=f"the ensemble has a single member ({used[0]}): it is served", **record
        )
    best = max((m for m in members if m["member"] in used), key=lambda m: score(served(m), policy.select))
    i, best_score = best["member"], score(served(best), policy.select)
    test = mcnemar_record(outputs, best, ensemble, policy)
    stats = f"McNemar b={test['b']}, c={test['c']}, p={_p(test['p_value'])}"
    scores = f"({policy.select} {best_score:.4f} vs {ens_score:.4f})"
    if best_score <= ens_score:
        reason = (
            f"the ensemble of members {used} scored {policy.select} {ens_score:.4f} on validation, no "
            f"lower than the best single member (member {i}, {best_score:.4f}; {stats})"
        )
    elif test["p_value"] >= MCNEMAR_ALPHA:  # one or two videos either way on a small split is noise
        reason = (
            f"member {i} scored higher on validation {scores} but not significantly ({stats} >= "
            f"{MCNEMAR_ALPHA:g}): the ensemble is served"
        )
    else:
        return FinalChoice(
            source=f"member {i}",
            members=[i],
            tta_used=best["tta_used"],
            val_score=best_score,
            reason=f"member {i} scored higher on validation {scores} and significantly "
            f"({stats} < {MCNEMAR_ALPHA:g}): member {i} alone is served",
            mcnemar=test,
            **record,
        )
    return FinalChoice(**keep, reason=reason, mcnemar=test, **record)


def with_thresholds(outputs: dict[str, Outputs], choice: FinalChoice, policy: Policy) -> FinalChoice:
    """``choice`` with a multi-label run's decision thresholds, chosen on validation
    (``multilabel.choose_thresholds`` of the val label sets and the choice's val probabilities at T = 1,
    rule ``policy.thresholds``); a single-label ``choice`` as it is."""
    if outputs["val"].task != MULTILABEL:
        return choice
    probs = ensemble_probs(outputs, choice.members, "val", choice.tta_modes, choice.tta_used)
    chosen = choose_thresholds(
        labels_of(outputs, "val"), probs, rule=policy.thresholds, fixed=policy.threshold
    )
    return dataclasses.replace(choice, task=MULTILABEL, thresholds=chosen)


def final_predictions(outputs: dict[str, Outputs], choice: FinalChoice) -> dict:
    """``{split: (N, C)}``: what ``choice`` predicts on every split of ``outputs``."""
    return {s: ensemble_probs(outputs, choice.members, s, choice.tta_modes, choice.tta_used) for s in outputs}


def score_choice(outputs: dict[str, Outputs], choice: FinalChoice, names: list) -> tuple[dict, dict]:
    """``choice`` scored on every split: ``({split: probs (N, C)}, {"source", "tta_used", "reason",
    <split>: metrics, ...})``; a multi-label choice at its recorded thresholds."""
    predictions = final_predictions(outputs, choice)
    thresholds = ml.decision_thresholds(choice.thresholds)
    final = {
        "source": choice.source,
        "tta_used": choice.tta_used,
        "reason": choice.reason,
        **{s: _metrics(outputs, s, p, names, thresholds) for s, p in predictions.items()},
    }
    return predictions, final


def combine(outputs: dict[str, Outputs], names: list, policy: Policy = Policy()) -> dict:
    """Every member with and without TTA, the ensemble, and the choices, from the models' outputs.

    Args:
        outputs: ``{split: Outputs}`` of every model ``0 .. M - 1`` in order, each on ``original`` and
            every mode of ``policy.modes``, with the split's labels; "val" must be one of the splits.
    Returns:
        ``{"members": [...], "ensemble": {...}, "tta": {...}, "final": {...}, "choice": FinalChoice,
        "predictions": {split: probs}}``. ``final`` is what the run serves (``choose_final``).
    """
    members = member_rows(outputs, names, policy)
    excluded = _excluded(outputs, members, names, policy)
    out = {e["member"] for e in excluded}
    used = [m["member"] for m in members if m["member"] not in out]
    ens = ensemble_view(outputs, names, used, policy)
    choice = with_thresholds(outputs, choose_final(outputs, members, ens, excluded, policy), policy)
    predictions, final = score_choice(outputs, choice, names)
    splits = list(outputs)
    chosen = ens["with_tta" if ens["tta_used"] else "without_tta"]
    per_mode = {
        mode: {
            s: brief(_metrics(outputs, s, ensemble_probs(outputs, used, s, (mode,), True), names))
            for s in splits
        }
        for mode in policy.modes
    }
    return {
        "members": members,
        "ensemble": {
            "members_used": used,
            "excluded": excluded,
            "tta_used": ens["tta_used"],
            **chosen,
            "without_tta": {s: brief(ens["without_tta"][s]) for s in splits},
            "with_tta": {s: brief(ens["with_tta"][s]) for s in splits},
        },
        "tta": {
            "mode": policy.tta,
            "modes": list(policy.modes),
            "used": ens["tta_used"],
            "per_mode": per_mode,
            **ens["with_tta"],
        },
        "final": final,
        "choice": choice,
        "predictions": predictions,
    }


def _excluded(outputs: dict[str, Outputs], members: list[dict], names: list, policy: Policy) -> list[dict]:
    """``collapsed_members`` of the member rows; a multi-label member's degenerate reason is read from
    its validation probabilities without TTA (as a single-label member's confusion matrix is)."""
    degenerate = None
    if outputs["val"].task == MULTILABEL:
        targets = labels_of(outputs, "val")
        degenerate = [
            ml.degenerate_reason(
                targets, view_probs(outputs, m["member"], "val", policy.modes, False), m["val"], names
            )
            for m in members
        ]
    return collapsed_members([m["val"] for m in members], policy.select, degenerate=degenerate)


def _brief_keys(m: dict) -> tuple:
    return ml.BRIEF if ml.is_multilabel_metrics(m) else BRIEF


def brief(m: dict) -> dict:
    """The headline metrics of a full metrics dict (``BRIEF``; ``multilabel_policy.BRIEF`` for
    multi-label metrics)."""
    return {k: m[k] for k in _brief_keys(m)}


def brief_mean(metrics: list[dict]) -> dict:
    """Mean over members of the headline metrics."""
    keys = _brief_keys(metrics[0]) if metrics else BRIEF
    return {k: float(np.mean([m[k] for m in metrics])) for k in keys}
