"""Feature store writer: ``FeatureWriter`` (append, resume, crash recovery) and ``write_store``.

The file layout and the crash-safety protocol are described in :mod:`vidcls.store.reader`;
:mod:`vidcls.store` re-exports ``FeatureWriter`` and ``write_store``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt

if sys.platform != "win32":  # Windows has no POSIX record locks
    import fcntl

from ..errors import StoreError
from .labels import append_label_sets, check_label_set, create_label_set_datasets, drop_label_set_tail

# ``log`` is the reader's logger, so writer messages keep the "vidcls.store.reader" logger name.
from .reader import (
    ALLOWED_DTYPES,
    FORMAT_VERSION,
    H5_READ_ERRORS,
    FeatureStore,
    StoreLockedError,
    damaged_error,
    log,
    open_error,
)
from .validate import check_class_names, check_features


class FeatureWriter:
    """Append videos one at a time; the file on disk is a valid store after every flush().

    Attributes:
        path: target file. video_ids: set of ids already in the file or pending (skip-on-rerun).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        class_names: list[str],
        feature_dim: int,
        extractor: dict | None = None,
        *,
        dtype: str = "float16",
        flush_every: int = 1,
        resume: bool = True,
        multilabel: bool = False,
    ):
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
            multilabel: videos carry label sets (``append`` takes an int or a list of ints); class
                names may then not contain "|", the label-set separator.

        Raises:
            StoreError: bad arguments, or an existing file that does not match / cannot be resumed.
        """
        self.path = Path(path)
        self.multilabel = bool(multilabel)
        self.class_names = check_class_names(class_names, multilabel=self.multilabel)
        self.feature_dim = int(feature_dim)
        if self.feature_dim < 1:
            raise StoreError(f"feature_dim must be >= 1, got {feature_dim}")
        if str(dtype) not in ALLOWED_DTYPES:
            raise StoreError(f"dtype must be one of {ALLOWED_DTYPES}, got {dtype!r}")
        self.dtype = np.dtype(str(dtype))
        self.extractor = dict(extractor or {})
        self._extractor_json = json.dumps(self.extractor, sort_keys=True)  # fail early if not JSON
        self.flush_every = max(1, int(flush_every))
        self._pending: list[tuple[str, np.ndarray, int | np.ndarray, np.ndarray | None]] = []
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
        f = _open_h5_write(self.path, "w")
        d = self.feature_dim
        # ~256 frames per chunk keeps chunk size moderate (256*2048*2 B = 1 MiB) for typical D.
        f.create_dataset(
            "features",
            shape=(0, d),
            maxshape=(None, d),
            chunks=(max(1, min(256, (1 << 20) // (d * self.dtype.itemsize))), d),
            dtype=self.dtype,
        )
        f.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1024,))
        f.create_dataset("labels", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.int64)
        f.create_dataset("video_ids", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=h5py.string_dtype())
        if self.multilabel:
            create_label_set_datasets(f)
        f.attrs["class_names"] = json.dumps(self.class_names)
        f.attrs["feature_dim"] = d
        f.attrs["extractor"] = self._extractor_json
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["multilabel"] = int(self.multilabel)
        f.flush()
        self._file, self._n, self._frames, self._m = f, 0, 0, 0
        self.video_ids: set[str] = set()

    def _open_existing(self) -> None:
        """Reopen a file for appending after checking it matches; drop any uncommitted tail."""
        try:
            existing = FeatureStore(self.path, check_finite=False)
        except StoreLockedError as err:  # deleting a file another process holds is no fix
            raise StoreLockedError(f"cannot resume {self.path}: {err}") from None
        except StoreError as err:
            raise StoreError(
                f"cannot resume {self.path}: {err} (or pass resume=False to start over)"
            ) from None
        self._check_matches(existing)
        if existing._left_open:  # killed writer left status flags: rewrite the committed prefix
            os.close(_lock_or_raise(self.path))  # ...unless a live writer still has it open
            log.warning("%s was not closed cleanly; recovering %d committed videos", self.path, len(existing))
            _copy_committed(existing, self.path)
        f = _open_h5_write(self.path, "r+")
        n, frames, m = len(existing), int(existing.offsets[-1]), int(existing._set_offsets[-1])
        try:
            self._has_ts = _drop_tail(f, n, frames, m)
        except H5_READ_ERRORS as err:
            f.close()
            raise damaged_error(self.path, err) from None
        self._file, self._n, self._frames, self._m = f, n, frames, m
        self.video_ids = set(existing.video_ids)
        if n > 0:
            self._start_swmr()

    def _check_matches(self, existing: FeatureStore) -> None:
        p = self.path
        if existing.multilabel != self.multilabel:
            kind = "a multi-label" if existing.multilabel else "a single-label"
            raise StoreError(
                f"cannot resume {p}: it is {kind} store; pass multilabel={existing.multilabel}, "
                f"another output or resume=False"
            )
        if existing.class_names != self.class_names:
            raise StoreError(
                f"cannot resume {p}: it has class_names {existing.class_names}, "
                f"not {self.class_names}; use another output or resume=False"
            )
        if existing.feature_dim != self.feature_dim:
            raise StoreError(
                f"cannot resume {p}: it has feature_dim {existing.feature_dim}, not "
                f"{self.feature_dim}; use another output or resume=False"
            )
        if existing.dtype != self.dtype:
            raise StoreError(
                f"cannot resume {p}: it stores {existing.dtype}, not {self.dtype}; "
                f"pass dtype={str(existing.dtype)!r} or resume=False"
            )
        if existing.extractor and self.extractor and existing.extractor != self.extractor:
            log.warning(
                "resuming %s: extractor %s differs from the file's %s", p, self.extractor, existing.extractor
            )

    def _start_swmr(self) -> None:
        # No datasets can be created once SWMR is on, so this waits until the structure is final.
        assert self._file is not None  # called on an open file only
        self._final = True
        try:
            self._file.swmr_mode = True
        except (ValueError, OSError, RuntimeError) as err:  # e.g. a file in the pre-1.10 format
            # HDF5 then keeps its own exclusive lock, so a second writer is still kept out.
            log.warning("%s: SWMR unavailable (%s); a crash mid-write may corrupt it", self.path, err)
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
    def append(
        self,
        video_id: str,
        features: np.ndarray,
        label: int | Sequence[int],
        timestamps_ms: np.ndarray | None = None,
    ) -> None:
        """Queue one video; it is committed at the next flush (automatic every ``flush_every``).

        Args:
            video_id: unique id within this file.
            features: (T, D) array, T >= 1, D == feature_dim, all finite after casting to dtype.
            label: class index in [0, len(class_names)); in a multi-label store also a non-empty
                sequence of distinct indices (stored sorted).
            timestamps_ms: optional (T,) per-frame times; all videos in a file have them or none.

        Raises:
            StoreError: naming the video id and what is wrong with it.
        """
        if self._file is None:
            raise StoreError(f"FeatureWriter for {self.path} is closed")
        vid = str(video_id)
        arr, label_set = self._validate(vid, features, label)
        ts = self._validate_timestamps(vid, timestamps_ms, arr.shape[0])
        self._pending.append((vid, arr, label_set, ts))
        self.video_ids.add(vid)
        if len(self._pending) >= self.flush_every:
            self.flush()

    def _validate(self, vid: str, features: np.ndarray, label: object) -> tuple[np.ndarray, int | np.ndarray]:
        """Check one video; return its cast features and its label (an int, or a sorted set)."""
        where = f"video {vid!r} (writing {self.path})"
        if vid in self.video_ids:
            raise StoreError(f"{where}: duplicate video id; it is already in the file")
        if self.multilabel:
            return check_features(features, self.feature_dim, self.dtype, where), check_label_set(
                label, len(self.class_names), where
            )
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise StoreError(f"{where}: label must be an int class index, got {label!r}")
        if not 0 <= int(label) < len(self.class_names):
            raise StoreError(f"{where}: label {label} outside [0, {len(self.class_names)})")
        return check_features(features, self.feature_dim, self.dtype, where), int(label)

    def _validate_timestamps(self, vid: str, ts: npt.ArrayLike | None, n_frames: int) -> np.ndarray | None:
        has = ts is not None
        if self._has_ts is not None and has != self._has_ts:
            state = "has" if self._has_ts else "has no"
            raise StoreError(
                f"video {vid!r} (writing {self.path}): the file {state} timestamps_ms;"
                f" pass timestamps for every video or for none"
            )
        times = None
        if has:
            times = np.asarray(ts, dtype=np.float64)
            if times.shape != (n_frames,):
                raise StoreError(
                    f"video {vid!r} (writing {self.path}): timestamps_ms shape "
                    f"{times.shape} does not match {n_frames} frames"
                )
        self._has_ts = has  # the first valid video decides for the whole file
        return times

    def flush(self) -> None:
        """Write queued videos and commit them by extending ``offsets`` last."""
        if self._file is None or not self._pending:
            return
        f = self._file
        if not self._final:
            if self._has_ts and "timestamps_ms" not in f:
                f.create_dataset(
                    "timestamps_ms", shape=(self._frames,), maxshape=(None,), chunks=(4096,), dtype=np.float64
                )
            self._start_swmr()
        batch, self._pending = self._pending, []
        feats = np.concatenate([b[1] for b in batch]) if len(batch) > 1 else batch[0][1]
        frames, n = self._frames + len(feats), self._n + len(batch)
        _extend(f["features"], self._frames, feats)
        if self._has_ts:
            _extend(f["timestamps_ms"], self._frames, np.concatenate([b[3] for b in batch]))
        m = append_label_sets(f, self._n, self._m, [b[2] for b in batch]) if self.multilabel else 0
        _extend(f["labels"], self._n, np.array([np.min(b[2]) for b in batch], np.int64))
        _extend(f["video_ids"], self._n, np.array([b[0] for b in batch], dtype=object))
        f.flush()  # data reaches the file before the commit record that points at it
        ends = self._frames + np.cumsum([len(b[1]) for b in batch], dtype=np.int64)
        _extend(f["offsets"], self._n + 1, ends)
        f.flush()
        self._frames, self._n, self._m = frames, n, m

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

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_h5_write(path: Path, mode: str) -> h5py.File:
    """Open ``path`` for writing ("w" create/overwrite, "r+" append) in the SWMR-capable format."""
    try:
        return h5py.File(path, mode, libver="latest")  # latest format: needed for SWMR
    except OSError as err:
        raise open_error(path, err) from None


def _drop_tail(f: h5py.File, n: int, frames: int, m: int) -> bool | None:
    """Cut every dataset back to the committed ``n`` videos / ``frames`` / ``m`` label indices.

    Returns:
        True/False when the file decides whether videos carry timestamps, None when still open
        (an empty file without a timestamps dataset).
    """
    f["features"].resize(frames, axis=0)
    f["labels"].resize(n, axis=0)
    f["video_ids"].resize(n, axis=0)
    drop_label_set_tail(f, n, m)
    has_ts = None
    if "timestamps_ms" in f:
        f["timestamps_ms"].resize(frames, axis=0)
        has_ts = True
    elif n > 0:
        has_ts = False
    f.flush()
    return has_ts


def _lock_or_raise(path: Path) -> int:
    """Take an exclusive POSIX record lock on ``path``; return the descriptor holding it.

    A record lock (lockf), not flock: HDF5 readers take flock locks, and those two kinds do not
    interact on Linux, so readers can still open the file while a writer holds this lock.

    Raises:
        StoreError: another process holds the lock (it is writing the file right now).
    """
    fd = os.open(path, os.O_RDWR)  # an exclusive record lock needs a writable descriptor
    if sys.platform == "win32":  # no POSIX locks on this platform: rely on HDF5's own checks
        return fd
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreLockedError(
            f"{path} is being written by another process (another vidcls "
            f"run?); wait for it to finish or stop it"
        ) from None
    return fd


def _extend(ds: h5py.Dataset, start: int, data: np.ndarray) -> None:
    """Grow ``ds`` along axis 0 to ``start + len(data)`` and write ``data`` there."""
    ds.resize(start + len(data), axis=0)
    ds[start : start + len(data)] = data


def _copy_committed(store: FeatureStore, path: Path) -> None:
    """Rewrite ``path`` with only the committed videos of ``store`` (atomic rename)."""
    label = (lambda i: store.label_sets[i]) if store.multilabel else (lambda i: int(store.labels[i]))
    videos = ((store.video_ids[i], store.read(i), label(i), store.timestamps(i)) for i in range(len(store)))
    names, dim, extractor, dtype = store.class_names, store.feature_dim, store.extractor, str(store.dtype)
    try:
        write_store(path, videos, names, dim, extractor, dtype=dtype, multilabel=store.multilabel)
    finally:
        store.close()


def write_store(
    path: str | os.PathLike,
    videos: Iterable[tuple],
    class_names: list[str],
    feature_dim: int,
    extractor: dict | None = None,
    dtype: str = "float16",
    *,
    multilabel: bool = False,
) -> Path:
    """Write a whole split file through a temp name, then rename it into place atomically.

    Args:
        path: target .h5 file (replaced if it exists).
        videos: (video_id, features (T, D), label[, timestamps_ms (T,)]) tuples, in file order; with
            ``multilabel`` a label may be a list of class indices.
        class_names, feature_dim, extractor, dtype, multilabel: as for FeatureWriter.

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
        args = (tmp, class_names, feature_dim, extractor)
        with FeatureWriter(*args, dtype=dtype, flush_every=64, resume=False, multilabel=multilabel) as w:
            for video in videos:
                w.append(*video)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
