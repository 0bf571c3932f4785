"""Synthetic feature stores shaped like the real problem, for the demo, tests and benchmarks.

Each video is a sequence of frame features that moves from one "scene" prototype to another. The
classes come in pairs that use the same two scenes in opposite order (animation A->B, gaming B->A;
natural C->D, flat D->C), with the switch point anywhere between 30 % and 70 % of the video. An
order-blind model sees the same frame distribution for both classes of a pair and can only use a weak
per-class offset; a temporal model can read the order. Classes are imbalanced like the real data.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from ..errors import ConfigError
from .reader import SPLITS
from .split import stratified_split
from .writer import write_store

DEFAULT_CLASSES = ["animation", "gaming", "natural", "flat"]
DEFAULT_SHARES = [0.45, 0.25, 0.20, 0.10]
FRAME_NOISE = 0.3  # per-dimension noise of one frame
VIDEO_NOISE = 0.05  # per-dimension offset shared by the frames of one video
STATIC_SIGNAL = 0.005  # per-dimension std of the weak order-free class signature


def class_layout(n_classes: int) -> tuple[list[str], np.ndarray]:
    """Names and shares of ``n_classes`` classes (the spec's four first, then ``class_4``...)."""
    if n_classes < 2:
        raise ConfigError(f"--classes must be >= 2, got {n_classes}")
    names = (DEFAULT_CLASSES + [f"class_{i}" for i in range(4, n_classes)])[:n_classes]
    if n_classes == 4:
        shares = np.array(DEFAULT_SHARES)
    else:  # the same kind of imbalance: linearly falling shares
        shares = np.linspace(2.0, 0.5, n_classes)
    return names, shares / shares.sum()


def _video(
    rng: np.random.Generator,
    label: int,
    n_frames: int,
    scenes: np.ndarray,
    signatures: np.ndarray,
    base: np.ndarray,
) -> np.ndarray:
    pair = label // 2 % (len(scenes) // 2)
    first, second = scenes[2 * pair], scenes[2 * pair + 1]
    if label % 2:  # the odd class of each pair plays the scenes in reverse order
        first, second = second, first
    switch = rng.uniform(0.3, 0.7) * n_frames
    t = np.arange(n_frames)[:, None]
    w = 1.0 / (1.0 + np.exp(-(t - switch) / max(n_frames / 30, 0.5)))  # (T, 1) smooth scene change
    frames = (1 - w) * first + w * second  # (T, D)
    frames = frames + base + signatures[label] + rng.normal(0, VIDEO_NOISE, base.shape)
    frames += rng.normal(0, FRAME_NOISE, frames.shape)
    return frames.astype(np.float32)


GENERATOR = "vidcls synth"


def _check_room(out: Path, size: float) -> None:
    """Refuse sizes that cannot fit on the disk before any allocation (a typo of --videos, say)."""
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(parent).free if parent.is_dir() else float("inf")
    if size > free:
        raise ConfigError(
            f"the store would take about {size / 2**30:.1f} GiB but {parent} has "
            f"{free / 2**30:.1f} GiB free; lower --videos, --dim or --max-frames"
        )


def _check_not_real(out: Path) -> None:
    """A split file there that synth did not write (extracted or imported features) is never replaced."""
    for split in SPLITS:
        path = out / f"{split}.h5"
        if not path.exists():
            continue
        try:
            with h5py.File(path, "r") as f:
                generator = json.loads(f.attrs.get("extractor", "{}")).get("generator")
        except (OSError, ValueError, AttributeError):
            generator = None
        if generator != GENERATOR:
            raise ConfigError(
                f"{path} holds features vidcls synth did not write; they are left alone: "
                f"choose another OUT_DIR for the synthetic store"
            )


def make_synthetic(
    out_dir: str | os.PathLike,
    *,
    videos: int = 600,
    classes: int = 4,
    dim: int = 1280,
    min_frames: int = 16,
    max_frames: int = 96,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[str, Path]:
    """Write ``train.h5``, ``val.h5``, ``test.h5`` (stratified 70/15/15) into ``out_dir``.

    Returns:
        ``{split: path}``.
    Raises:
        ValueError: sizes that cannot make a usable data set.
    """
    if videos < 10 * classes:
        raise ConfigError(f"--videos must be at least 10 per class ({10 * classes}), got {videos}")
    if not 1 <= min_frames <= max_frames:
        raise ConfigError(f"need 1 <= --min-frames <= --max-frames, got {min_frames}, {max_frames}")
    if dim < 2:
        raise ConfigError(f"--dim must be >= 2, got {dim}")
    out = Path(out_dir)
    _check_room(out, videos * (min_frames + max_frames) / 2 * dim * 2)  # float16 frames
    _check_not_real(out)
    rng = np.random.default_rng(seed)
    names, shares = class_layout(classes)
    n_pairs = (classes + 1) // 2
    scenes = rng.normal(0.0, 0.1, (2 * n_pairs, dim))
    signatures = rng.normal(0.0, STATIC_SIGNAL, (classes, dim))
    base = np.abs(rng.normal(0.0, 0.3, dim))  # CNN features after SiLU + pooling are mostly positive
    counts = np.maximum(np.round(shares * videos).astype(int), 10)
    counts[0] += videos - counts.sum()
    labels = rng.permutation(np.repeat(np.arange(classes), counts))
    rest_idx, test_idx = stratified_split(labels, test_fraction, seed)
    train_idx, val_idx = stratified_split(labels[rest_idx], val_fraction / (1 - test_fraction), seed + 1)
    parts = {"train": rest_idx[train_idx], "val": rest_idx[val_idx], "test": test_idx}
    extractor = {"backbone": "synthetic", "weights": None, "generator": GENERATOR, "seed": seed}
    paths: dict[str, Path] = {}
    for split, idx in parts.items():

        def gen(idx: np.ndarray = idx, split: str = split) -> Iterator[tuple[str, np.ndarray, int]]:
            for i in sorted(idx):
                n_frames = int(rng.integers(min_frames, max_frames + 1))
                yield (
                    f"{split}_{i:05d}",
                    _video(rng, int(labels[i]), n_frames, scenes, signatures, base),
                    int(labels[i]),
                )

        paths[split] = write_store(out / f"{split}.h5", gen(), names, dim, extractor)
    return paths
