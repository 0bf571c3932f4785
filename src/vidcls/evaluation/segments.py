"""How well a long video's predicted spans match its true ones: frame accuracy, boundary error, span mAP.

A span is a dict with ``label``, ``start_frame`` and ``end_frame`` (exclusive), as
``Predictor.predict_segments`` writes them (its ``"spans"``); predicted spans also carry a
``probability`` (their score for :func:`span_map`). True spans partition the sequence ``[0, n)``.

- :func:`frame_accuracy`: the share of frames whose predicted label is the true one.
- :func:`boundary_errors`: for each true boundary, the distance to the nearest predicted one.
- :func:`span_map`: temporal-detection mean average precision, ActivityNet's rule: per class, the
  predictions ranked by probability; one is a true positive when its IoU with a not yet matched true
  span of its class is at least ``iou``; AP is the area under the precision-recall curve with
  ActivityNet's all-point interpolation (``interpolated_prec_rec``); the mean is over the classes
  that have true spans.

Pure numpy (no torch): the segment benchmark and the tests use it on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = [
    "Boundaries",
    "frame_accuracy",
    "frame_labels",
    "boundaries_of",
    "boundary_errors",
    "temporal_iou",
    "interpolated_ap",
    "span_ap",
    "span_map",
]


def _bounds(span: dict, n: int | None, what: str) -> tuple[int, int]:
    """(start, end) of a span, checked (``n`` None: no upper bound known)."""
    a, b = int(span["start_frame"]), int(span["end_frame"])
    if a < 0 or b <= a or (n is not None and b > n):
        limit = "" if n is None else f" within [0, {n})"
        raise ConfigError(
            f"{what} span {span!r} is not a frame range{limit}; give start_frame < end_frame, both >= 0"
        )
    return a, b


def frame_labels(spans: Sequence[dict], n_frames: int, *, what: str = "predicted") -> np.ndarray:
    """``(n_frames,)`` object array: each frame's label (None where no span covers it).

    Raises:
        ConfigError: a span outside ``[0, n_frames)`` or two spans over the same frame (overlapping
            spans have no single label per frame).
    """
    out = np.full(n_frames, None, dtype=object)
    for span in spans:
        a, b = _bounds(span, n_frames, what)
        if any(x is not None for x in out[a:b]):
            raise ConfigError(
                f"{what} span {span!r} overlaps another: frame accuracy needs one label per frame; "
                f"give spans that do not overlap (a single-label run's)"
            )
        out[a:b] = span["label"]
    return out


def _n_frames(truth_spans: Sequence[dict]) -> int:
    """The length of the sequence the true spans partition.

    Raises:
        ConfigError: no spans, or spans that leave a gap or overlap.
    """
    if not truth_spans:
        raise ConfigError("the true spans are empty; give the spans that partition the sequence")
    ordered = sorted(truth_spans, key=lambda s: int(s["start_frame"]))
    at = 0
    for span in ordered:
        a, b = _bounds(span, None, "true")
        if a != at:
            raise ConfigError(
                f"true span {span!r} starts at {a}, not where the previous ends ({at}); true spans must "
                f"partition the sequence [0, n)"
            )
        at = b
    return at


def frame_accuracy(pred_spans: Sequence[dict], truth_spans: Sequence[dict], n_frames: int) -> float:
    """The share of the ``n_frames`` frames whose predicted label equals the true one (a frame no
    predicted span covers counts as wrong).

    Raises:
        ConfigError: spans outside the sequence, overlapping, or true spans that do not cover it.
    """
    if n_frames <= 0:
        raise ConfigError(f"n_frames must be a positive frame count, got {n_frames}")
    truth = frame_labels(truth_spans, n_frames, what="true")
    if any(x is None for x in truth):
        raise ConfigError(f"the true spans do not cover all {n_frames} frames; give spans that partition it")
    pred = frame_labels(pred_spans, n_frames)
    return float(np.mean([p is not None and p == t for p, t in zip(pred, truth)]))


@dataclass(frozen=True)
class Boundaries:
    """Boundary errors of one sequence (:func:`boundary_errors`).

    Attributes:
        errors: ``(B,)`` per true boundary (in order), the distance to the nearest predicted
            boundary (frames, or seconds); the sequence length where nothing was predicted at all
            (a miss at the largest cost the sequence allows).
        missed: true boundaries with no predicted boundary within ``tolerance`` (None: none at all).
        extra: predicted boundaries with no true boundary within ``tolerance`` (None: none at all).
        n_predicted: predicted boundaries.
        tolerance: the tolerance used (same unit as ``errors``), None for none.
    """

    errors: np.ndarray
    missed: int
    extra: int
    n_predicted: int
    tolerance: float | None


def boundaries_of(spans: Sequence[dict], n_frames: int) -> np.ndarray:
    """Sorted frames strictly inside ``(0, n_frames)`` where a span starts or ends (the cuts)."""
    cuts = {int(s[k]) for s in spans for k in ("start_frame", "end_frame")}
    return np.asarray(sorted(c for c in cuts if 0 < c < n_frames), np.float64)


def _nearest(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each of ``points``, the distance to the nearest of ``targets`` (sorted, non-empty)."""
    i = np.clip(np.searchsorted(targets, points), 1, len(targets)) - 1
    j = np.clip(i + 1, 0, len(targets) - 1)
    return np.minimum(np.abs(points - targets[i]), np.abs(points - targets[j]))


def boundary_errors(
    pred_spans: Sequence[dict],
    truth_spans: Sequence[dict],
    *,
    seconds_per_frame: float | None = None,
    tolerance: float | None = None,
) -> Boundaries:
    """How far each true boundary (where one true span ends and the next starts) is from the
    nearest predicted one (any frame where a predicted span starts or ends, inside the sequence).

    Distances are nearest-neighbour, not a one-to-one matching: one predicted boundary may serve two
    true ones. A prediction without any boundary gets the sequence length as each error.

    Args:
        seconds_per_frame: report ``errors`` (and read ``tolerance``) in seconds; None: frames.
        tolerance: a true boundary farther than this from every predicted one is ``missed``, a
            predicted one farther than this from every true one is ``extra``; None: only when the
            other side has no boundary at all.

    Raises:
        ConfigError: true spans that do not partition a sequence, or a non-positive ``seconds_per_frame``.
    """
    if seconds_per_frame is not None and not seconds_per_frame > 0:
        raise ConfigError(f"seconds_per_frame must be positive, got {seconds_per_frame!r}")
    n = _n_frames(truth_spans)
    for span in pred_spans:
        _bounds(span, n, "predicted")
    true_b, pred_b = boundaries_of(truth_spans, n), boundaries_of(pred_spans, n)
    scale = 1.0 if seconds_per_frame is None else float(seconds_per_frame)
    if len(pred_b):
        errors = _nearest(true_b, pred_b) * scale
    else:
        errors = np.full(len(true_b), n * scale)
    back = _nearest(pred_b, true_b) * scale if len(true_b) else np.zeros(0)
    limit = np.inf if tolerance is None else float(tolerance)
    missed = int(np.sum(errors > limit)) if len(pred_b) else len(true_b)
    extra = int(np.sum(back > limit)) if len(true_b) else len(pred_b)
    return Boundaries(errors, missed, extra, len(pred_b), tolerance)


def temporal_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Intersection over union of two frame ranges ``[start, end)``."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision-recall curve with all-point interpolation (ActivityNet's
    ``interpolated_prec_rec``): precision made non-increasing from the right, summed over recall steps."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def _as_sequences(spans: Sequence) -> list[Sequence[dict]]:
    """One sequence's spans (a list of dicts) or several (a list of lists), as a list of sequences."""
    if len(spans) and not isinstance(spans[0], dict):
        return list(spans)
    return [spans]


def span_ap(
    pred_spans: Sequence, truth_spans: Sequence, classes: Sequence[str], *, iou: float = 0.5
) -> dict[str, float | None]:
    """Per class, the temporal-detection AP at ``iou`` (module docstring); None for a class without
    true spans. Spans of one sequence (lists of dicts) or of several (lists of lists, paired by
    position: a prediction only matches true spans of its own sequence).

    Predictions of equal probability keep their order (a stable sort).

    Raises:
        ConfigError: unpaired sequences or ``iou`` outside (0, 1].
    """
    if not 0 < iou <= 1:
        raise ConfigError(f"iou must be in (0, 1], got {iou!r}")
    preds, truths = _as_sequences(pred_spans), _as_sequences(truth_spans)
    if len(preds) != len(truths):
        raise ConfigError(
            f"{len(preds)} predicted sequences but {len(truths)} true ones; give one list of spans per "
            f"sequence on both sides"
        )
    out: dict[str, float | None] = {}
    for c in classes:
        gts = [[_bounds(s, None, "true") for s in t if s["label"] == c] for t in truths]
        npos = sum(len(g) for g in gts)
        if not npos:
            out[c] = None
            continue
        ranked = [(float(s["probability"]), k, _bounds(s, None, "predicted"))
                  for k, p in enumerate(preds) for s in p if s["label"] == c]  # fmt: skip
        ranked.sort(key=lambda r: -r[0])  # stable: ties keep their order
        used = [np.zeros(len(g), bool) for g in gts]
        tp = np.zeros(len(ranked))
        for i, (_, k, span) in enumerate(ranked):
            overlaps = np.asarray([temporal_iou(span, g) for g in gts[k]])
            for j in np.argsort(-overlaps, kind="stable"):  # the best-overlapping free true span
                if overlaps[j] < iou:
                    break
                if not used[k][j]:
                    used[k][j], tp[i] = True, 1.0
                    break
        hits = np.cumsum(tp)
        precision = hits / np.arange(1, len(ranked) + 1)
        out[c] = interpolated_ap(precision, hits / npos) if len(ranked) else 0.0
    return out


def span_map(
    pred_spans: Sequence, truth_spans: Sequence, classes: Sequence[str], *, iou: float = 0.5
) -> float:
    """The mean of :func:`span_ap` over the classes with true spans (nan when none has any)."""
    aps = [ap for ap in span_ap(pred_spans, truth_spans, classes, iou=iou).values() if ap is not None]
    return float(np.mean(aps)) if aps else float("nan")
