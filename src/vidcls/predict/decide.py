"""What the predictor decides for one usable input, as its record: the most probable class with the
top k, the probabilities, a multi-label run's label set (:mod:`vidcls.predict.multilabel`), the trust
verdict with its OOD scores (:mod:`vidcls.predict.verdict`), the frames seen and the timings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..engine.scores import calibration_scores
from ..run.calibration import ood_checks
from . import verdict
from .inputs import finite, stamps
from .multilabel import Thresholds, decision


def usable_record(
    r: dict,
    p: np.ndarray,
    *,
    classes: Sequence[str],
    top_k: int,
    trusted: tuple,
    scores: dict | None,
    seen: tuple,
    model_s: float,
    calibration: dict | None,
    thresholds: Thresholds | None = None,
) -> dict:
    """The record of one usable input (``Predictor.predict_records`` documents its fields).

    Args:
        r: the gathered input (``input``, ``timestamps_ms``, ``decode_s``, ``features_s``).
        p: its ``(C,)`` served probabilities. classes: the C class names.
        trusted: its (verdict, reason). scores: its OOD scores ({name: float}, None uncalibrated).
        seen: (frame positions the model saw, their attention).
        calibration: the calibration the predictor uses (None: none).
        thresholds: a multi-label run's thresholds (None: a single-label run, whose record has no
            ``task``, ``labels`` or ``thresholds_source``).
    """
    order = np.argsort(-p, kind="stable")[:top_k]
    kept, attn = seen
    times = stamps(r["timestamps_ms"], kept)
    primary = calibration["ood"].get("score", "energy") if calibration else None
    return {
        "input": r["input"],
        "label": classes[int(order[0])],
        **({} if thresholds is None else decision(p, thresholds, classes)),
        "top_k": [{"class": classes[int(c)], "probability": float(p[c])} for c in order],
        "probabilities": {c: float(v) for c, v in zip(classes, p)},
        "trusted": None if trusted[0] is None else bool(trusted[0]),
        "trust_reason": str(trusted[1]),
        "ood_score": finite(scores[primary]) if scores else None,
        "ood_scores": {k: finite(v) for k, v in (scores or {}).items()},
        "ood": verdict.ood_checks(scores, ood_checks(calibration)),
        "frames": [
            {"index": int(i), "timestamp_ms": s, "attention": float(a)} for i, s, a in zip(kept, times, attn)
        ],
        "timings": {
            "decode_s": round(r["decode_s"], 6),
            "features_s": round(r["features_s"], 6),
            "model_s": round(model_s, 6),
        },
        "error": None,
    }


def trust_of(
    logits: np.ndarray,
    seen: list,
    *,
    calibration: dict | None,
    note: str,
    typicality: dict | None,
    task: str = "single",
) -> tuple[dict | None, list[tuple[bool | None, str]]]:
    """({score name: (N,)} or None, (trusted, reason) per video: trusted None, with ``note``, without a
    ``calibration``). ``seen``: the (T, D) features the model saw (stored precision, thinned), for the
    feature-space scores; ``task``: the run's (a multi-label run's energy is the joint energy)."""
    if not calibration:
        return None, [(None, note)] * len(logits)
    scores = calibration_scores(logits, calibration, seen, typicality, task=task)
    assert scores is not None  # calibrated
    return scores, [
        verdict.trust_verdict({k: float(v[j]) for k, v in scores.items()}, calibration)
        for j in range(len(logits))
    ]
