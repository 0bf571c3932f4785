"""Uniform thinning of a frame sequence: the one rule extraction (``--max-frames``) and training
(``max_frames``) share, so a long video looks the same to the model whichever step shortened it.

Pure numpy, no video or torch imports: the decode workers and the DataLoader workers both use it.
"""

from __future__ import annotations

import numpy as np


def uniform_indices(n: int, k: int) -> np.ndarray:
    """Indices of at most ``k`` of ``n`` frames, spread uniformly over the whole sequence.

    Args:
        n: frames available (>= 0).
        k: the most frames to keep (>= 1).
    Returns:
        (min(n, k),) int64, strictly increasing: ``arange(n)`` when ``n <= k``, else
        ``round(linspace(0, n - 1, k))`` (first and last frame always kept).
    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"the number of frames to keep must be >= 1, got {k}")
    if n <= k:
        return np.arange(n, dtype=np.int64)
    # the step (n-1)/(k-1) is > 1, so rounding never merges two picks; unique() is a guard only
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))
