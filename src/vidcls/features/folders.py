"""The videos of a dataset folder: layout, classes, video ids, train/val/test split, duplicates.

Two layouts (hidden files and folders, names starting with ".", are ignored):

    VIDEO_ROOT/{train,val,test}/<class>/<video>    splits given
    VIDEO_ROOT/<class>/<video>                      split here: stratified per class, seeded

A class folder may hold sub-folders. The video id is ``<class>/<path under the class folder
without extension>`` (``cats/indoor/clip01``): unique within a split and the same on every run.
Two files that differ only in extension (``clip01.mp4``, ``clip01.mkv``) keep their extension in
the id. Class names are the class folders that hold at least one video file, sorted.

Byte-identical files (same size, then same sha256; only files whose size collides are hashed)
are kept once: in the earliest split (train, val, test), the others reported as duplicates. With
the class layout they are removed before splitting, so no copy can land in a second split.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..store.reader import SPLITS
from ..store.split import stratified_split
from ..utils.fs import sha256_file
from .video import VIDEO_EXTENSIONS

LAYOUT_HINT = ("expected VIDEO_ROOT/<class>/<video> or VIDEO_ROOT/{train,val,test}/<class>/<video>")


@dataclass
class VideoJob:
    """One file found under VIDEO_ROOT. ``split`` is None until assigned; ``label`` indexes the
    class names."""

    path: Path
    rel: str
    class_name: str
    split: str | None = None
    label: int = -1
    video_id: str = ""
    size: int = 0


@dataclass
class VideoSet:
    """What ``scan_videos`` found.

    Attributes:
        root: VIDEO_ROOT. layout: "splits" or "classes". class_names: sorted.
        jobs: the videos to extract, ordered by split then path.
        skipped: (job, reason code, message) for files rejected before decoding.
        duplicates: one dict per group of byte-identical files.
        ignored: files and folders outside the layout (not reported as videos).
    """

    root: Path
    layout: str
    class_names: list[str]
    jobs: list[VideoJob]
    skipped: list[tuple[VideoJob, str, str]] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def parse_split(split) -> tuple[float, float, float]:
    """``"70,20,10"`` (or a sequence) -> train/val/test shares summing to 1.

    Raises:
        ValueError: not 2 or 3 non-negative numbers, or no train share.
    """
    parts = [p for p in split.split(",")] if isinstance(split, str) else list(split)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) == 2:
        values.append(0.0)
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or values[0] <= 0:
        raise ValueError(f"--split must be train,val[,test] shares such as 70,20,10 with a "
                         f"positive train share, got {split!r}")
    total = sum(values)
    return tuple(v / total for v in values)


def scan_videos(root: str | os.PathLike, *, split="70,20,10", seed: int = 42,
                find_duplicates: bool = True) -> VideoSet:
    """Find the videos under ``root``, give them ids, labels and splits, and drop duplicates.

    Args:
        root: VIDEO_ROOT.
        split: train,val,test shares for the class layout (ignored when splits are given).
        seed: seed of the stratified split.
        find_duplicates: hash files of equal size to find byte-identical copies.

    Returns:
        VideoSet.

    Raises:
        ValueError: ``root`` missing or not in one of the two layouts, or holding no video.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"VIDEO_ROOT {root} is not a directory; {LAYOUT_HINT}")
    shares = parse_split(split)
    layout, jobs, ignored = _collect(root)
    vs = VideoSet(root, layout, [], [], ignored=ignored)
    vs.class_names = sorted({j.class_name for j in jobs if j.path.suffix.lower() in VIDEO_EXTENSIONS})
    if not vs.class_names:
        raise ValueError(f"no video files under {root} (extensions: "
                         f"{', '.join(sorted(VIDEO_EXTENSIONS))}); {LAYOUT_HINT}")
    labels = {c: i for i, c in enumerate(vs.class_names)}
    candidates = []
    for job in jobs:
        job.label = labels.get(job.class_name, -1)
        try:
            job.size = job.path.stat().st_size
        except OSError as err:  # a dangling symlink, or a file deleted while scanning
            vs.skipped.append((job, "unreadable", f"{job.path}: cannot be read ({err.strerror}); "
                                                  f"fix the link or remove it"))
            continue
        if job.path.suffix.lower() not in VIDEO_EXTENSIONS:
            vs.skipped.append((job, "not_video", f"{job.path}: not a video file name (extension "
                               f"{job.path.suffix or 'none'}); move it out of {root}"))
        elif job.size == 0:
            vs.skipped.append((job, "empty", f"{job.path}: empty file (0 bytes); re-download it "
                                             f"or remove it"))
        else:
            candidates.append(job)
    _assign_ids(jobs)
    groups = _identical_groups(candidates) if find_duplicates else []
    candidates = _drop_duplicates(vs, candidates, groups)
    if layout == "classes":
        _split_stratified(candidates, shares, seed)
    rank = {s: i for i, s in enumerate(SPLITS)}
    vs.jobs = sorted(candidates, key=lambda j: (rank[j.split], j.rel))
    return vs


def _visible_files(folder: Path) -> list[Path]:
    """Files under ``folder`` at any depth, sorted, skipping hidden files and folders."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _collect(root: Path) -> tuple[str, list[VideoJob], list[str]]:
    """(layout, one job per file, ignored paths)."""
    dirs = _subdirs(root)
    split_dirs = [d for d in dirs if d.name in SPLITS]
    others = [d.name for d in dirs if d.name not in SPLITS]
    if split_dirs and others:
        raise ValueError(f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) "
                         f"with other folders ({', '.join(others[:5])}); {LAYOUT_HINT}")
    ignored = [str(p.relative_to(root)) for p in root.iterdir()
               if p.is_file() and not p.name.startswith(".")]
    layout = "splits" if split_dirs else "classes"
    bases = [(d.name, d) for d in split_dirs] if split_dirs else [(None, root)]
    jobs = []
    for split, base in bases:
        if split is not None:
            ignored += [str(p.relative_to(root)) for p in base.iterdir()
                        if p.is_file() and not p.name.startswith(".")]
        for class_dir in _subdirs(base):
            for path in _visible_files(class_dir):
                jobs.append(VideoJob(path, path.relative_to(root).as_posix(), class_dir.name,
                                     split=split))
    return layout, jobs, sorted(ignored)


def _assign_ids(jobs: list[VideoJob]) -> None:
    """``<class>/<path without extension>``; keep the extension where two files would collide."""
    def under_class(job: VideoJob) -> str:
        parts = job.rel.split("/")
        return "/".join(parts[2:] if job.split and parts[0] == job.split else parts[1:])

    stems: dict[tuple, list[VideoJob]] = defaultdict(list)
    for job in jobs:
        rel = under_class(job)
        stem = rel[:-len(job.path.suffix)] if job.path.suffix else rel
        stems[(job.split, job.class_name, stem)].append(job)
    for (_, class_name, stem), same in stems.items():
        for job in same:
            job.video_id = f"{class_name}/{stem if len(same) == 1 else under_class(job)}"


def _identical_groups(jobs: list[VideoJob]) -> list[tuple[str, list[VideoJob]]]:
    """(sha256, files) for groups (>= 2) of byte-identical files; only files whose size
    collides with another's are hashed."""
    by_size: dict[int, list[VideoJob]] = defaultdict(list)
    for job in jobs:
        by_size[job.size].append(job)
    groups = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_hash: dict[str, list[VideoJob]] = defaultdict(list)
        for job in same_size:
            try:
                by_hash[sha256_file(job.path)].append(job)
            except OSError:  # unreadable: the decode step reports it
                continue
        groups += [(h, g) for h, g in by_hash.items() if len(g) >= 2]
    return groups


def _drop_duplicates(vs: VideoSet, jobs: list[VideoJob], groups) -> list[VideoJob]:
    """Keep each group's first file (earliest split, then path); drop copies in other splits
    (with the class layout, before splitting: every other copy). Record every group."""
    rank = {s: i for i, s in enumerate(SPLITS)}
    dropped: set[int] = set()
    for sha, group in groups:
        group = sorted(group, key=lambda j: (rank.get(j.split, -1), j.rel))
        keep = group[0]
        entry = {"sha256": sha, "kept": keep.rel, "dropped": [], "also_kept": []}
        for job in group[1:]:
            if vs.layout == "splits" and job.split == keep.split:
                entry["also_kept"].append(job.rel)  # a copy within one split is no leakage
                continue
            entry["dropped"].append(job.rel)
            dropped.add(id(job))
            conflict = (f"; note the classes differ ({keep.class_name} vs {job.class_name})"
                        if keep.class_name != job.class_name else "")
            vs.skipped.append((job, "duplicate", f"{job.path}: byte-identical to {keep.rel}, "
                               f"which is kept{conflict}; remove one copy to silence this"))
        vs.duplicates.append(entry)
    return [j for j in jobs if id(j) not in dropped]


def _split_stratified(jobs: list[VideoJob], shares: tuple, seed: int) -> None:
    """Assign train/val/test per class with ``stratified_split`` (test first, then val)."""
    _, val_share, test_share = shares
    labels = np.array([j.label for j in jobs], np.int64)
    rest, test = np.arange(len(jobs)), np.zeros(0, np.int64)
    if test_share > 0 and len(jobs) > 1:
        rest, test = stratified_split(labels, test_share, seed)
    train, val = rest, np.zeros(0, np.int64)
    if val_share > 0 and len(rest) > 1:
        tr, va = stratified_split(labels[rest], val_share / (1 - test_share), seed + 1)
        train, val = rest[tr], rest[va]
    for name, idx in (("train", train), ("val", val), ("test", test)):
        for i in idx:
            jobs[int(i)].split = name
