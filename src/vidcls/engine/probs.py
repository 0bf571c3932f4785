"""Softmax or sigmoid with temperature: the one place a run's logits become its served probabilities.

A single-label run (``task`` "single") serves a softmax over its classes; a multi-label run
("multilabel") one sigmoid per class, each an independent probability that the label applies. An
ensemble (members x views) serves the mean of those probabilities in both cases.

Logits are ``(N, M, V, C)`` (videos, served members, served views, classes); ``(N, M, C)`` and
``(N, C)`` are read as one view / one member.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def as_4d(logits: npt.ArrayLike) -> np.ndarray:
    """``logits`` as float64 ``(N, M, V, C)``: ``(N, C)`` is one member and one view, ``(N, M, C)`` one view.

    Raises:
        ValueError: any other number of dimensions, or no class axis.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2:
        z = z[:, None, None, :]
    elif z.ndim == 3:
        z = z[:, :, None, :]
    if z.ndim != 4 or z.shape[-1] < 1:
        raise ValueError(f"logits must be (N, C), (N, M, C) or (N, M, V, C); got shape {np.shape(logits)}")
    return z


def _logsumexp(z: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(z - m), axis=axis))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow for large ``|z|``."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def served_probs(logits: npt.ArrayLike, temperature: float = 1.0, task: str = "single") -> np.ndarray:
    """The run's served probabilities ``(N, C)``: the mean over members and views of ``softmax(logits / T)``
    (``task`` "single") or of ``sigmoid(logits / T)`` ("multilabel")."""
    z = as_4d(logits) / float(temperature)
    if task == "multilabel":
        return sigmoid(z).mean(axis=(1, 2))
    if task != "single":
        raise ValueError(f"task must be 'single' or 'multilabel', got {task!r}")
    return _softmax(z).mean(axis=(1, 2))


def labels_above(probs: npt.ArrayLike, thresholds: npt.ArrayLike) -> list[list[int]]:
    """A multi-label run's decision: per video, the classes whose probability reaches its threshold
    (``probs >= thresholds``), most probable first (ties: lower class index first).

    Args:
        probs: ``(N, C)`` served probabilities. thresholds: ``(C,)`` or a scalar.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), p.shape[-1:])
    out = []
    for row in p:
        hit = np.flatnonzero(row >= t)
        out.append([int(c) for c in hit[np.argsort(-row[hit], kind="stable")]])
    return out
