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

Symbolic links: a link to a video file is read like the file (and deduplicated by content). A link
to a folder inside a class folder is followed only if it leads into that same class folder (its
videos would otherwise get this class's label) and to a folder not scanned yet (by real path, so
links can neither loop nor count a video twice); class folders that are links are scanned after
the plain ones. Every link not followed is listed in ``VideoSet.skipped_links`` with its reason.

A CSV of videos and their labels (``extract --labels``) replaces the layout: see ``labels_csv``.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ExtractError
from ..store.reader import SPLITS
from ..store.split import stratified_split
from ..utils.fs import sha256_file
from .video import VIDEO_EXTENSIONS

LAYOUT_HINT = "expected VIDEO_ROOT/<class>/<video> or VIDEO_ROOT/{train,val,test}/<class>/<video>"
LINK_REASONS = {  # code -> what it means; every folder link not followed carries one
    "link_outside_class": "a folder link leading out of its class folder (its videos would get that "
    "class's label)",
    "link_loop": "a folder link to a folder that holds it (a loop)",
    "link_seen": "a second path to a folder already scanned (its videos count once)",
}


@dataclass
class VideoJob:
    """One file found under VIDEO_ROOT. ``split`` is None until assigned; ``label`` indexes the
    class names. From a labels CSV, ``label_set`` holds the indices of all its labels (sorted) and
    ``label`` is the rarest of them, which the split is stratified by."""

    path: Path
    rel: str
    class_name: str
    split: str | None = None
    label: int = -1
    video_id: str = ""
    size: int = 0
    label_set: list[int] = field(default_factory=list)


@dataclass
class VideoSet:
    """What ``scan_videos`` found.

    Attributes:
        root: VIDEO_ROOT. layout: "splits" or "classes" (folders), "csv-splits" or "csv" (a labels
            CSV with or without a split column). class_names: sorted.
        jobs: the videos to extract, ordered by split then path.
        skipped: (job, reason code, message) for files rejected before decoding.
        duplicates: one dict per group of byte-identical files.
        ignored: files and folders outside the layout (not reported as videos).
        skipped_links: folders not scanned, one dict each: path (relative to root), target (its
            real path), reason (a key of LINK_REASONS), detail (message).
        multilabel: videos carry label sets (only from a labels CSV). labels_csv: that CSV, or None.
    """

    root: Path
    layout: str
    class_names: list[str]
    jobs: list[VideoJob]
    skipped: list[tuple[VideoJob, str, str]] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    skipped_links: list[dict] = field(default_factory=list)
    multilabel: bool = False
    labels_csv: str | None = None

    @property
    def splits_given(self) -> bool:
        """Whether the input names each video's split (split folders or a split column)."""
        return self.layout in ("splits", "csv-splits")


def parse_split(split: str | Sequence[float | str]) -> tuple[float, float, float]:
    """``"70,20,10"`` (or a sequence) -> train/val/test shares summing to 1.

    Raises:
        ConfigError: not 2 or 3 non-negative numbers, or no train share.
    """
    parts = [p for p in split.split(",")] if isinstance(split, str) else list(split)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) == 2:
        values.append(0.0)
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or values[0] <= 0:
        raise ConfigError(
            f"--split must be train,val[,test] shares such as 70,20,10 with a "
            f"positive train share, got {split!r}"
        )
    total = sum(values)
    train, val, test = (v / total for v in values)
    return train, val, test


def scan_videos(
    root: str | os.PathLike,
    *,
    split: str | Sequence[float | str] = "70,20,10",
    seed: int = 42,
    find_duplicates: bool = True,
) -> VideoSet:
    """Find the videos under ``root``, give them ids, labels and splits, and drop duplicates.

    Args:
        root: VIDEO_ROOT.
        split: train,val,test shares for the class layout (ignored when splits are given).
        seed: seed of the stratified split.
        find_duplicates: hash files of equal size to find byte-identical copies.

    Returns:
        VideoSet.

    Raises:
        ExtractError: ``root`` missing or not in one of the two layouts, or holding no video.
        ConfigError: ``split`` is not a valid list of shares.
    """
    root = Path(root)
    if not root.is_dir():
        raise ExtractError(f"VIDEO_ROOT {root} is not a directory; {LAYOUT_HINT}")
    shares = parse_split(split)
    layout, jobs, ignored, skipped_links = _collect(root)
    vs = VideoSet(root, layout, [], [], ignored=ignored, skipped_links=skipped_links)
    vs.class_names = sorted({j.class_name for j in jobs if j.path.suffix.lower() in VIDEO_EXTENSIONS})
    if not vs.class_names:
        raise ExtractError(
            f"no video files under {root} (extensions: {', '.join(sorted(VIDEO_EXTENSIONS))}); {LAYOUT_HINT}"
        )
    labels = {c: i for i, c in enumerate(vs.class_names)}
    for job in jobs:
        job.label = labels.get(job.class_name, -1)
    candidates = check_files(vs, jobs)
    _assign_ids(jobs)
    settle(vs, candidates, shares=shares, seed=seed, find_duplicates=find_duplicates)
    return vs


def settle(
    vs: VideoSet,
    candidates: list[VideoJob],
    *,
    shares: tuple[float, float, float],
    seed: int,
    find_duplicates: bool,
) -> None:
    """Drop byte-identical copies (into ``vs.skipped`` and ``vs.duplicates``), split the rest with
    ``shares`` and ``seed`` unless the input gives splits, and set ``vs.jobs`` (by split, then path)."""
    groups = _identical_groups(candidates) if find_duplicates else []
    candidates = _drop_duplicates(vs, candidates, groups)
    if not vs.splits_given:
        _split_stratified(candidates, shares, seed)
    rank: dict[str | None, int] = {s: i for i, s in enumerate(SPLITS)}  # every kept video has a split
    vs.jobs = sorted(candidates, key=lambda job: (rank[job.split], job.rel))


def check_files(vs: VideoSet, jobs: list[VideoJob], remove_hint: str | None = None) -> list[VideoJob]:
    """The jobs that can be videos; the others (unreadable, other extension, empty) go to
    ``vs.skipped`` (a wrong extension's message ends "move it out of VIDEO_ROOT", or
    ``remove_hint``). Sets every returned job's ``size``."""
    candidates = []
    for job in jobs:
        try:
            job.size = job.path.stat().st_size
        except OSError as err:  # a dangling symlink, or a file deleted while scanning
            vs.skipped.append(
                (job, "unreadable", f"{job.path}: cannot be read ({err.strerror}); fix the link or remove it")
            )
            continue
        if job.path.suffix.lower() not in VIDEO_EXTENSIONS:
            vs.skipped.append(
                (
                    job,
                    "not_video",
                    f"{job.path}: not a video file name (extension "
                    f"{job.path.suffix or 'none'}); {remove_hint or f'move it out of {vs.root}'}",
                )
            )
        elif job.size == 0:
            vs.skipped.append(
                (job, "empty", f"{job.path}: empty file (0 bytes); re-download it or remove it")
            )
        else:
            candidates.append(job)
    return candidates


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class _Walker:
    """Lists the files of class folders; follows a folder link only within its class folder and
    never into a folder already listed (see the module docstring)."""

    def __init__(self, root: Path):
        self.root, self.root_real = root, os.path.realpath(root)
        self.seen: dict[str, str] = {}  # real path of every folder listed -> its path under root
        self.skipped_links: list[dict] = []

    def class_files(self, class_dir: Path) -> list[Path]:
        """The visible files under ``class_dir`` at any depth: each folder's files sorted, then its
        sub-folders in name order; followed links last."""
        real = os.path.realpath(class_dir)
        if class_dir.is_symlink() and _inside(self.root_real, real):
            self._skip(class_dir, real, "link_loop")  # a class folder that holds VIDEO_ROOT
            return []
        if real in self.seen:
            self._skip(class_dir, real, "link_seen")
            return []
        files: list[Path] = []
        links: list[Path] = []
        self._walk(class_dir, files, links)
        while links:
            link = links.pop(0)
            target = os.path.realpath(link)
            if not _inside(target, real):
                self._skip(link, target, "link_outside_class", class_dir)
            elif target in self.seen:
                holds_link = _inside(os.path.realpath(link.parent), target)
                self._skip(link, target, "link_loop" if holds_link else "link_seen")
            else:
                self._walk(link, files, links)
        return files

    def _walk(self, top: Path, files: list[Path], links: list[Path]) -> None:
        """Add the files under ``top`` to ``files`` and the folder links found to ``links``."""
        for dirpath, dirnames, filenames in os.walk(top):  # does not follow links below top
            self.seen[os.path.realpath(dirpath)] = self._rel(Path(dirpath))
            keep = []
            for name in sorted(d for d in dirnames if not d.startswith(".")):
                sub = Path(dirpath) / name
                if sub.is_symlink():
                    links.append(sub)
                elif os.path.realpath(sub) in self.seen:  # below a followed link: listed before
                    self._skip(sub, os.path.realpath(sub), "link_seen")
                else:
                    keep.append(name)
            dirnames[:] = keep
            files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _skip(self, path: Path, target: str, reason: str, class_dir: Path | None = None) -> None:
        rel = self._rel(path)
        if reason == "link_outside_class":
            assert class_dir is not None  # given with this reason
            detail = (
                f"{rel} links to {target}, outside its class folder {self._rel(class_dir)}, "
                f"so its videos would be labelled {class_dir.name}: not followed. Move or copy "
                f"that folder into {self._rel(class_dir)}, or link the video files themselves"
            )
        elif reason == "link_loop":
            detail = f"{rel} links to {target}, which holds the link (a loop): not followed; remove it"
        else:
            detail = (
                f"{rel} leads to {target}, already scanned as {self.seen.get(target, '?')}: "
                f"not scanned again, so its videos count once; remove the link to silence this"
            )
        self.skipped_links.append({"path": rel, "target": target, "reason": reason, "detail": detail})


def _collect(root: Path) -> tuple[str, list[VideoJob], list[str], list[dict]]:
    """(layout, one job per file, ignored paths, folder links not followed)."""
    dirs = _subdirs(root)
    split_dirs = [d for d in dirs if d.name in SPLITS]
    others = [d.name for d in dirs if d.name not in SPLITS]
    if split_dirs and others:
        raise ExtractError(
            f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) "
            f"with other folders ({', '.join(others[:5])}); {LAYOUT_HINT}"
        )
    ignored = [str(p.relative_to(root)) for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    layout = "splits" if split_dirs else "classes"
    bases = [(d.name, d) for d in split_dirs] if split_dirs else [(None, root)]
    class_dirs = []
    for split, base in bases:
        if split is not None:
            ignored += [
                str(p.relative_to(root)) for p in base.iterdir() if p.is_file() and not p.name.startswith(".")
            ]
        class_dirs += [(split, d) for d in _subdirs(base)]
    walker = _Walker(root)
    # plain class folders first, so that a link to one of them is the path reported as skipped
    files = {
        i: walker.class_files(d)
        for i, (_, d) in sorted(enumerate(class_dirs), key=lambda item: item[1][1].is_symlink())
    }
    jobs = [
        VideoJob(path, path.relative_to(root).as_posix(), class_dir.name, split=split)
        for i, (split, class_dir) in enumerate(class_dirs)
        for path in files[i]
    ]
    return layout, jobs, sorted(ignored), walker.skipped_links


def _assign_ids(jobs: list[VideoJob]) -> None:
    """``<class>/<path without extension>``; keep the extension where two files would collide."""

    def under_class(job: VideoJob) -> str:
        parts = job.rel.split("/")
        return "/".join(parts[2:] if job.split and parts[0] == job.split else parts[1:])

    stems: dict[tuple, list[VideoJob]] = defaultdict(list)
    for job in jobs:
        rel = under_class(job)
        stem = rel[: -len(job.path.suffix)] if job.path.suffix else rel
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


def _drop_duplicates(
    vs: VideoSet, jobs: list[VideoJob], groups: list[tuple[str, list[VideoJob]]]
) -> list[VideoJob]:
    """Keep each group's first file (earliest split, then path); drop copies in other splits
    (with the class layout, before splitting: every other copy). Record every group."""
    rank: dict[str | None, int] = {s: i for i, s in enumerate(SPLITS)}  # split None: not split yet
    dropped: set[int] = set()
    for sha, group in groups:
        group = sorted(group, key=lambda j: (rank.get(j.split, -1), j.rel))
        keep = group[0]
        gone: list[str] = []
        also_kept: list[str] = []
        entry = {"sha256": sha, "kept": keep.rel, "dropped": gone, "also_kept": also_kept}
        for job in group[1:]:
            if vs.splits_given and job.split == keep.split:
                also_kept.append(job.rel)  # a copy within one split is no leakage
                continue
            gone.append(job.rel)
            dropped.add(id(job))
            conflict = (
                f"; note the classes differ ({keep.class_name} vs {job.class_name})"
                if keep.class_name != job.class_name
                else ""
            )
            vs.skipped.append(
                (
                    job,
                    "duplicate",
                    f"{job.path}: byte-identical to {keep.rel}, "
                    f"which is kept{conflict}; remove one copy to silence this",
                )
            )
        vs.duplicates.append(entry)
    return [j for j in jobs if id(j) not in dropped]


def _split_stratified(jobs: list[VideoJob], shares: tuple[float, float, float], seed: int) -> None:
    """Assign train/val/test per class (``label``) with ``stratified_split`` (test first, then val)."""
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
