"""The ensemble policy's multi-label pieces (:mod:`vidcls.evaluation.policy` runs them).

A multi-label run (``Outputs.task`` "multilabel") serves one sigmoid per class; a member, a TTA view
or the ensemble predicts the mean over its members and views of the sigmoids (``Outputs.probs``).
Its choices are made as for a single-label run, with these definitions:

* Metrics: ``multilabel.multilabel_metrics`` wherever a single-label run has
  ``metrics.classification_metrics``. Members, ensembles and TTA views are compared at threshold
  ``POLICY_THRESHOLD`` (0.5, as in training's validation rows); the scores the choices are made on
  (``val_map``: ``map_macro``, ``val_gap``: ``gap_at_20``) do not depend on a threshold. The headline
  metrics (``BRIEF``) are mAP, GAP@20, micro F1 and exact-set accuracy.
* Collapse: a member is left out when it predicts the same label set (at 0.5) for every validation
  video of a split holding several distinct sets, or its validation mAP is at chance (no more than
  the mean prevalence of the classes present, the expected AP of random scores), or (as for
  single-label) its score is more than ``policy.COLLAPSE_MARGIN`` below the members' median.
* McNemar: the per-video correctness paired between a member and the ensemble is hit@1 (the
  top-scored class, the lowest index among ties, is one of the video's labels): threshold-free and
  defined for every video.
* Thresholds: once the final choice is made, ``multilabel.choose_thresholds`` on the validation label
  sets and the choice's validation probabilities at T = 1 (rule ``--thresholds``, ``--threshold`` for
  "fixed"); recorded in ``FinalChoice.thresholds`` and used for the final val/test metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import MULTILABEL
from ..store.labels import LABEL_SEP
from .metrics import classification_metrics
from .multilabel import multilabel_metrics

POLICY_THRESHOLD = 0.5  # the threshold members and ensembles are compared at, before the run's own
BRIEF = ("map_macro", "gap_at_20", "f1_micro", "exact_set_accuracy")
# the metric each --select value reads from a metrics dict
SELECT_KEYS = {
    "val_acc": "accuracy",
    "val_f1_macro": "f1_macro",
    "val_map": "map_macro",
    "val_gap": "gap_at_20",
}
SHOWN_LABELS = 5  # labels of a collapsed member's one predicted set named in its reason


def split_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    names: list,
    task: str,
    thresholds: np.ndarray | float = POLICY_THRESHOLD,
) -> dict:
    """The metrics of ``probs`` (N, C) on a split with ``labels``: ``classification_metrics`` for
    ``task`` "single" (``thresholds`` unused), ``multilabel_metrics`` at ``thresholds`` for "multilabel"."""
    if task == MULTILABEL:
        return multilabel_metrics(labels, probs, thresholds, names)
    return classification_metrics(labels, probs, names)


def is_multilabel_metrics(metrics: dict) -> bool:
    """Whether a metrics dict is ``multilabel_metrics``'s (it has ``map_macro``)."""
    return "map_macro" in metrics


def correct_per_video(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: per video, whether its top-scored class (the lowest index among ties) is right:
    its class (``labels`` (N,) class indices) or one of its labels (``labels`` (N, C) 0/1: hit@1)."""
    top = np.asarray(probs).argmax(axis=1)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels[np.arange(len(top)), top].astype(bool)
    return top == labels


def chance_map(targets: np.ndarray) -> float:
    """The mAP of random scores: the mean prevalence (share of videos carrying it) of the classes with
    a positive video; 0.0 when no class has one."""
    t = np.asarray(targets, dtype=bool)
    present = t.any(axis=0)
    return float(t[:, present].mean(axis=0).mean()) if present.any() else 0.0


def degenerate_reason(
    targets: np.ndarray, probs: np.ndarray, metrics: dict, names: Sequence[str]
) -> str | None:
    """Why a multi-label member is degenerate on validation, or None: it predicts the same label set
    at 0.5 for every video of a split holding several distinct sets, or its mAP (``metrics``, its
    validation ``multilabel_metrics``) is at chance (``chance_map``; never when that is 1, every class
    present on every video).

    Args:
        targets: (N, C) 0/1 validation label sets; probs: the member's (N, C) validation probabilities.
    """
    t = np.asarray(targets, dtype=bool)
    sets = np.asarray(probs) >= POLICY_THRESHOLD
    n = len(t)
    if n and len(np.unique(t, axis=0)) > 1 and (sets == sets[0]).all():
        shown = [str(names[int(c)]) for c in np.flatnonzero(sets[0])]
        what = "no label" if not shown else "the label set {" + ", ".join(shown[:SHOWN_LABELS])
        if shown:
            what += f", ... ({len(shown)} labels)}}" if len(shown) > SHOWN_LABELS else "}"
        return f"predicts {what} for all {n} validation videos (at threshold {POLICY_THRESHOLD:g})"
    chance = chance_map(t)
    if (
        chance < 1.0 and metrics["map_macro"] <= chance
    ):  # 1: every class on every video, any ranking is perfect
        return (
            f"validation mAP {metrics['map_macro']:.3f} is at chance (the mean prevalence of its classes, "
            f"{chance:.3f})"
        )
    return None


def decision_thresholds(thresholds: dict) -> np.ndarray | float:
    """The per-class thresholds of a ``choose_thresholds`` record as a (C,) array; ``POLICY_THRESHOLD``
    when there is none."""
    per_class = (thresholds or {}).get("per_class")
    return np.asarray(per_class, dtype=np.float64) if per_class else POLICY_THRESHOLD


def label_set_predictions(
    video_ids: Sequence[str], names: Sequence[str], targets: np.ndarray, probs: np.ndarray, thresholds: dict
) -> list[dict]:
    """``eval_<split>.json``'s ``predictions`` of a multi-label choice: per video ``{"video_id",
    "label": "a|b" (its true set), "pred": "a|c" (the set at ``thresholds``, "" when empty),
    "confidence" (the largest probability), "correct" (the two sets are equal), "hit_at_1"}``."""
    t = np.asarray(targets, dtype=bool)
    sets = np.asarray(probs) >= decision_thresholds(thresholds)
    hit = correct_per_video(probs, t)

    def joined(row: np.ndarray) -> str:
        return LABEL_SEP.join(str(names[int(c)]) for c in np.flatnonzero(row))

    return [
        {
            "video_id": vid,
            "label": joined(y),
            "pred": joined(p),
            "confidence": float(pr.max()),
            "correct": bool((y == p).all()),
            "hit_at_1": bool(h),
        }
        for vid, y, p, pr, h in zip(video_ids, t, sets, probs, hit)
    ]


def headline(m: dict) -> str:
    """The headline numbers of a metrics dict in words: accuracy and macro F1, or for multi-label
    metrics mAP, GAP@20 and micro F1."""
    if is_multilabel_metrics(m):
        return f"mAP {m['map_macro']:.3f}, GAP@20 {m['gap_at_20']:.3f}, micro F1 {m['f1_micro']:.3f}"
    return f"acc {m['accuracy']:.3f}, macro F1 {m['f1_macro']:.3f}"
