"""Feature store: one ragged HDF5 file per split (train.h5 / val.h5 / test.h5).

Layout (``FORMAT_VERSION`` 1)::

    features       (total_frames, D) float16|float32, chunked along frames, resizable
    offsets        (N+1,) int64, offsets[0] == 0; video i is features[offsets[i]:offsets[i+1]]
    labels         (N,) int64
    video_ids      (N,) utf-8 variable-length strings
    timestamps_ms  (total_frames,) float64, optional
    attrs: class_names (JSON list), feature_dim (int), extractor (JSON object), format_version (int)

Crash safety: the writer appends features/timestamps/labels/ids first, flushes, and only then
extends ``offsets``, the commit record. Frames past ``offsets[-1]`` and labels/ids past N are an
uncommitted tail that readers ignore and a resuming writer drops. The writer runs in HDF5 SWMR
mode, whose ordered metadata flushes keep the file readable at every instant, so a SIGKILL at any
point leaves a file that opens (in SWMR-read mode) and holds a prefix of the appended videos.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import h5py
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
ALLOWED_DTYPES = ("float16", "float32")
CREATE_HINT = "create it with `vidcls synth`, `vidcls extract` or `vidcls import` first"
# NaN/Inf scan reads at most this many frames / bytes per block: bounded memory, few large reads
_SCAN_BLOCK, _SCAN_BYTES = 65536, 64 << 20
_MAX_NAMED = 10  # how many offending video ids an error message lists


class StoreError(ValueError):
    """A feature file is missing, malformed or inconsistent; the message says which and the fix."""


def _name_ids(ids: Sequence[str]) -> str:
    """Format up to ``_MAX_NAMED`` video ids for an error message."""
    ids = list(ids)
    shown = ", ".join(repr(v) for v in ids[:_MAX_NAMED])
    more = len(ids) - _MAX_NAMED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _open_h5_read(path: Path) -> tuple[h5py.File, bool]:
    """Open ``path`` read-only, falling back to SWMR-read for a file left open by a killed writer.

    Returns:
        (file, swmr): the open file and whether SWMR-read mode was needed.

    Raises:
        StoreError: the file is missing or is not a readable HDF5 file.
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
        if "lock" in str(err):
            raise StoreError(f"{path} is locked by another process (is a vidcls run still writing "
                             f"it?); wait for it to finish or stop it ({err})") from None
        raise StoreError(f"{path} is not a readable HDF5 feature file ({err}); "
                         f"delete it and {CREATE_HINT}") from None


def _parse_json_attr(f: h5py.File, name: str, path: Path, default=None):
    """Read a JSON-encoded string attribute, or return ``default`` when it is absent."""
    if name not in f.attrs:
        if default is not None:
            return default
        raise StoreError(f"{path}: attribute {name!r} is missing; not a vidcls feature file? "
                         f"{CREATE_HINT}")
    raw = f.attrs[name]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        return json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: attribute {name!r} is not valid JSON ({err})") from None


class FeatureStore:
    """Read-only view of one split file. Validates on open; the h5py handle is opened lazily.

    Lazy opening matters for DataLoader workers: each worker opens its own handle after fork instead
    of inheriting (and sharing) the parent's HDF5 state.

    Attributes:
        path: the file. class_names: index = label. feature_dim: D. extractor: how the features
        were made. dtype: stored feature dtype. labels: (N,) int64. video_ids: list of N ids.
        offsets: (N+1,) int64. lengths: (N,) frames per video. format_version: int.
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
        finally:
            f.close()

    # ---- validation -------------------------------------------------------------------------
    def _load_and_validate(self, f: h5py.File, check_finite: bool) -> None:
        p = self.path
        for name in ("features", "offsets", "labels", "video_ids"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise StoreError(f"{p}: dataset {name!r} is missing; not a vidcls feature file "
                                 f"(an old padded file? convert it with `vidcls import padded-h5`)")
        version = f.attrs.get("format_version")
        if not isinstance(version, (int, np.integer)) or int(version) != FORMAT_VERSION:
            shown = version.item() if isinstance(version, np.generic) else version
            raise StoreError(f"{p}: format_version {shown!r} is not supported (this vidcls reads "
                             f"version {FORMAT_VERSION}); re-create the file with this vidcls")
        self.format_version = int(version)
        feats = f["features"]
        if feats.ndim != 2:
            raise StoreError(f"{p}: 'features' must be 2-D (frames, dim), got shape {feats.shape}")
        self.class_names = _parse_json_attr(f, "class_names", p)
        if not isinstance(self.class_names, list) or not self.class_names:
            raise StoreError(f"{p}: attribute 'class_names' must be a non-empty JSON list")
        self.class_names = [str(c) for c in self.class_names]
        self.extractor = _parse_json_attr(f, "extractor", p, default={})
        self.feature_dim = int(f.attrs.get("feature_dim", -1))
        if self.feature_dim != feats.shape[1]:
            raise StoreError(f"{p}: attribute feature_dim={self.feature_dim} but 'features' has "
                             f"{feats.shape[1]} columns; the file is corrupt, re-create it")
        self.dtype = np.dtype(feats.dtype)
        self._load_index(f, feats.shape[0])
        self._has_timestamps = "timestamps_ms" in f
        if self._has_timestamps and f["timestamps_ms"].shape[0] < self.offsets[-1]:
            raise StoreError(f"{p}: 'timestamps_ms' has {f['timestamps_ms'].shape[0]} entries but "
                             f"the videos hold {self.offsets[-1]} frames; re-create the file")
        if check_finite:
            self._check_finite(feats)

    def _load_index(self, f: h5py.File, total_frames: int) -> None:
        """Load offsets/labels/ids and check them against each other; tails past N are ignored."""
        p = self.path
        offsets = np.asarray(f["offsets"][:], dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0:
            raise StoreError(f"{p}: 'offsets' must be 1-D and start at 0 "
                             f"(got {offsets[:3].tolist()}...); the file is corrupt, re-create it")
        n = len(offsets) - 1
        # Longer labels/ids/features than the offsets commit are an uncommitted tail from an
        # interrupted writer (see module docstring); shorter ones mean real corruption.
        for name in ("labels", "video_ids"):
            if f[name].shape[0] < n:
                raise StoreError(f"{p}: {name!r} has {f[name].shape[0]} entries but 'offsets' "
                                 f"describes {n} videos; the file is corrupt, re-create it")
        self.video_ids = [v.decode("utf-8") if isinstance(v, bytes) else str(v)
                          for v in f["video_ids"][:n]]
        self.labels = np.asarray(f["labels"][:n], dtype=np.int64)
        self.offsets = offsets
        self.lengths = np.diff(offsets)
        bad = np.flatnonzero(self.lengths < 0)
        if len(bad):
            raise StoreError(f"{p}: 'offsets' decrease at videos {_name_ids(self._ids(bad))}; "
                             f"the file is corrupt, re-create it")
        empty = np.flatnonzero(self.lengths == 0)
        if len(empty):
            raise StoreError(f"{p}: zero-length videos (no frames) {_name_ids(self._ids(empty))}; "
                             f"re-extract them or drop them from the input")
        if offsets[-1] > total_frames:
            raise StoreError(f"{p}: offsets[-1]={offsets[-1]} but 'features' has only "
                             f"{total_frames} frames; the file is truncated, re-create it")
        k = len(self.class_names)
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= k))
        if len(bad):
            raise StoreError(f"{p}: labels outside [0, {k}) for videos {_name_ids(self._ids(bad))}"
                             f" (class_names has {k} entries)")
        self._check_duplicate_ids()

    def _ids(self, idx: Iterable[int]) -> list[str]:
        return [self.video_ids[int(i)] for i in idx]

    def _check_duplicate_ids(self) -> None:
        dups = [v for v, c in Counter(self.video_ids).items() if c > 1]
        if dups:
            raise StoreError(f"{self.path}: duplicate video ids {_name_ids(sorted(dups))}; "
                             f"each video may appear once per split")

    def _check_finite(self, feats: h5py.Dataset) -> None:
        """Scan committed frames for NaN/Inf in blocks; name the videos that contain them."""
        total = int(self.offsets[-1])
        step = max(1, min(_SCAN_BLOCK, _SCAN_BYTES // (self.feature_dim * self.dtype.itemsize)))
        bad_videos: set[int] = set()
        for start in range(0, total, step):
            block = feats[start:min(start + step, total)]
            bad_rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if len(bad_rows):
                vids = np.searchsorted(self.offsets, bad_rows + start, side="right") - 1
                bad_videos.update(int(v) for v in vids)
        if bad_videos:
            raise StoreError(f"{self.path}: NaN/Inf features in {len(bad_videos)} videos: "
                             f"{_name_ids(self._ids(sorted(bad_videos)))}; re-extract them "
                             f"(float16 overflow? extract with dtype float32)")

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

    def read(self, i: int) -> np.ndarray:
        """Return video ``i``'s features, shape (T, D), stored dtype, as one contiguous read."""
        j = self._index(i)
        return self._dataset("features")[self.offsets[j]:self.offsets[j + 1]]

    def timestamps(self, i: int) -> np.ndarray | None:
        """Return video ``i``'s per-frame timestamps in ms, or None if the file has none."""
        j = self._index(i)
        if not self._has_timestamps:
            return None
        return self._dataset("timestamps_ms")[self.offsets[j]:self.offsets[j + 1]]

    def close(self) -> None:
        """Close the h5py handle (a later read reopens it)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._datasets = None, {}

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # h5py handles cannot be pickled; the receiver reopens lazily
        state.update(_file=None, _pid=None, _datasets={})
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, videos={len(self)}, "
                f"classes={len(self.class_names)}, dim={self.feature_dim}, dtype={self.dtype})")


class FeatureWriter:
    """Append videos one at a time; the file on disk is a valid store after every flush().

    Attributes:
        path: target file. video_ids: set of ids already in the file or pending (skip-on-rerun).
    """

    def __init__(self, path: str | os.PathLike, class_names: list[str], feature_dim: int,
                 extractor: dict | None = None, dtype: str = "float16", flush_every: int = 1,
                 resume: bool = True):
        """Create ``path`` or (``resume=True``) continue an existing file.

        Args:
            path: the .h5 file to write.
            class_names: label names; index = label.
            feature_dim: D, the number of feature columns.
            extractor: JSON-serialisable description of the feature extractor ({} if unknown).
            dtype: "float16" (default) or "float32".
            flush_every: commit after this many appended videos (1 = after every video).
            resume: keep the committed videos of an existing file (dropping any uncommitted tail)
                instead of overwriting it.

        Raises:
            StoreError: bad arguments, or an existing file that does not match / cannot be resumed.
        """
        self.path = Path(path)
        self.class_names = _check_class_names(class_names)
        self.feature_dim = int(feature_dim)
        if self.feature_dim < 1:
            raise StoreError(f"feature_dim must be >= 1, got {feature_dim}")
        if str(dtype) not in ALLOWED_DTYPES:
            raise StoreError(f"dtype must be one of {ALLOWED_DTYPES}, got {dtype!r}")
        self.dtype = np.dtype(str(dtype))
        self.extractor = dict(extractor or {})
        self._extractor_json = json.dumps(self.extractor, sort_keys=True)  # fail early if not JSON
        self.flush_every = max(1, int(flush_every))
        self._pending: list[tuple[str, np.ndarray, int, np.ndarray | None]] = []
        self._file: h5py.File | None = None
        self._final = False  # structure fixed and SWMR started (no datasets can be added)
        self._lock_fd: int | None = None
        self._has_ts: bool | None = None  # decided by the first video (or by the resumed file)
        if self.path.exists() and resume:
            self._open_existing()
        else:
            self._create()

    # ---- opening ----------------------------------------------------------------------------
    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(self.path, "w", libver="latest")  # latest format: needed for SWMR
        d = self.feature_dim
        # ~256 frames per chunk keeps chunk size moderate (256*2048*2 B = 1 MiB) for typical D.
        f.create_dataset("features", shape=(0, d), maxshape=(None, d),
                         chunks=(max(1, min(256, (1 << 20) // (d * self.dtype.itemsize))), d),
                         dtype=self.dtype)
        f.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1024,))
        f.create_dataset("labels", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.int64)
        f.create_dataset("video_ids", shape=(0,), maxshape=(None,), chunks=(1024,),
                         dtype=h5py.string_dtype())
        f.attrs["class_names"] = json.dumps(self.class_names)
        f.attrs["feature_dim"] = d
        f.attrs["extractor"] = self._extractor_json
        f.attrs["format_version"] = FORMAT_VERSION
        f.flush()
        self._file, self._n, self._frames, self.video_ids = f, 0, 0, set()

    def _open_existing(self) -> None:
        """Reopen a file for appending after checking it matches; drop any uncommitted tail."""
        try:
            existing = FeatureStore(self.path, check_finite=False)
        except StoreError as err:
            raise StoreError(f"cannot resume {self.path}: {err}. Delete the file or pass "
                             f"resume=False to start over") from None
        self._check_matches(existing)
        if existing._left_open:  # killed writer left status flags: rewrite the committed prefix
            os.close(_lock_or_raise(self.path))  # ...unless a live writer still has it open
            log.warning("%s was not closed cleanly; recovering %d committed videos",
                        self.path, len(existing))
            _copy_committed(existing, self.path)
        f = h5py.File(self.path, "r+", libver="latest")
        n, frames = len(existing), int(existing.offsets[-1])
        f["features"].resize(frames, axis=0)  # drop the uncommitted tail
        f["labels"].resize(n, axis=0)
        f["video_ids"].resize(n, axis=0)
        if "timestamps_ms" in f:
            f["timestamps_ms"].resize(frames, axis=0)
            self._has_ts = True
        elif n > 0:
            self._has_ts = False
        f.flush()
        self._file, self._n, self._frames = f, n, frames
        self.video_ids = set(existing.video_ids)
        if n > 0:
            self._start_swmr()

    def _check_matches(self, existing: FeatureStore) -> None:
        p = self.path
        if existing.class_names != self.class_names:
            raise StoreError(f"cannot resume {p}: it has class_names {existing.class_names}, "
                             f"not {self.class_names}; use another output or resume=False")
        if existing.feature_dim != self.feature_dim:
            raise StoreError(f"cannot resume {p}: it has feature_dim {existing.feature_dim}, not "
                             f"{self.feature_dim}; use another output or resume=False")
        if existing.dtype != self.dtype:
            raise StoreError(f"cannot resume {p}: it stores {existing.dtype}, not {self.dtype}; "
                             f"pass dtype={str(existing.dtype)!r} or resume=False")
        if existing.extractor and self.extractor and existing.extractor != self.extractor:
            log.warning("resuming %s: extractor %s differs from the file's %s", p,
                        self.extractor, existing.extractor)

    def _start_swmr(self) -> None:
        # No datasets can be created once SWMR is on, so this waits until the structure is final.
        self._final = True
        try:
            self._file.swmr_mode = True
        except (ValueError, OSError, RuntimeError) as err:  # e.g. a file in the pre-1.10 format
            # HDF5 then keeps its own exclusive lock, so a second writer is still kept out.
            log.warning("%s: SWMR unavailable (%s); a crash mid-write may corrupt it",
                        self.path, err)
            return
        # HDF5 drops its own file lock in SWMR mode; hold ours so that a second writer cannot
        # mistake this live file for one left behind by a killed writer.
        try:
            self._lock_fd = _lock_or_raise(self.path)
        except StoreError:
            self._file.close()
            self._file = None
            raise

    # ---- appending --------------------------------------------------------------------------
    def append(self, video_id: str, features: np.ndarray, label: int,
               timestamps_ms: np.ndarray | None = None) -> None:
        """Queue one video; it is committed at the next flush (automatic every ``flush_every``).

        Args:
            video_id: unique id within this file.
            features: (T, D) array, T >= 1, D == feature_dim, all finite after casting to dtype.
            label: class index in [0, len(class_names)).
            timestamps_ms: optional (T,) per-frame times; all videos in a file have them or none.

        Raises:
            StoreError: naming the video id and what is wrong with it.
        """
        if self._file is None:
            raise StoreError(f"FeatureWriter for {self.path} is closed")
        vid = str(video_id)
        arr = self._validate(vid, features, label)
        ts = self._validate_timestamps(vid, timestamps_ms, arr.shape[0])
        self._pending.append((vid, arr, int(label), ts))
        self.video_ids.add(vid)
        if len(self._pending) >= self.flush_every:
            self.flush()

    def _validate(self, vid: str, features: np.ndarray, label: int) -> np.ndarray:
        where = f"video {vid!r} (writing {self.path})"
        if vid in self.video_ids:
            raise StoreError(f"{where}: duplicate video id; it is already in the file")
        arr = np.asarray(features)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != self.feature_dim:
            raise StoreError(f"{where}: features must have shape (T>=1, {self.feature_dim}), "
                             f"got {arr.shape}")
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise StoreError(f"{where}: label must be an int class index, got {label!r}")
        if not 0 <= int(label) < len(self.class_names):
            raise StoreError(f"{where}: label {label} outside [0, {len(self.class_names)})")
        with np.errstate(over="ignore"):  # overflow is reported below, with a hint
            cast = arr.astype(self.dtype, copy=False)
        if not np.isfinite(cast).all():
            hint = (" (finite before the cast: values exceed the float16 range; use dtype float32)"
                    if np.isfinite(arr).all() else "")
            raise StoreError(f"{where}: features contain NaN/Inf{hint}")
        return np.ascontiguousarray(cast)

    def _validate_timestamps(self, vid: str, ts, n_frames: int) -> np.ndarray | None:
        has = ts is not None
        if self._has_ts is not None and has != self._has_ts:
            state = "has" if self._has_ts else "has no"
            raise StoreError(f"video {vid!r} (writing {self.path}): the file {state} timestamps_ms;"
                             f" pass timestamps for every video or for none")
        if has:
            ts = np.asarray(ts, dtype=np.float64)
            if ts.shape != (n_frames,):
                raise StoreError(f"video {vid!r} (writing {self.path}): timestamps_ms shape "
                                 f"{ts.shape} does not match {n_frames} frames")
        self._has_ts = has  # the first valid video decides for the whole file
        return ts

    def flush(self) -> None:
        """Write queued videos and commit them by extending ``offsets`` last."""
        if self._file is None or not self._pending:
            return
        f = self._file
        if not self._final:
            if self._has_ts and "timestamps_ms" not in f:
                f.create_dataset("timestamps_ms", shape=(self._frames,), maxshape=(None,),
                                 chunks=(4096,), dtype=np.float64)
            self._start_swmr()
        batch, self._pending = self._pending, []
        feats = np.concatenate([b[1] for b in batch]) if len(batch) > 1 else batch[0][1]
        frames, n = self._frames + len(feats), self._n + len(batch)
        _extend(f["features"], self._frames, feats)
        if self._has_ts:
            _extend(f["timestamps_ms"], self._frames, np.concatenate([b[3] for b in batch]))
        _extend(f["labels"], self._n, np.array([b[2] for b in batch], np.int64))
        _extend(f["video_ids"], self._n, np.array([b[0] for b in batch], dtype=object))
        f.flush()  # data reaches the file before the commit record that points at it
        ends = self._frames + np.cumsum([len(b[1]) for b in batch], dtype=np.int64)
        _extend(f["offsets"], self._n + 1, ends)
        f.flush()
        self._frames, self._n = frames, n

    def close(self) -> None:
        """Flush pending videos and close the file."""
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            self._file.close()
            self._file = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the lock
                self._lock_fd = None

    def __len__(self) -> int:
        return self._n + len(self._pending)

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lock_or_raise(path: Path) -> int:
    """Take an exclusive POSIX record lock on ``path``; return the descriptor holding it.

    A record lock (lockf), not flock: HDF5 readers take flock locks, and those two kinds do not
    interact on Linux, so readers can still open the file while a writer holds this lock.

    Raises:
        StoreError: another process holds the lock (it is writing the file right now).
    """
    fd = os.open(path, os.O_RDWR)  # an exclusive record lock needs a writable descriptor
    if fcntl is None:  # no POSIX locks on this platform: rely on HDF5's own checks
        return fd
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"{path} is being written by another process (another vidcls run?); "
                         f"wait for it to finish or stop it") from None
    return fd


def _extend(ds: h5py.Dataset, start: int, data: np.ndarray) -> None:
    """Grow ``ds`` along axis 0 to ``start + len(data)`` and write ``data`` there."""
    ds.resize(start + len(data), axis=0)
    ds[start:start + len(data)] = data


def _check_class_names(class_names) -> list[str]:
    names = [str(c) for c in class_names]
    if not names:
        raise StoreError("class_names is empty; a store needs at least one class")
    dups = sorted({c for c in names if names.count(c) > 1})
    if dups:
        raise StoreError(f"class_names has duplicates {dups}; each class needs a unique name")
    return names


def _copy_committed(store: FeatureStore, path: Path) -> None:
    """Rewrite ``path`` with only the committed videos of ``store`` (atomic rename)."""
    videos = ((store.video_ids[i], store.read(i), int(store.labels[i]), store.timestamps(i))
              for i in range(len(store)))
    try:
        write_store(path, videos, store.class_names, store.feature_dim, store.extractor,
                    dtype=str(store.dtype))
    finally:
        store.close()


def write_store(path: str | os.PathLike, videos: Iterable[tuple],
                class_names: list[str], feature_dim: int, extractor: dict | None = None,
                dtype: str = "float16") -> Path:
    """Write a whole split file through a temp name, then rename it into place atomically.

    Args:
        path: target .h5 file (replaced if it exists).
        videos: (video_id, features (T, D), label[, timestamps_ms (T,)]) tuples, in file order.
        class_names, feature_dim, extractor, dtype: as for FeatureWriter.

    Returns:
        The path written.

    Raises:
        StoreError: any invalid video (the target is left untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # A temp file is never read mid-write, so commit in batches rather than per video.
        with FeatureWriter(tmp, class_names, feature_dim, extractor, dtype=dtype,
                           flush_every=64, resume=False) as w:
            for video in videos:
                w.append(*video)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def open_splits(features_dir: str | os.PathLike, *,
                require: Sequence[str] = ("train",)) -> dict[str, FeatureStore]:
    """Open whichever of train/val/test exist in ``features_dir`` and check they agree.

    Args:
        features_dir: directory holding {split}.h5 files.
        require: splits that must be present.

    Returns:
        {split: FeatureStore} for the splits found, in SPLITS order.

    Raises:
        StoreError: directory or a required split missing, an empty split, or splits disagreeing
            on feature_dim / class_names.
    """
    d = Path(features_dir)
    if not d.is_dir():
        raise StoreError(f"features directory {d} does not exist; {CREATE_HINT}")
    unknown = [s for s in require if s not in SPLITS]
    if unknown:
        raise StoreError(f"unknown split(s) {unknown} in require; choose from {list(SPLITS)}")
    missing = [s for s in require if not (d / f"{s}.h5").exists()]
    if missing:
        present = sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
        raise StoreError(f"{d}: required split file(s) {[f'{s}.h5' for s in missing]} missing; "
                         f"the directory contains {present or 'nothing'}; {CREATE_HINT}")
    stores = {s: FeatureStore(d / f"{s}.h5") for s in SPLITS if (d / f"{s}.h5").exists()}
    _check_across_splits(stores)
    return stores


def _check_across_splits(stores: dict[str, FeatureStore]) -> None:
    for s in stores.values():
        if len(s) == 0:
            raise StoreError(f"{s.path} holds 0 videos; re-create it or remove the file")
    ref = next(iter(stores.values()), None)
    for s in stores.values():
        if s.feature_dim != ref.feature_dim:
            raise StoreError(f"feature_dim differs: {ref.path} has {ref.feature_dim}, {s.path} has "
                             f"{s.feature_dim}; extract all splits with the same backbone")
        if s.class_names != ref.class_names:
            raise StoreError(f"class_names differ: {ref.path} has {ref.class_names}, {s.path} has "
                             f"{s.class_names}; write all splits with the same class list")
        if ref.extractor and s.extractor and s.extractor != ref.extractor:
            log.warning("extractor differs: %s has %s, %s has %s", ref.path, ref.extractor,
                        s.path, s.extractor)


def stratified_split(labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class into train/val, deterministically for a seed.

    Each class c sends round(fraction * n_c) examples to val, clamped so that a class with >= 2
    examples has >= 1 in val and >= 1 in train, and a single-example class stays in train.

    Args:
        labels: (N,) integer labels.
        fraction: share of each class for val, in (0, 1).
        seed: RNG seed.

    Returns:
        (train_idx, val_idx), both sorted int64 arrays that partition range(N).

    Raises:
        ValueError: fraction outside (0, 1) or labels not 1-D.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"val fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(np.floor(fraction * len(idx) + 0.5))  # round half up, unlike Python's round
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx
