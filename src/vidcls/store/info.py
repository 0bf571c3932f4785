"""``vidcls info``: a store file (or a .npy of one video's features) described for humans."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import StoreError
from .reader import FeatureStore


def _npy_info(path: Path) -> str:
    """``vidcls info`` of one .npy: the (T, D) features of one video, as ``vidcls predict`` reads them."""
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        with open(path, "rb") as f:
            pickled = f.read(6) == b"\x93NUMPY"  # a valid header over Python objects (allow_pickle)
        what = (
            "holds Python objects, not numbers" if pickled else "is not a valid .npy file (no NumPy header)"
        )
        raise StoreError(
            f"{path} {what}; write one with numpy.save(path, features) where features is a (T, D) float array"
        ) from None
    shape = "x".join(str(n) for n in x.shape) or "a scalar"
    use = (
        "one video's features: vidcls predict RUN_DIR " + str(path)
        if x.ndim == 2
        else "not (T, D): vidcls predict reads a .npy as the (T, D) features of one video"
    )
    return "\n".join(
        [
            f"path:           {path}",
            "kind:           .npy array (not a feature store)",
            f"shape:          {shape} ({x.dtype})",
            f"use:            {use}",
        ]
    )


def store_info(path: str | os.PathLike) -> str:
    """Describe one store file for humans (``vidcls info``).

    Args:
        path: the .h5 store.

    Returns:
        Multi-line text: path, videos, per-class counts with percentages, frames per video
        (min/median/mean/p95/max and the longest video's id), total frames, feature dim, dtype,
        extractor JSON, format version.

    Raises:
        StoreError: the file is missing or invalid, or ``path`` is a directory (its .h5 files are listed).
    """
    if Path(path).is_dir():
        found = sorted(p.name for p in Path(path).glob("*.h5"))
        example = "train.h5" if "train.h5" in found else (found or [""])[0]
        listed = (
            f"the .h5 files in it: {', '.join(found)}; e.g. vidcls info {Path(path) / example}"
            if found
            else "it holds no .h5 file"
        )
        raise StoreError(f"{path} is a directory; `vidcls info` takes one .h5 feature file ({listed})")
    if Path(path).suffix.lower() == ".npy" and Path(path).is_file():
        return _npy_info(Path(path))
    # Skip the NaN scan: info should be instant even on large files (loading still validates it).
    s = FeatureStore(path, check_finite=False)
    n = len(s)
    counts = np.bincount(s.labels, minlength=len(s.class_names))
    lines = [f"path:           {s.path}", f"videos:         {n}", f"classes:        {len(s.class_names)}"]
    width = max(len(c) for c in s.class_names)
    for name, c in zip(s.class_names, counts, strict=False):  # counts: at least one per class
        pct = 100.0 * c / n if n else 0.0
        lines.append(f"  {name:<{width}}: {int(c)} ({pct:.1f}%)")
    if n:
        lines += _length_lines(s)
    lines += [
        f"total frames:   {int(s.offsets[-1])}",
        f"feature dim:    {s.feature_dim}",
        f"dtype:          {s.dtype}",
        f"extractor:      {json.dumps(s.extractor)}",
        f"format version: {s.format_version}",
    ]
    return "\n".join(lines)


def _length_lines(s: FeatureStore) -> list[str]:
    """Frames per video: the spread, and which video is longest.

    One very long video sets the padded batch size (and memory) during training, so the tail of
    the distribution matters more than the mean. p95 is an actual video length: 95 % of the
    videos have at most that many frames.
    """
    lengths = s.lengths
    longest = int(np.argmax(lengths))
    p95 = int(np.percentile(lengths, 95, method="inverted_cdf"))
    return [
        (
            f"frames/video:   min {int(lengths.min())}, median {np.median(lengths):.1f}, "
            f"mean {lengths.mean():.1f}, p95 {p95}, max {int(lengths.max())}"
        ),
        f"longest video:  {s.video_ids[longest]!r} ({int(lengths[longest])} frames)",
    ]
