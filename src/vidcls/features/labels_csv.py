"""``vidcls extract --labels CSV``: the videos and their labels from a CSV, not from class folders.

The CSV is UTF-8 text with a header row (comma-separated, quoted as by Python's ``csv`` module)::

    video,label,split
    clips/a01.mp4,dog,train
    clips/a02.mp4,outdoor|dog|music,val

Columns, found by their header name (any order, any case): ``video`` (or ``path``, or
``video_path``), the file relative to VIDEO_ROOT (neither absolute nor leading out of it with
``..``); ``label``, one label or several separated by ``|`` (``vidcls.store.labels.LABEL_SEP``);
and, optionally, ``split``: train, val or test. Without a split column the videos are split as with
the class folder layout (``--split`` shares, ``--seed``, stratified by label; a video with several
labels counts under its rarest one, so that rare labels reach val and test too).

The store is multi-label when any row lists more than one label, else single-label, exactly as a
folder layout gives. Class names: every label in the CSV, sorted. Video id: the path without its
extension (with it where two listed files differ only in extension). A listed file that does not
exist is recorded as skipped ("unreadable"), like a dangling link in a folder layout, and tried
again by the next run; files under VIDEO_ROOT that the CSV does not list are not extracted.
Byte-identical files are kept once, as with folders.

The whole CSV is checked before anything is written: every problem (header, cell count, path,
a video listed twice, label set, split) is a one-line error naming the CSV line.
"""

from __future__ import annotations

import csv
import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import ExtractError
from ..store.labels import LABEL_SEP, parse_label_set
from ..store.reader import SPLITS, FeatureStore
from .folders import VideoJob, VideoSet, check_files, parse_split, settle

VIDEO_COLUMNS = ("video", "path", "video_path")  # accepted names of the first column
COLUMNS = {**{name: "video" for name in VIDEO_COLUMNS}, "label": "label", "split": "split"}
HEADER_HINT = (
    f"the header must be video,label[,split] (the first column may be called {' or '.join(VIDEO_COLUMNS)})"
)


@dataclass(frozen=True)
class LabelRow:
    """One video of a labels CSV: its line, path relative to VIDEO_ROOT (normalised), labels (as
    given) and split (None without a split column)."""

    line: int
    rel: str
    labels: list[str]
    split: str | None


def read_labels_csv(path: str | os.PathLike) -> tuple[list[LabelRow], bool]:
    """Read and check a labels CSV (see the module docstring).

    Returns:
        (the rows in file order, whether the CSV has a split column).

    Raises:
        ExtractError: the file is unreadable, or a header, path, split or duplicate problem; the
            message names the line.
        StoreError: a bad label set (empty, "a||b", a label twice), naming the line.
    """
    path, prev_line = Path(path), 0
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            columns, rows = None, []
            for cells in reader:
                line, prev_line = prev_line + 1, reader.line_num  # a quoted cell may span lines
                if not any(c.strip() for c in cells):
                    continue
                if columns is None:
                    columns = _header(path, line, cells)
                else:
                    rows.append(_row(path, line, cells, columns))
    except FileNotFoundError:
        raise ExtractError(f"--labels {path}: no such file; give the CSV of videos and labels") from None
    except UnicodeDecodeError as err:
        raise ExtractError(f"--labels {path}: not UTF-8 text ({err}); save it as UTF-8 CSV") from None
    except csv.Error as err:
        raise ExtractError(
            f"{path} line {prev_line + 1}: not valid CSV ({err}); save it as UTF-8 CSV"
        ) from None
    except OSError as err:
        raise ExtractError(
            f"--labels {path}: cannot be read ({err.strerror}); check its permissions"
        ) from None
    if columns is None or not rows:
        raise ExtractError(f"--labels {path}: no videos listed; {HEADER_HINT}, then one row per video")
    first: dict[str, int] = {}
    for row in rows:
        if row.rel in first:
            raise ExtractError(
                f"{path} line {row.line}: video {row.rel!r} is listed twice (also line {first[row.rel]}); "
                f"give each video one row, with all its labels as a{LABEL_SEP}b"
            )
        first[row.rel] = row.line
    return rows, "split" in columns


def _header(path: Path, line: int, cells: list[str]) -> list[str]:
    """The column kinds ("video", "label", "split") of a header row."""
    names = [c.strip().lower() for c in cells]
    unknown = [c for c in names if c not in COLUMNS]
    if unknown:
        raise ExtractError(f"{path} line {line}: unknown column {unknown[0]!r}; {HEADER_HINT}")
    kinds = [COLUMNS[c] for c in names]
    twice = sorted({k for k in kinds if kinds.count(k) > 1})
    missing = [k for k in ("video", "label") if k not in kinds]
    if twice or missing:
        what = f"a second {twice[0]} column" if twice else f"no {missing[0]} column"
        raise ExtractError(f"{path} line {line}: {what} in header {','.join(cells)!r}; {HEADER_HINT}")
    return kinds


def _row(path: Path, line: int, cells: list[str], columns: list[str]) -> LabelRow:
    """One data row, checked."""
    where = f"{path} line {line}"
    if len(cells) != len(columns):
        raise ExtractError(
            f"{where}: {len(cells)} cells but the header has {len(columns)} ({','.join(columns)}); "
            f"quote a cell that holds a comma"
        )
    cell = dict(zip(columns, cells, strict=True))
    rel = _relative(where, cell["video"].strip())
    labels = parse_label_set(cell["label"], where=f"{where} (video {rel!r})")
    split = None
    if "split" in cell:
        split = cell["split"].strip().lower()
        if split not in SPLITS:
            raise ExtractError(
                f"{where}: split {cell['split']!r} for video {rel!r}; it must be {', '.join(SPLITS)}"
            )
    return LabelRow(line, rel, labels, split)


def _relative(where: str, text: str) -> str:
    """A video cell as a normalised path relative to VIDEO_ROOT."""
    if not text:
        raise ExtractError(f"{where}: empty video path; give the file's path relative to VIDEO_ROOT")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise ExtractError(f"{where}: video path {text!r} is absolute; give it relative to VIDEO_ROOT")
    rel = posixpath.normpath(text)
    if rel == ".." or rel.startswith("../"):
        raise ExtractError(
            f"{where}: video path {text!r} leads out of VIDEO_ROOT; give a path inside it (or "
            f"choose a VIDEO_ROOT that holds every video)"
        )
    if rel == ".":
        raise ExtractError(f"{where}: video path {text!r} is VIDEO_ROOT itself; give a video file")
    return rel


def scan_labelled_videos(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike,
    *,
    split: str | Sequence[float | str] = "70,20,10",
    seed: int = 42,
    find_duplicates: bool = True,
) -> VideoSet:
    """The videos listed in ``labels_csv``, with ids, label sets and splits, duplicates dropped.

    Args:
        root: VIDEO_ROOT; the CSV's paths are relative to it.
        labels_csv: the CSV (see the module docstring).
        split, seed: the stratified split when the CSV has no split column (else ignored).
        find_duplicates: hash files of equal size to find byte-identical copies.

    Returns:
        VideoSet with layout "csv-splits" (split column) or "csv"; ``multilabel`` when a row
        lists several labels.

    Raises:
        ExtractError: ``root`` is not a directory, a problem in the CSV (naming its line), or none
            of the listed files exists.
        StoreError: a bad label set in the CSV (naming its line).
        ConfigError: ``split`` is not a valid list of shares.
    """
    root = Path(root)
    if not root.is_dir():
        raise ExtractError(
            f"VIDEO_ROOT {root} is not a directory; the paths in --labels {labels_csv} start there"
        )
    shares = parse_split(split)
    rows, has_split = read_labels_csv(labels_csv)
    vs = VideoSet(root, "csv-splits" if has_split else "csv", [], [], labels_csv=str(labels_csv))
    vs.class_names = sorted({label for row in rows for label in row.labels})
    vs.multilabel = any(len(row.labels) > 1 for row in rows)
    jobs = _labelled_jobs(root, rows, vs.class_names)
    present = []
    for row, job in zip(rows, jobs, strict=True):
        if os.path.lexists(job.path):
            present.append(job)
        else:
            fix = f"fix the path or remove the row from {labels_csv}"
            vs.skipped.append((job, "unreadable", f"{job.path}: no such file (line {row.line}); {fix}"))
    if not present:
        raise ExtractError(
            f"no video listed in {labels_csv} exists under VIDEO_ROOT {root} (the first of {len(rows)} "
            f"is {rows[0].rel}); is VIDEO_ROOT the folder the paths are relative to?"
        )
    _assign_ids(jobs)
    candidates = check_files(vs, present, remove_hint=f"remove its row from {labels_csv}")
    settle(vs, candidates, shares=shares, seed=seed, find_duplicates=find_duplicates)
    return vs


def _labelled_jobs(root: Path, rows: list[LabelRow], class_names: list[str]) -> list[VideoJob]:
    """One job per row: ``label_set`` its labels' indices, ``label`` the rarest of them in the CSV
    (ties: the first class), which the split is stratified by."""
    index = {c: i for i, c in enumerate(class_names)}
    count = Counter(index[label] for row in rows for label in row.labels)
    jobs = []
    for row in rows:
        job = VideoJob(root / row.rel, row.rel, LABEL_SEP.join(sorted(row.labels)), split=row.split)
        job.label_set = sorted(index[c] for c in row.labels)
        job.label = min(job.label_set, key=lambda c: (count[c], c))
        jobs.append(job)
    return jobs


def _assign_ids(jobs: list[VideoJob]) -> None:
    """The path without extension; with it where two files would collide."""
    stems = Counter(posixpath.splitext(job.rel)[0] for job in jobs)
    for job in jobs:
        stem = posixpath.splitext(job.rel)[0]
        job.video_id = stem if stems[stem] == 1 else job.rel
    ids = Counter(job.video_id for job in jobs)
    clash = next((job for job in jobs if ids[job.video_id] > 1), None)
    if clash is not None:
        raise ExtractError(
            f"two videos would get the id {clash.video_id!r} (one is {clash.rel}); rename one of the files"
        )


def check_stored_labels(path: Path, store: FeatureStore, jobs: Sequence[VideoJob], source: str) -> None:
    """Refuse to resume into ``store`` (at ``path``) when a video stored there now has other labels.

    Args:
        path: the split file. store: it, open. jobs: the videos to extract.
        source: where the labels now come from, for the message (the CSV, or VIDEO_ROOT).

    Raises:
        ExtractError: naming the first such video, its stored and its new labels.
    """
    position = {vid: i for i, vid in enumerate(store.video_ids)}
    names = store.class_names
    for job in jobs:
        i = position.get(job.video_id)
        if i is None:
            continue
        if store.multilabel:
            stored, now = [int(c) for c in store.label_sets[i]], job.label_set
        else:
            stored, now = [int(store.labels[i])], [job.label]
        if stored != now:
            raise ExtractError(
                f"{path}: video {job.video_id!r} is stored with labels "
                f"{LABEL_SEP.join(names[c] for c in stored)!r} but {source} now gives "
                f"{LABEL_SEP.join(names[c] for c in now)!r}; re-labelled videos need a new extraction: "
                f"use another FEATURES_DIR, or move {path.parent} away to start over"
            )
