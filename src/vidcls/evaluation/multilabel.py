"""Multi-label metrics (YouTube-8M's GAP@20, mAP, F1, hit@1, exact-set accuracy) and the decision thresholds.

Pure numpy, vectorised for 10,000 classes x a few thousand videos. Every function takes ``targets``,
an (N, C) 0/1 matrix (int or bool: video ``i`` carries class ``c`` when ``targets[i, c]`` is 1), and
``scores``, an (N, C) matrix of probabilities in [0, 1] (sigmoid outputs, averaged over an ensemble).

Ties: every average precision here is the non-interpolated one of
``sklearn.metrics.average_precision_score``, where scores that tie are one threshold (the precision of
a tied group is the one at its end, whatever the order inside it). YouTube-8M's starter code shuffles
tied pairs at random instead; without ties both agree exactly, and this one does not depend on chance.

Thresholds (``choose_thresholds``) are chosen on the validation split only: a grid threshold per class
that maximises the class's F1, shrunk toward the one global threshold by the class's support, so that
a class seen in two validation videos does not get a threshold that flips with one video.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

GRID = np.arange(1, 20) / 20  # 0.05, 0.10, ..., 0.95: the candidate thresholds
# the grid in order of preference when F1 ties: closest to 0.5 first, then the lower of two as close
_PREFERENCE = np.array(sorted(range(len(GRID)), key=lambda j: (abs(j + 1 - 10), j)))
RULES = ("fixed", "global", "per_class")
COOCCURRENCE_CLASSES = 20
_CHUNK = 250_000  # matrix entries per step of per_class_ap: bounds its temporary memory


def _as_bool(x: np.ndarray, what: str) -> np.ndarray:
    """A 0/1 (or bool) matrix as bool; ValueError on any other value."""
    x = np.asarray(x)
    if x.dtype != np.bool_:
        if not np.isin(x, (0, 1)).all():
            raise ValueError(f"{what} must hold 0 or 1 only (1: the video carries the class)")
        x = x.astype(bool)
    return x


def _check(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``targets`` as bool and ``scores`` as float64, both (N, C); ValueError on a bad shape or value."""
    t, s = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    if t.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"targets {t.shape} and scores {s.shape} must be (N, C) matrices of the same shape")
    if s.size and not (s.min() >= 0.0 and s.max() <= 1.0):  # a NaN fails both
        raise ValueError("scores must be probabilities in [0, 1] (no NaN), e.g. sigmoid outputs")
    return _as_bool(t, "targets"), s


def _check_sets(targets: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted label sets, both (N, C) bool; ValueError on a bad shape or value."""
    t, p = _as_bool(targets, "targets"), _as_bool(predicted, "predicted")
    if t.ndim != 2 or t.shape != p.shape:
        raise ValueError(
            f"targets {t.shape} and predicted {p.shape} must be (N, C) matrices of the same shape"
        )
    return t, p


def _keys(scores: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """Sort keys that carry the truths: ascending keys rank the scores descending.

    A float in [0, 2) has non-negative int64 bits below 2**62 that order as the floats do, so ``bits
    * 2 + truth`` fits and sorts by score; ``~`` (``-x - 1``) reverses the order. ``+ 0.0`` turns -0.0
    into 0.0 (the two tie).
    """
    keys = (scores + 0.0).view(np.int64) << 1
    keys |= truths
    return np.invert(keys, out=keys)


def _ap_rows(keys: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """Average precision of each row of ``keys`` (R, M) (from ``_keys``; sorted here, in place), ranked
    by score descending with tied scores one threshold, divided by ``n_pos`` (R,) (nan where 0).

    The sum over the distinct thresholds (each tied group's end) ``i`` of ``(tp[i] - tp[previous
    end]) * tp[i] / (i + 1)``: recall gained times precision.
    """
    keys.sort(axis=1)
    truth = (keys & 1) ^ 1
    tp = np.cumsum(truth, axis=1)
    score = keys >> 1
    ends = np.ones(keys.shape, dtype=bool)
    np.not_equal(score[:, :-1], score[:, 1:], out=ends[:, :-1])
    tp_at_ends = np.maximum.accumulate(np.where(ends, tp, 0), axis=1)  # tp is non-decreasing
    before = np.zeros_like(tp)
    before[:, 1:] = tp_at_ends[:, :-1]  # tp at the end of the previous group
    gain = np.where(ends, (tp - before) * tp, 0) / np.arange(1, keys.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, gain.sum(axis=1) / n_pos, np.nan)


def per_class_ap(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each class's average precision over the videos (sklearn's ``average_precision_score``).

    Returns:
        (C,) float64; nan for a class without a positive video (its AP is undefined).
    """
    t, s = _check(targets, scores)
    n, c = t.shape
    out = np.full(c, np.nan)
    if n == 0:
        return out
    step = max(1, _CHUNK // n)
    for a in range(0, c, step):
        tc = t[:, a : a + step]
        keys = np.ascontiguousarray(_keys(s[:, a : a + step], tc).T)
        out[a : a + step] = _ap_rows(keys, tc.sum(axis=0))
    return out


def average_precision(targets_c: np.ndarray, scores_c: np.ndarray) -> float:
    """One class's average precision: ``targets_c`` (N,) 0/1 and ``scores_c`` (N,); nan without a positive."""
    t, s = np.asarray(targets_c), np.asarray(scores_c)
    if t.ndim != 1 or s.ndim != 1:
        raise ValueError(f"targets_c {t.shape} and scores_c {s.shape} must be (N,) vectors")
    return float(per_class_ap(t[:, None], s[:, None])[0])


def _mean_defined(ap: np.ndarray) -> float:
    defined = ap[~np.isnan(ap)]
    return float(defined.mean()) if defined.size else 0.0


def map_macro(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean of the per-class AP over the classes with at least one positive video (0.0 if none)."""
    return _mean_defined(per_class_ap(targets, scores))


def _top_k(t: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    """``_keys`` of each row's ``k`` highest scores (1 <= k <= C), all rows pooled: (R * k,).

    Of the scores tied with a row's k-th highest, the lowest class indices are kept.
    """
    c = s.shape[1]
    kth = np.partition(s, c - k, axis=1)[:, c - k, None]  # each row's k-th highest score
    above, tied = s > kth, s == kth
    wanted = k - above.sum(axis=1, keepdims=True)  # how many of the tied ones to keep
    top = above | (tied & (np.cumsum(tied, axis=1) <= wanted))
    return _keys(s[top], t[top])


def gap_at_k(targets: np.ndarray, scores: np.ndarray, k: int = 20) -> float:
    """YouTube-8M's Global Average Precision (``eval_util.calculate_gap``).

    Every video's top ``k`` scores (all of them when C < k) with their truths, pooled and ranked by
    score: the AP of that list, divided by the number of positive labels of all videos, those outside
    a video's top k included (they are never retrieved). A tie at a video's k-th score keeps the
    lowest class indices; ties in the pooled list are one threshold (module docstring).

    Returns:
        GAP in [0, 1]; 0.0 without videos or without a positive label.
    Raises:
        ValueError: ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"gap_at_k: k must be at least 1, got {k}")
    t, s = _check(targets, scores)
    n, c = t.shape
    n_pos = int(t.sum())
    if n == 0 or c == 0 or n_pos == 0:
        return 0.0
    k = min(k, c)
    step = max(1, _CHUNK // c)  # videos per step: bounds the temporary memory
    pooled = np.concatenate([_top_k(t[a : a + step], s[a : a + step], k) for a in range(0, n, step)])
    return float(_ap_rows(pooled[None, :], np.array([n_pos]))[0])


def hit_at_1(targets: np.ndarray, scores: np.ndarray) -> float:
    """Share of videos whose top-scored class (the lowest index among ties) is one of their labels."""
    t, s = _check(targets, scores)
    if t.shape[0] == 0 or t.shape[1] == 0:
        return 0.0
    return float(t[np.arange(t.shape[0]), s.argmax(axis=1)].mean())


def predicted_sets(scores: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """The predicted label sets: (N, C) bool, ``scores >= thresholds`` (one per class (C,), or one for all)."""
    s, thr = np.asarray(scores, dtype=np.float64), np.asarray(thresholds, dtype=np.float64)
    if s.ndim != 2 or thr.shape not in ((), (s.shape[1],)):
        raise ValueError(f"scores {s.shape} must be (N, C) and thresholds {thr.shape} a scalar or (C,)")
    return s >= thr


def _f1_counts(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    """F1 = 2 tp / (predicted + true), 0 where nothing is predicted nor true (sklearn's zero_division=0)."""
    denom = n_pred + n_true
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def f1_scores(targets: np.ndarray, predicted: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Micro F1 (all labels pooled), macro F1 and per-class F1 of the predicted sets.

    Macro F1 is the mean over the classes with a positive video or predicted at least once (a class
    absent from both says nothing about this split); 0.0 if there is none.

    Returns:
        ``(micro, macro, per_class)``, per_class (C,) float64 with 0 where a class has no positive and
        no prediction.
    """
    t, p = _check_sets(targets, predicted)
    tp = (t & p).sum(axis=0)
    n_pred, n_true = p.sum(axis=0), t.sum(axis=0)
    per_class = _f1_counts(tp, n_pred, n_true)
    micro = float(_f1_counts(tp.sum(), n_pred.sum(), n_true.sum()))
    active = (n_pred > 0) | (n_true > 0)
    macro = float(per_class[active].mean()) if active.any() else 0.0
    return micro, macro, per_class


def exact_set_accuracy(targets: np.ndarray, predicted: np.ndarray) -> float:
    """Share of videos whose predicted label set is exactly their true set."""
    t, p = _check_sets(targets, predicted)
    return float((t == p).all(axis=1).mean()) if t.shape[0] else 0.0


def _grid_counts(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class and grid threshold: the true positives and the predictions of ``s >= GRID[j]``, (C, G)."""
    g, (n, c) = len(GRID), t.shape
    offsets, size = (g + 1) * np.arange(c), c * (g + 1)
    hist = np.zeros((2, size), dtype=np.int64)
    step = max(1, _CHUNK // max(c, 1))  # videos per step: bounds the temporary memory
    for a in range(0, n, step):
        # bin b = how many grid thresholds a score reaches: predicted at GRID[j] exactly when b > j
        bins = np.searchsorted(GRID, s[a : a + step], side="right") + offsets
        hist[0] += np.bincount(bins.ravel(), minlength=size)
        hist[1] += np.bincount(bins[t[a : a + step]], minlength=size)
    at_least = np.cumsum(hist.reshape(2, c, g + 1)[:, :, ::-1], axis=2)[:, :, ::-1]  # bins b and above
    return at_least[1, :, 1:], at_least[0, :, 1:]


def _best(f1: np.ndarray) -> np.ndarray:
    """The grid threshold of highest F1 in each row of ``f1`` (.., G); ties: closest to 0.5, then lower."""
    return GRID[_PREFERENCE[np.argmax(f1[..., _PREFERENCE], axis=-1)]]


def choose_thresholds(
    targets: np.ndarray,
    scores: np.ndarray,
    *,
    rule: str = "per_class",
    fixed: float = 0.5,
    shrink: float = 10.0,
) -> dict:
    """The decision thresholds, chosen on validation data (``targets``, ``scores``: the validation split).

    ``"fixed"``: every class ``fixed``. ``"global"``: the grid threshold (0.05 .. 0.95) of highest micro
    F1 over all classes. ``"per_class"``: each class's grid threshold of highest F1, ``t_c``, shrunk
    toward the global one ``t_g`` by the class's positive count ``n_c``: ``(n_c * t_c + shrink * t_g) /
    (n_c + shrink)``; a class without a positive gets ``t_g``. F1 ties go to the threshold closest to 0.5
    (then the lower one).

    Returns:
        ``{"rule", "global": float, "per_class": [C floats in (0, 1)], "support": [C ints]}``.
    Raises:
        ConfigError: an unknown ``rule``, ``fixed`` outside (0, 1) or a negative ``shrink``.
    """
    if rule not in RULES:
        raise ConfigError(f"threshold rule {rule!r} is unknown; use one of {', '.join(RULES)}")
    t, s = _check(targets, scores)
    support = t.sum(axis=0)
    if rule == "fixed":
        if not 0.0 < fixed < 1.0:
            raise ConfigError(f"fixed threshold {fixed} must lie strictly between 0 and 1, e.g. 0.5")
        t_g, per_class = float(fixed), np.full(t.shape[1], float(fixed))
    else:
        if not 0.0 <= shrink < math.inf:
            raise ConfigError(f"threshold shrink {shrink} must be 0 or more (0: no shrinkage), e.g. 10")
        tp, n_pred = _grid_counts(t, s)
        t_g = float(_best(_f1_counts(tp.sum(axis=0), n_pred.sum(axis=0), support.sum())))
        per_class = np.full(t.shape[1], t_g)
        if rule == "per_class":
            t_c = _best(_f1_counts(tp, n_pred, support[:, None]))
            n_c = support.astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                shrunk = (n_c * t_c + shrink * t_g) / (n_c + shrink)
            per_class = np.where(support > 0, shrunk, t_g)
    return {
        "rule": rule,
        "global": t_g,
        "per_class": [float(x) for x in per_class],
        "support": [int(x) for x in support],
    }


def _cooccurrence(t: np.ndarray, class_names: Sequence[str]) -> dict:
    """True-label co-occurrence counts among the (up to 20) most frequent classes with a positive video."""
    support = t.sum(axis=0)
    order = np.argsort(-support, kind="stable")[:COOCCURRENCE_CLASSES]
    order = order[support[order] > 0]
    sub = t[:, order].astype(np.int64)
    return {"classes": [class_names[c] for c in order], "counts": (sub.T @ sub).tolist()}


def multilabel_metrics(
    targets: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray | float | Sequence[float],
    class_names: list[str],
) -> dict:
    """Every multi-label metric of one split, JSON-ready.

    Args:
        targets: (N, C) 0/1 true labels.
        scores: (N, C) probabilities.
        thresholds: the decision thresholds, (C,) or one for all (``choose_thresholds(...)["per_class"]``).
        class_names: the C class names, in column order.
    Returns:
        ``{"n", "gap_at_20", "map_macro", "f1_micro", "f1_macro", "hit_at_1", "exact_set_accuracy",
        "ap_per_class": {name: float or None (no positive)}, "f1_per_class", "support_per_class",
        "label_cardinality", "predicted_cardinality", "cooccurrence": {"classes", "counts"}}``;
        cardinalities are mean labels per video. With no video every number is 0.
    """
    t, s = _check(targets, scores)
    if len(class_names) != t.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {t.shape[1]} score columns")
    n = t.shape[0]
    pred = predicted_sets(s, np.asarray(thresholds, dtype=np.float64))
    ap = per_class_ap(t, s)
    micro, macro, f1 = f1_scores(t, pred)
    support = t.sum(axis=0)
    return {
        "n": int(n),
        "gap_at_20": gap_at_k(t, s, 20),
        "map_macro": _mean_defined(ap),
        "f1_micro": micro,
        "f1_macro": macro,
        "hit_at_1": hit_at_1(t, s),
        "exact_set_accuracy": exact_set_accuracy(t, pred),
        "ap_per_class": {name: None if np.isnan(a) else float(a) for name, a in zip(class_names, ap)},
        "f1_per_class": {name: float(x) for name, x in zip(class_names, f1)},
        "support_per_class": {name: int(x) for name, x in zip(class_names, support)},
        "label_cardinality": float(support.sum() / n) if n else 0.0,
        "predicted_cardinality": float(pred.sum() / n) if n else 0.0,
        "cooccurrence": _cooccurrence(t, class_names),
    }
