"""The window a run's model was trained on: the typical length of its training videos.

``vidcls predict --segments`` (and ``Predictor.predict_segments``) slides windows of this length by
default, so that each window looks like what the model learned from. It is recorded in every
checkpoint as ``"window": {"frames": F, "seconds": S}``:

- ``frames``: the median stored length of the training videos (frames as stored, before the run's
  ``max_frames`` thins them);
- ``seconds``: the median time they span, from the stored timestamps (first to last frame plus one
  frame period), or ``frames / fps`` when the store has no timestamps but the extractor sampled at a
  rate; None when neither is known (imported features without timestamps).

A video's span, not its frame count, is what carries over to a new video: an extraction that thinned
long videos to ``max_frames`` frames stores 64 frames whether the video lasted 1 or 10 minutes.
"""

from __future__ import annotations

import numpy as np

from ..utils.sampling import uniform_indices
from .dataset import FeatureDataset

MAX_VIDEOS = 2000  # the median of this many videos (spread over the split) is as good as of all


def _rate(extractor: dict) -> float | None:
    sampling = extractor.get("sampling") or {}
    fps = sampling.get("fps") if sampling.get("mode", "fps") == "fps" else None
    return float(fps) if fps else None


def typical_window(train: FeatureDataset, extractor: dict) -> dict:
    """``{"frames": int, "seconds": float | None}`` of the training split (see the module docstring)."""
    store = train.store
    indices = np.asarray(train.indices)
    frames = int(np.median(store.lengths[indices])) if len(indices) else 0
    fps = _rate(extractor)
    spans = []
    for i in indices[uniform_indices(len(indices), MAX_VIDEOS)] if len(indices) else []:
        ts = store.timestamps(int(i))
        if ts is None:
            break
        if len(ts):
            step = 1000.0 / fps if fps else (float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0)
            spans.append((float(ts[-1]) - float(ts[0]) + step) / 1000.0)
    if spans:
        seconds: float | None = float(np.median(spans))
    else:
        seconds = frames / fps if fps and frames else None
    return {"frames": max(1, frames), "seconds": None if seconds is None else round(seconds, 3)}
