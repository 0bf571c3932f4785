"""Temperature scaling over a run's served logits: the served probabilities, NLL, the fitted
temperature and the expected calibration error (see :mod:`vidcls.evaluation.calibrate`).

Logits are ``(N, M, V, C)`` (videos, served members, served views, classes); ``(N, M, C)`` and
``(N, C)`` are read as one view / one member.

A multi-label run (``task`` "multilabel", labels ``(N, C)`` 0/1 label sets) is fitted the same way with
ONE scalar temperature for all classes: the NLL is then the mean over videos of the summed binary
cross-entropy of the served ``sigmoid(z / T)`` (``binary_nll``), under the same log-normal prior.
Per-class temperatures would overfit: with few validation positives per class a rare class's T would
be set by one to three videos, while the run's per-class thresholds already adapt each class's
decision. Its calibration error is the label-wise ECE (``labelwise_ece``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..config import MULTILABEL
from ..engine.probs import as_4d, served_probs

T_BOUNDS = (0.05, 20.0)  # the temperature search range
# std of log T under the prior of fit_temperature (T log-normal, median 1): T within [0.61, 1.65] at one sd
T_PRIOR_SIGMA = 0.5
ECE_BINS = 15


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at ``eps``)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    p = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p, eps, 1.0))))


def binary_nll(probs: np.ndarray, targets: np.ndarray, eps: float = 1e-12) -> float:
    """Mean over videos of the binary cross-entropy summed over classes, ``-sum_c [y log p + (1 - y)
    log(1 - p)]``, of (N, C) probabilities against (N, C) 0/1 label sets (clipped to ``[eps, 1 - eps]``)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    y = np.asarray(targets, dtype=np.float64)
    return float(-np.mean(np.sum(y * np.log(p) + (1.0 - y) * np.log1p(-p), axis=1)))


def served_nll(probs: np.ndarray, labels: np.ndarray, task: str = "single") -> float:
    """``nll`` of a single-label run's probabilities, ``binary_nll`` of a multi-label one's."""
    return binary_nll(probs, labels) if task == MULTILABEL else nll(probs, labels)


def _golden_min(f: Callable[[float], float], lo: float, hi: float, tol: float = 1e-5) -> float:
    """The minimiser of a unimodal ``f`` on ``[lo, hi]``."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def temperature_objective(
    logits: np.ndarray, labels: np.ndarray, prior_sigma: float | None = T_PRIOR_SIGMA, *, task: str = "single"
) -> Callable[[float], float]:
    """The function of ``log T`` that ``fit_temperature`` minimises: the mean validation NLL of
    ``served_probs(logits, T, task)`` (``served_nll``) plus ``(log T)^2 / (2 sigma^2 N)``, i.e. the
    negative log posterior of ``log T`` under a normal prior ``N(0, sigma^2)`` (T log-normal around 1),
    divided by the N videos. ``prior_sigma`` None: the NLL alone (the maximum-likelihood temperature)."""
    z = as_4d(logits)
    y = np.asarray(labels, dtype=np.int64)
    weight = 0.0 if prior_sigma is None else 1.0 / (2.0 * float(prior_sigma) ** 2 * len(y))

    def loss(log_t: float) -> float:
        return served_nll(served_probs(z, math.exp(log_t), task), y, task) + weight * log_t * log_t

    return loss


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    bounds: tuple[float, float] = T_BOUNDS,
    grid: int = 41,
    prior_sigma: float | None = T_PRIOR_SIGMA,
    *,
    task: str = "single",
) -> float:
    """The maximum a posteriori temperature on validation logits and ``labels``: the minimiser of
    ``temperature_objective`` (NLL plus a log-normal prior on T centred on 1, ``prior_sigma`` the std of
    ``log T``; None: the NLL alone).

    The prior is what keeps a validation split the model separates perfectly from driving T to the
    bottom of ``bounds``: there the NLL keeps falling as T shrinks (every probability goes to 1.000),
    by an amount that vanishes exponentially, while the prior's cost of sharpening grows; T stops where
    the N videos' evidence no longer pays for it. On a noisy split the NLL's curvature (N times a term
    of order one) dwarfs the prior's ``1 / sigma^2``, so T stays at about the NLL's minimiser.

    A search over ``log T`` in ``bounds``: a grid of ``grid`` points (the NLL of an average of
    softmaxes need not be unimodal), then a golden-section refinement around the best grid point.
    The result never has a higher objective than ``T = 1`` (returned instead when nothing beats it),
    hence never a higher NLL either.

    Args:
        logits: (N, C), (N, M, C) or (N, M, V, C) raw logits; labels: (N,) class indices, or for
            ``task`` "multilabel" (N, C) 0/1 label sets (one scalar T for every class's sigmoid).
    Raises:
        ValueError: no videos, or labels that do not match the logits.
    """
    z = as_4d(logits)
    y = np.asarray(labels, dtype=np.int64)
    if len(z) == 0 or len(y) != len(z):
        raise ValueError(f"fit_temperature needs one label per video; got {len(z)} videos, {len(y)} labels")
    if task == MULTILABEL:
        if y.shape != (len(z), z.shape[-1]) or not np.isin(y, (0, 1)).all():
            raise ValueError(f"multi-label labels must be (N, C) = {(len(z), z.shape[-1])} 0/1 label sets")
    elif y.ndim != 1 or y.min() < 0 or y.max() >= z.shape[-1]:
        raise ValueError(f"labels must lie in 0..{z.shape[-1] - 1}")
    loss = temperature_objective(z, y, prior_sigma, task=task)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    points = np.linspace(lo, hi, grid)
    values = [loss(p) for p in points]
    k = int(np.argmin(values))
    best = _golden_min(loss, points[max(k - 1, 0)], points[min(k + 1, grid - 1)])
    if loss(best) > values[k]:
        best = float(points[k])
    if loss(best) >= loss(0.0):  # T = 1, the uncalibrated model, is always a candidate and wins ties
        return 1.0
    return float(math.exp(best))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error with ``bins`` equal-width confidence bins.

    A video falls in bin ``b`` when its confidence (largest probability) lies in ``(b / bins, (b + 1) / bins]``
    (confidence 0 in the first bin). ECE = sum over bins of ``|B| / N * |accuracy(B) - mean confidence(B)|``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(probs) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def labelwise_ece(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """A multi-label run's expected calibration error: every (video, class) probability is one binary
    forecast, binned as in ``expected_calibration_error`` (bin ``b``: ``(b / bins, (b + 1) / bins]``);
    ECE = sum over bins of ``|B| / (N C) * |share of B's labels that apply - mean probability(B)|``."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(targets, dtype=np.float64).ravel()
    if p.size == 0:
        return float("nan")
    idx = np.clip(np.ceil(p * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.abs(np.bincount(idx, y, minlength=bins) - np.bincount(idx, p, minlength=bins))
    return float(gap.sum() / p.size)


def served_ece(probs: np.ndarray, labels: np.ndarray, task: str = "single") -> float:
    """``expected_calibration_error`` of a single-label run's probabilities, ``labelwise_ece`` of a
    multi-label one's."""
    return labelwise_ece(probs, labels) if task == MULTILABEL else expected_calibration_error(probs, labels)
