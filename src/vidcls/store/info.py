"""``vidcls info``: a store file (or a .npy of one video's features) described for humans."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import StoreError
from .reader import FeatureStore

_SHOW_MOST, _SHOW_LEAST = 20, 5  # above this many classes, list only the most and least frequent


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
        Multi-line text: path, videos, task (single-label / multi-label), labels per video
        (mean/min/max: the label cardinality), per-class counts (videos carrying the class) with
        percentages (above 25 classes only the 20 most and 5 least frequent), frames per video
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
    lines = [f"path:           {s.path}", f"videos:         {n}"]
    lines += _label_lines(s)
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


def _label_lines(s: FeatureStore) -> list[str]:
    """Task, label cardinality and per-class counts (videos carrying each class).

    In a multi-label store a video counts once for every class of its set, so the percentages
    add up to the mean labels per video x 100.
    """
    n, k = len(s), len(s.class_names)
    sizes = np.diff(s._set_offsets)
    counts = np.bincount(s._set_flat[: s._set_offsets[-1]], minlength=k)
    spread = f"mean {sizes.mean():.2f}, min {int(sizes.min())}, max {int(sizes.max())}" if n else "no videos"
    lines = [
        f"task:           {'multi-label' if s.multilabel else 'single-label'}",
        f"labels/video:   {spread}",
        f"classes:        {k}",
    ]
    shown = list(range(k))
    if k > _SHOW_MOST + _SHOW_LEAST:
        order = sorted(range(k), key=lambda c: (-int(counts[c]), c))  # most frequent first, then index
        shown = order[:_SHOW_MOST] + order[-_SHOW_LEAST:]
        lines[-1] += (
            f" (listed: the {_SHOW_MOST} most and {_SHOW_LEAST} least frequent; {k - len(shown)} not shown)"
        )
    width = max(len(s.class_names[c]) for c in shown)
    for j, c in enumerate(shown):
        if j == _SHOW_MOST and len(shown) < k:
            lines.append(f"  ... ({k - len(shown)} classes not shown)")
        pct = 100.0 * counts[c] / n if n else 0.0
        lines.append(f"  {s.class_names[c]:<{width}}: {int(counts[c])} ({pct:.1f}%)")
    return lines


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
