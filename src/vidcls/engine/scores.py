"""Out-of-distribution scores of a run's served logits (higher is more in-distribution) and the checks a
calibration asks for; the feature-space typicality is :mod:`vidcls.engine.typicality`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError
from ..run.calibration import DEFAULT_OOD_SCORE, FEATURE_SCORES, OOD_SCORES, ood_checks
from .probs import _logsumexp, as_4d, served_probs
from .typicality import typicality_score


def energy_score(logits: npt.ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy per video ``(N,)``: ``T * logsumexp(logits / T)`` averaged over members
    and views. Higher is more in-distribution."""
    z = as_4d(logits)
    t = float(temperature)
    return (t * _logsumexp(z / t, axis=-1)).mean(axis=(1, 2))


def max_softmax_score(logits: npt.ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """The largest served probability per video ``(N,)``. Higher is more in-distribution."""
    return served_probs(logits, temperature).max(axis=1)


def ood_score(logits: npt.ArrayLike, temperature: float = 1.0, kind: str = DEFAULT_OOD_SCORE) -> np.ndarray:
    """The out-of-distribution score ``kind`` ("energy" or "max_softmax") per video; higher is more
    in-distribution. A non-finite logit gives a NaN score (never trusted)."""
    if kind not in OOD_SCORES:
        raise ConfigError(f"unknown OOD score {kind!r}; valid: {', '.join(OOD_SCORES)}")
    z = as_4d(logits)
    score = energy_score(z, temperature) if kind == "energy" else max_softmax_score(z, temperature)
    finite = np.isfinite(z).all(axis=(1, 2, 3))
    return np.where(finite, score, np.nan)


def calibration_scores(
    logits: npt.ArrayLike,
    calibration: dict | None,
    features: Sequence[np.ndarray] | None = None,
    typicality: dict | None = None,
) -> dict | None:
    """``{score name: (N,)}`` for every score a run's ``calibration`` checks, at its temperature; None
    without a calibration. ``features``: the ``(T, D)`` sequences as the model saw them and
    ``typicality`` the run's statistics (``typicality_stats``); without them the typicality is NaN."""
    if not calibration:
        return None
    t = calibration.get("temperature", 1.0)
    out = {}
    for name in ood_checks(calibration) or [(calibration.get("ood") or {}).get("score", DEFAULT_OOD_SCORE)]:
        if name in FEATURE_SCORES:
            if features is not None and typicality is not None:
                out[name] = typicality_score(features, typicality)
            else:
                out[name] = np.full(len(as_4d(logits)), np.nan)
        else:
            out[name] = ood_score(logits, t, name)
    return out


def calibration_score(logits: npt.ArrayLike, calibration: dict | None) -> np.ndarray | None:
    """The primary (logit) OOD score of a run's ``calibration`` at its temperature; None without one."""
    if not calibration:
        return None
    kind = (calibration.get("ood") or {}).get("score", DEFAULT_OOD_SCORE)
    return ood_score(logits, calibration.get("temperature", 1.0), kind)
