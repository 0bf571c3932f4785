"""Feature store: one ragged HDF5 file per split (train.h5 / val.h5 / test.h5).

Layout (``FORMAT_VERSION`` 2; version 1 files, the same without ``multilabel``, read as single-label)::

    features       (total_frames, D) float16|float32, chunked along frames, resizable
    offsets        (N+1,) int64, offsets[0] == 0; video i is features[offsets[i]:offsets[i+1]]
    labels         (N,) int64 (multi-label: the smallest index of the video's label set)
    video_ids      (N,) utf-8 variable-length strings
    timestamps_ms  (total_frames,) float64, optional
    label_sets         (M,) int64, multi-label only: every video's label indices, concatenated
    label_set_offsets  (N+1,) int64, multi-label only: video i's set is
                       label_sets[label_set_offsets[i]:label_set_offsets[i+1]] (sorted, unique, >= 1)
    attrs: class_names (JSON list), feature_dim (int), extractor (JSON object), format_version (int),
           multilabel (int 0/1, absent = 0; see :mod:`vidcls.store.labels`)

Crash safety: the writer appends features/timestamps/labels/ids/label sets first, flushes, and only
then extends ``offsets``, the commit record. Frames past ``offsets[-1]``, labels/ids past N and label
sets past ``label_set_offsets[N]`` are an uncommitted tail that readers ignore and a resuming writer
drops. The writer runs in HDF5 SWMR
mode, whose ordered metadata flushes keep the file readable at every instant, so a SIGKILL at any
point leaves a file that opens (in SWMR-read mode) and holds a prefix of the appended videos.

This module is the reader side; the writer (``FeatureWriter``, ``write_store``) lives in
:mod:`vidcls.store.writer`; :mod:`vidcls.store` re-exports both.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .labels import LabelSets, label_set_problem, read_label_sets, sorted_sets
from .rows import Rows, read_rows, select_rows

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # what the writer writes
READ_VERSIONS = (1, 2)  # what the reader reads
SPLITS = ("train", "val", "test")
ALLOWED_DTYPES = ("float16", "float32")
CREATE_HINT = "create it with `vidcls synth`, `vidcls extract` or `vidcls import` first"
REPAIR_HINT = "delete it and re-create it with `vidcls extract`, `vidcls import` or `vidcls synth`"
# NaN/Inf scan reads at most this many frames / bytes per block: bounded memory, few large reads
_SCAN_BLOCK, _SCAN_BYTES = 65536, 64 << 20
_MAX_NAMED = 10  # how many offending video ids an error message lists
# What h5py raises on damaged metadata or data (bad checksums, truncated structures, bad heap ids)
H5_READ_ERRORS = (OSError, KeyError, RuntimeError)


class StoreLockedError(StoreError):
    """The split file is held by another process (a writer, or a reader when opening to write)."""


def name_ids(ids: Sequence[str]) -> str:
    """Format up to ``_MAX_NAMED`` video ids for an error message."""
    ids = list(ids)
    shown = ", ".join(repr(v) for v in ids[:_MAX_NAMED])
    more = len(ids) - _MAX_NAMED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _detail(err: BaseException) -> str:
    # HDF5 messages can span lines and KeyError quotes its text; keep error messages on one line
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return " ".join(str(text).split())


def damaged_error(path: Path, err: BaseException) -> StoreError:
    """The error for a file h5py cannot open or read: truncated, overwritten, not HDF5 at all."""
    return StoreError(f"{path} is damaged or is not a vidcls feature store ({_detail(err)}); {REPAIR_HINT}")


def open_error(path: Path, err: OSError) -> StoreError:
    """Translate h5py's OSError on opening ``path`` into a StoreError that says how to fix it.

    Only HDF5's own lock failure ("unable to lock file", errno EAGAIN) means another process holds
    the file; matching a bare "lock" would also match "sblock" in superblock (truncation) messages.
    """
    code = getattr(err, "errno", None)
    if code in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in str(err):
        return StoreLockedError(
            f"{path} is locked by another process (is a vidcls run still "
            f"writing or reading it?); wait for it to finish or stop it"
        )
    if code in (errno.EACCES, errno.EPERM):
        return StoreError(f"cannot open {path}: permission denied; check the file's permissions")
    if path.is_dir():
        return StoreError(f"{path} is a directory, not a feature store file; pass the .h5 file")
    return damaged_error(path, err)


def _open_h5_read(path: Path) -> tuple[h5py.File, bool]:
    """Open ``path`` read-only, falling back to SWMR-read for a file left open by a killed writer.

    Returns:
        (file, swmr): the open file and whether SWMR-read mode was needed.

    Raises:
        StoreError: missing, damaged or not HDF5 (StoreLockedError: another process holds it).
    """
    if not path.exists():
        raise StoreError(f"feature file {path} does not exist; {CREATE_HINT}")
    try:
        return h5py.File(path, "r"), False
    except OSError as err:
        # HDF5 refuses a plain open of a file whose writer was killed before close (superblock
        # status flags still set); such a file is still readable in SWMR-read mode.
        if "already open for write" in str(err):
            try:
                return h5py.File(path, "r", swmr=True), True
            except OSError as err2:
                err = err2
        raise open_error(path, err) from None


def _parse_json_attr(f: h5py.File, name: str, path: Path, default: Any = None) -> Any:
    """Read a JSON-encoded string attribute, or return ``default`` when it is absent."""
    if name not in f.attrs:
        if default is not None:
            return default
        raise StoreError(f"{path}: attribute {name!r} is missing; not a vidcls feature file? {CREATE_HINT}")
    raw = f.attrs[name]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        return json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: attribute {name!r} is not valid JSON ({err})") from None


class FeatureStore(LabelSets):
    """Read-only view of one split file. Validates on open; the h5py handle is opened lazily.

    Lazy opening matters for DataLoader workers: each worker opens its own handle after fork instead
    of inheriting (and sharing) the parent's HDF5 state.

    Attributes:
        path: the file. class_names: index = label. feature_dim: D. extractor: how the features
        were made. dtype: stored feature dtype. labels: (N,) int64. video_ids: list of N ids.
        offsets: (N+1,) int64. lengths: (N,) frames per video. format_version: int.
        multilabel: whether videos carry label sets. label_sets: per video, its int64 class
        indices (sorted, unique, non-empty; ``[label]`` in a single-label store).
    """

    def __init__(self, path: str | os.PathLike, *, check_finite: bool = True):
        """Open and validate a split file.

        Args:
            path: the .h5 file.
            check_finite: scan every committed frame for NaN/Inf (block-wise, memory-bounded).

        Raises:
            StoreError: for any structural problem; the message names the file and offending ids.
        """
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        f, self._left_open = _open_h5_read(self.path)  # True: its writer never closed it
        try:
            self._load_and_validate(f, check_finite)
        except H5_READ_ERRORS as err:  # metadata that opened but cannot be read: a damaged file
            raise damaged_error(self.path, err) from None
        finally:
            f.close()

    # ---- validation -------------------------------------------------------------------------
    def _load_and_validate(self, f: h5py.File, check_finite: bool) -> None:
        feats = self._check_layout(f)
        self._load_attrs(f, feats)
        self.dtype = np.dtype(feats.dtype)
        self._load_index(f, feats.shape[0])
        self._has_timestamps = "timestamps_ms" in f
        if self._has_timestamps and (n_ts := f["timestamps_ms"].shape[0]) < self.offsets[-1]:
            raise StoreError(
                f"{self.path}: 'timestamps_ms' has {n_ts} entries but the videos "
                f"hold {self.offsets[-1]} frames; re-create the file"
            )
        if check_finite:
            self._check_finite(feats)

    def _check_layout(self, f: h5py.File) -> h5py.Dataset:
        """Check the datasets exist with usable shapes and dtypes; return ``features``."""
        p = self.path
        for name in ("features", "offsets", "labels", "video_ids"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise StoreError(
                    f"{p}: dataset {name!r} is missing; not a vidcls feature file "
                    f"(an old padded file? convert it with `vidcls import padded-h5`; "
                    f"otherwise {REPAIR_HINT})"
                )
        version = f.attrs.get("format_version")
        if not isinstance(version, (int, np.integer)) or int(version) not in READ_VERSIONS:
            shown = version.item() if isinstance(version, np.generic) else version
            raise StoreError(
                f"{p}: format_version {shown!r} is not supported (this vidcls reads "
                f"versions {' and '.join(map(str, READ_VERSIONS))}); re-create the file with this vidcls"
            )
        self.format_version = int(version)
        feats = f["features"]
        if feats.ndim != 2:
            raise StoreError(f"{p}: 'features' must be 2-D (frames, dim), got shape {feats.shape}")
        if np.dtype(feats.dtype).name not in ALLOWED_DTYPES:
            raise StoreError(
                f"{p}: 'features' are stored as {feats.dtype}; features must be "
                f"{' or '.join(ALLOWED_DTYPES)}; {REPAIR_HINT}"
            )
        # A float index would be truncated silently on the int64 cast (label 1.7 -> class 1).
        for name in ("offsets", "labels"):
            if np.dtype(f[name].dtype).kind not in "iu":
                raise StoreError(
                    f"{p}: {name!r} are stored as {f[name].dtype}; {name} must be integers; {REPAIR_HINT}"
                )
        return feats

    def _load_attrs(self, f: h5py.File, feats: h5py.Dataset) -> None:
        p = self.path
        self.class_names = _parse_json_attr(f, "class_names", p)
        if not isinstance(self.class_names, list) or not self.class_names:
            raise StoreError(f"{p}: attribute 'class_names' must be a non-empty JSON list")
        self.class_names = [str(c) for c in self.class_names]
        dups = sorted({c for c, k in Counter(self.class_names).items() if k > 1})
        if dups:  # two labels under one name would be merged in every report
            raise StoreError(
                f"{p}: attribute 'class_names' lists {name_ids(dups)} more than once; "
                f"each class needs a unique name; {REPAIR_HINT}"
            )
        self.extractor = _parse_json_attr(f, "extractor", p, default={})
        self.feature_dim = int(f.attrs.get("feature_dim", -1))
        if self.feature_dim != feats.shape[1]:
            raise StoreError(
                f"{p}: attribute feature_dim={self.feature_dim} but 'features' has "
                f"{feats.shape[1]} columns; the file is corrupt, re-create it"
            )

    def _load_index(self, f: h5py.File, total_frames: int) -> None:
        """Load offsets/labels/ids and check them against each other; tails past N are ignored."""
        p = self.path
        offsets = np.asarray(f["offsets"][:], dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0:
            raise StoreError(
                f"{p}: 'offsets' must be 1-D and start at 0 "
                f"(got {offsets[:3].tolist()}...); the file is corrupt, re-create it"
            )
        n = len(offsets) - 1
        # Longer labels/ids/features than the offsets commit are an uncommitted tail from an
        # interrupted writer (see module docstring); shorter ones mean real corruption.
        for name in ("labels", "video_ids"):
            if f[name].shape[0] < n:
                raise StoreError(
                    f"{p}: {name!r} has {f[name].shape[0]} entries but 'offsets' "
                    f"describes {n} videos; the file is corrupt, re-create it"
                )
        self.video_ids = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in f["video_ids"][:n]]
        self.labels = np.asarray(f["labels"][:n], dtype=np.int64)
        self.offsets = offsets
        self.lengths = np.diff(offsets)
        bad = np.flatnonzero(self.lengths < 0)
        if len(bad):
            raise StoreError(
                f"{p}: 'offsets' decrease at videos {name_ids(self._ids(bad))}; "
                f"the file is corrupt, re-create it"
            )
        empty = np.flatnonzero(self.lengths == 0)
        if len(empty):
            raise StoreError(
                f"{p}: zero-length videos (no frames) {name_ids(self._ids(empty))}; "
                f"re-extract them or drop them from the input"
            )
        if offsets[-1] > total_frames:
            raise StoreError(
                f"{p}: offsets[-1]={offsets[-1]} but 'features' has only "
                f"{total_frames} frames; the file is truncated, re-create it"
            )
        k = len(self.class_names)
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= k))
        if len(bad):
            raise StoreError(
                f"{p}: labels outside [0, {k}) for videos {name_ids(self._ids(bad))}"
                f" (class_names has {k} entries)"
            )
        self._check_duplicate_ids()
        self._load_label_sets(f, n)

    def _load_label_sets(self, f: h5py.File, n: int) -> None:
        """The videos' label sets: stored (multi-label file) or each video's one label."""
        flag = f.attrs.get("multilabel", 0) if self.format_version >= 2 else 0
        if isinstance(flag, bool) or not isinstance(flag, (int, np.integer)) or flag not in (0, 1):
            raise StoreError(
                f"{self.path}: attribute 'multilabel' must be 0 or 1, got "
                f"{flag.item() if isinstance(flag, np.generic) else flag!r}; {REPAIR_HINT}"
            )
        self.multilabel = bool(flag)
        if not self.multilabel:
            self._set_flat, self._set_offsets = self.labels, np.arange(n + 1, dtype=np.int64)
            return
        flat, offsets = read_label_sets(f, n, self.path)
        problem = label_set_problem(flat, offsets, self.labels, len(self.class_names))
        if problem is not None:
            raise StoreError(
                f"{self.path}: {problem[0]} for videos {name_ids(self._ids(problem[1]))}; "
                f"the file is corrupt, re-create it"
            )
        self._set_flat, self._set_offsets = sorted_sets(flat, offsets), offsets

    def _ids(self, idx: Iterable[int]) -> list[str]:
        return [self.video_ids[int(i)] for i in idx]

    def _check_duplicate_ids(self) -> None:
        dups = [v for v, c in Counter(self.video_ids).items() if c > 1]
        if dups:
            raise StoreError(
                f"{self.path}: duplicate video ids {name_ids(sorted(dups))}; "
                f"each video may appear once per split"
            )

    def _check_finite(self, feats: h5py.Dataset) -> None:
        """Scan committed frames for NaN/Inf in blocks; name the videos that contain them."""
        total = int(self.offsets[-1])
        step = max(1, min(_SCAN_BLOCK, _SCAN_BYTES // (self.feature_dim * self.dtype.itemsize)))
        bad_videos: set[int] = set()
        for start in range(0, total, step):
            block = feats[start : min(start + step, total)]
            bad_rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if len(bad_rows):
                vids = np.searchsorted(self.offsets, bad_rows + start, side="right") - 1
                bad_videos.update(int(v) for v in vids)
        if bad_videos:
            raise StoreError(
                f"{self.path}: NaN/Inf features in {len(bad_videos)} videos: "
                f"{name_ids(self._ids(sorted(bad_videos)))}; re-extract them "
                f"(float16 overflow? extract with dtype float32)"
            )

    # ---- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def _dataset(self, name: str) -> h5py.Dataset:
        # A handle inherited through fork is not ours to use: reopen in this process.
        if self._file is None or self._pid != os.getpid():
            # Not simply h5py.File: the file may have been reopened by a writer since validation.
            self._file = _open_h5_read(self.path)[0]
            self._pid, self._datasets = os.getpid(), {}
        if name not in self._datasets:  # cached: a by-name lookup on every read is measurable
            self._datasets[name] = self._file[name]
        return self._datasets[name]

    def _index(self, i: int) -> int:
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"video index {i} out of range for {self.path} ({n} videos)")
        return j

    def _frames_of(self, name: str, j: int, rows: Rows = None) -> np.ndarray:
        sel = select_rows(rows, int(self.lengths[j]), where=f"video {self.video_ids[j]!r} of {self.path}")
        try:
            return read_rows(self._dataset(name), int(self.offsets[j]), sel)
        except H5_READ_ERRORS as err:  # a chunk damaged after the file was validated
            raise StoreError(
                f"{self.path}: cannot read video {self.video_ids[j]!r} "
                f"({_detail(err)}); the file is damaged, {REPAIR_HINT}"
            ) from None

    def read(self, i: int, rows: Rows = None) -> np.ndarray:
        """Return video ``i``'s features in the stored dtype: all (T, D) as one contiguous read, or only
        ``rows`` (a slice or positions, :func:`vidcls.store.rows.select_rows`), (len(rows), D), read
        from the chunks that hold them alone (a long video is never loaded whole to be thinned).

        Raises:
            IndexError: ``i`` or a row out of range, or a negative row. TypeError: ``rows`` not 1-D
                integers. StoreError: the file is damaged.
        """
        return self._frames_of("features", self._index(i), rows)

    def timestamps(self, i: int, rows: Rows = None) -> np.ndarray | None:
        """Video ``i``'s per-frame timestamps in ms (only ``rows``, as ``read``); None if the file has none."""
        j = self._index(i)
        if not self._has_timestamps:
            return None
        return self._frames_of("timestamps_ms", j, rows)

    def close(self) -> None:
        """Close the h5py handle (a later read reopens it)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._datasets = None, {}

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # h5py handles cannot be pickled; the receiver reopens lazily
        state.update(_file=None, _pid=None, _datasets={})
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, videos={len(self)}, "
            f"classes={len(self.class_names)}, dim={self.feature_dim}, dtype={self.dtype})"
        )
