"""Out-of-distribution scores of a run's served logits (higher is more in-distribution) and the checks a
calibration asks for; the feature-space typicality is :mod:`vidcls.engine.typicality`.

A multi-label run (``task`` "multilabel", one sigmoid per class) has its own two logit scores: the
joint energy of Wang et al. 2021 ("Can multi-label classification networks know what they don't
know?", NeurIPS), ``sum_c T * softplus(z_c / T)`` (each class's ``log(1 + exp(z_c / T))``: the free
energy of its two-state sigmoid), averaged over the served members and views; and as "max_softmax" the
largest served sigmoid. The typicality is the same for both tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..config import MULTILABEL
from ..errors import ConfigError
from ..run.calibration import DEFAULT_OOD_SCORE, FEATURE_SCORES, OOD_SCORES, ood_checks
from .probs import _logsumexp, as_4d, served_probs
from .typicality import typicality_score


def _softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` without overflow for large ``|x|``."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def energy_score(logits: npt.ArrayLike, temperature: float = 1.0, task: str = "single") -> np.ndarray:
    """Negative free energy per video ``(N,)``: ``T * logsumexp(logits / T)`` averaged over members
    and views; for ``task`` "multilabel" the joint energy ``sum_c T * softplus(logits_c / T)``
    averaged the same way. Higher is more in-distribution."""
    z = as_4d(logits)
    t = float(temperature)
    if task == MULTILABEL:
        return (t * _softplus(z / t).sum(axis=-1)).mean(axis=(1, 2))
    return (t * _logsumexp(z / t, axis=-1)).mean(axis=(1, 2))


def max_softmax_score(logits: npt.ArrayLike, temperature: float = 1.0, task: str = "single") -> np.ndarray:
    """The largest served probability per video ``(N,)`` (for ``task`` "multilabel": the largest served
    sigmoid). Higher is more in-distribution."""
    return served_probs(logits, temperature, task).max(axis=1)


def ood_score(
    logits: npt.ArrayLike, temperature: float = 1.0, kind: str = DEFAULT_OOD_SCORE, task: str = "single"
) -> np.ndarray:
    """The out-of-distribution score ``kind`` ("energy" or "max_softmax") per video of a ``task``
    ("single" | "multilabel") run; higher is more in-distribution. A non-finite logit gives a NaN
    score (never trusted)."""
    if kind not in OOD_SCORES:
        raise ConfigError(f"unknown OOD score {kind!r}; valid: {', '.join(OOD_SCORES)}")
    z = as_4d(logits)
    score = (
        energy_score(z, temperature, task) if kind == "energy" else max_softmax_score(z, temperature, task)
    )
    finite = np.isfinite(z).all(axis=(1, 2, 3))
    return np.where(finite, score, np.nan)


def _task(calibration: dict, task: str | None) -> str:
    """The task scores are computed for: ``task`` when given, else the calibration's (absent: single)."""
    return task if task is not None else str(calibration.get("task", "single"))


def calibration_scores(
    logits: npt.ArrayLike,
    calibration: dict | None,
    features: Sequence[np.ndarray] | None = None,
    typicality: dict | None = None,
    *,
    task: str | None = None,
) -> dict | None:
    """``{score name: (N,)}`` for every score a run's ``calibration`` checks, at its temperature; None
    without a calibration. ``features``: the ``(T, D)`` sequences as the model saw them and
    ``typicality`` the run's statistics (``typicality_stats``); without them the typicality is NaN.
    ``task``: the run's ("single" | "multilabel"); None: the calibration's ``task`` (absent: single)."""
    if not calibration:
        return None
    t = calibration.get("temperature", 1.0)
    task = _task(calibration, task)
    out = {}
    for name in ood_checks(calibration) or [(calibration.get("ood") or {}).get("score", DEFAULT_OOD_SCORE)]:
        if name in FEATURE_SCORES:
            if features is not None and typicality is not None:
                out[name] = typicality_score(features, typicality)
            else:
                out[name] = np.full(len(as_4d(logits)), np.nan)
        else:
            out[name] = ood_score(logits, t, name, task)
    return out


def calibration_score(
    logits: npt.ArrayLike, calibration: dict | None, *, task: str | None = None
) -> np.ndarray | None:
    """The primary (logit) OOD score of a run's ``calibration`` at its temperature; None without one.
    ``task``: as for ``calibration_scores``."""
    if not calibration:
        return None
    kind = (calibration.get("ood") or {}).get("score", DEFAULT_OOD_SCORE)
    return ood_score(logits, calibration.get("temperature", 1.0), kind, _task(calibration, task))
