"""A feature-space out-of-distribution score: how typical a video's features are of the training videos.

A score from the logits alone cannot tell a constant, all-zero or noise feature sequence from a real
one: the model may map it far from every decision boundary. This score looks at the features
themselves, as the model saw them (stored precision, ``max_frames`` thinning):

* every frame is standardised per dimension with the mean and std of the training frames;
* a video is summarised by the mean over its frames and the std over its frames of the standardised
  features (``2 D`` numbers: where it lies, and how much it moves; a constant or single-frame video
  has zero movement);
* per class, the prototype is the mean summary of that class's training videos; the variance is the
  pooled within-class variance per summary dimension, shrunk by ``SHRINK`` towards its mean over
  all summary dimensions (no dimension with an almost-zero variance dominates);
* per part (mean, std), the distance is the mean over its ``D`` dimensions of the squared standardised
  difference to the nearest class prototype (a diagonal Mahalanobis distance divided by ``D``; about 1
  for a typical video); the score is minus the larger of the two (a video must be typical in where it
  lies AND in how it moves; one sum would let the ``D`` typical dimensions of one part dilute the
  other). Higher is more typical.

The statistics (float32) live in ``RUN_DIR/typicality.npz``, written by ``trust.calibrate_run`` on the
run's training split and referenced from ``calibration.json`` (``ood.typicality.file``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..run.calibration import TYPICALITY_KEYS as KEYS

if TYPE_CHECKING:  # data.dataset imports torch, which this module does not
    from ..data.dataset import FeatureDataset

SHRINK = 0.1  # the share of the mean variance mixed into every summary dimension's variance
STD_FLOOR = 1e-3  # a frame dimension's std is at least this share of the median std (and > 0)
TYPICALITY_METHOD = (
    "mean and std over frames of the standardised features; minus the larger of their "
    "per-dimension mean squared diagonal-Mahalanobis distances to the nearest class prototype"
)


def video_moments(x: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over the frames of one ``(T, D)`` video (float64)."""
    a = np.asarray(x, dtype=np.float64)
    return a.mean(axis=0), a.std(axis=0)


def seen_videos(dataset: FeatureDataset) -> Iterator[np.ndarray]:
    """The videos of a ``FeatureDataset`` as the model saw them (stored precision, ``max_frames``
    thinning, no augmentation), in its order, one at a time."""
    for pos in range(len(dataset)):
        yield np.asarray(dataset[pos][0].numpy())


def _summaries(means: np.ndarray, stds: np.ndarray, stats: dict) -> np.ndarray:
    """``(N, 2 D)`` summaries from per-video raw means and stds ``(N, D)``: the mean and std over
    frames of the standardised features (standardising is affine, so these follow exactly)."""
    mu = np.asarray(stats["frame_mean"], np.float64)
    sd = np.asarray(stats["frame_std"], np.float64)
    return np.concatenate([(means - mu) / sd, stds / sd], axis=1)


def fit_typicality(videos: Iterable[np.ndarray], labels: npt.ArrayLike, n_classes: int | None = None) -> dict:
    """The statistics of the score from training videos (an iterable of ``(T, D)`` arrays as the model
    saw them, read once) and their class indices.

    Returns:
        ``{"frame_mean" (D,), "frame_std" (D,), "prototypes" (C, 2D), "variance" (2D,)}``, float32.
    Raises:
        ValueError: no video, a label per video missing, or videos of different dimensions.
    """
    y = np.asarray(labels, dtype=np.int64)
    moments = [(*video_moments(v), len(v)) for v in videos]
    if not moments or len(y) != len(moments):
        raise ValueError(
            f"fit_typicality needs one label per video; got {len(moments)} videos, {len(y)} labels"
        )
    means = np.stack([m[0] for m in moments])
    stds = np.stack([m[1] for m in moments])
    counts = np.asarray([m[2] for m in moments], np.float64)[:, None]
    frame_mean = (means * counts).sum(0) / counts.sum()
    frame_var = ((stds**2 + (means - frame_mean) ** 2) * counts).sum(0) / counts.sum()
    frame_std = np.sqrt(frame_var)
    floor = max(STD_FLOOR * float(np.median(frame_std)), 1e-8)
    stats = {"frame_mean": frame_mean, "frame_std": np.maximum(frame_std, floor)}
    s = _summaries(means, stds, stats)
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    present = [c for c in range(n_classes) if np.any(y == c)]
    prototypes = np.stack([s[y == c].mean(0) for c in present])
    resid = np.concatenate([s[y == c] - p for c, p in zip(present, prototypes)])
    var = (resid**2).sum(0) / max(len(s) - len(present), 1)
    var = (1 - SHRINK) * var + SHRINK * var.mean()
    stats.update(prototypes=prototypes, variance=np.maximum(var, 1e-12))
    return {k: np.asarray(stats[k], np.float32) for k in KEYS}


def typicality_score(videos: Sequence[np.ndarray], stats: dict) -> np.ndarray:
    """``(N,)`` typicality of ``(T, D)`` videos (higher is more typical); NaN for a video that is empty,
    of another dimension, or not finite (never trusted)."""
    mu = np.asarray(stats["frame_mean"], np.float64)
    protos = np.asarray(stats["prototypes"], np.float64)
    var = np.asarray(stats["variance"], np.float64)
    out = np.full(len(videos), np.nan)
    for i, v in enumerate(videos):
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 2 or not len(a) or a.shape[1] != len(mu) or not np.isfinite(a).all():
            continue
        mean, std = video_moments(a)
        summary = _summaries(mean[None], std[None], stats)[0]
        d = ((summary[None] - protos) ** 2) / var  # (C, 2 D)
        out[i] = -max(float(d[:, : len(mu)].mean(1).min()), float(d[:, len(mu) :].mean(1).min()))
    return out
