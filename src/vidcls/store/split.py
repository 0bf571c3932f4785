"""Seeded, stratified carving of a validation (or test) share from a list of labels."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class into train/val, deterministically for a seed.

    Each class c sends round(fraction * n_c) examples to val, clamped so that a class with >= 2
    examples has >= 1 in val and >= 1 in train, and a single-example class stays in train.

    Args:
        labels: (N,) integer labels.
        fraction: share of each class for val, in (0, 1).
        seed: RNG seed.

    Returns:
        (train_idx, val_idx), both sorted int64 arrays that partition range(N).

    Raises:
        ValueError: fraction outside (0, 1) or labels not 1-D.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"val fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(np.floor(fraction * len(idx) + 0.5))  # round half up, unlike Python's round
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx
