"""Import per-video features: one ``<video_id>.npy`` (T, D) per video plus a labels CSV (``vidcls import npy``).

Every split is written into a temporary directory inside OUT_DIR and moved into place only when all of
them succeeded. :mod:`vidcls.store.importers` re-exports ``import_npy``.
"""

from __future__ import annotations

import csv
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from ..errors import StoreError
from .labels import parse_label_set
from .reader import SPLITS, name_ids
from .validate import check_features
from .writer import write_store


@dataclass
class _NpyImport:
    """What every split of one ``import npy`` shares."""

    npy_dir: Path
    class_names: list[str]
    feature_dim: int
    dtype: str
    extractor: dict | None
    multilabel: bool = False


# one CSV row: (video_id, its labels (one, or several in a multi-label CSV), split)
_Row = tuple[str, list[str], str]


def import_npy(
    npy_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float16",
    extractor: dict | None = None,
) -> dict[str, Path]:
    """Build split stores from one ``<video_id>.npy`` (T, D) per video and a labels CSV.

    The CSV has a header with columns ``video_id,label`` and optionally ``split`` (train/val/test;
    without it every row goes to train). ``label`` is one class name or a label set, the names joined
    by ``|`` (``outdoor|dog|music``; spaces around a name are ignored; an empty name as in ``a||b``
    and a name listed twice are refused). The stores are multi-label when any row has more than one
    label, else single-label. Class names are the sorted unique labels of the whole CSV, every split
    included (a class seen only in val/test is kept).
    A video id is a path relative to ``npy_dir`` without the suffix (``cats/a`` ->
    ``npy_dir/cats/a.npy``). All splits are written into a temporary directory inside ``out_dir``
    and moved into place only when every one of them succeeded: on any error ``out_dir`` keeps
    its previous split files untouched.

    Args:
        npy_dir: directory of .npy files.
        labels_csv: the CSV.
        out_dir: where {split}.h5 files are written (one per split that has rows).
        dtype: stored dtype, "float16" or "float32".
        extractor: optional description of how the features were made ({} if unknown).

    Returns:
        {split: path written}.

    Raises:
        StoreError: bad CSV or label set (naming the line and video), a video id that points
            outside ``npy_dir``, missing .npy files (listing the ids), arrays that are not 2-D,
            not floating point, hold NaN/Inf or whose D disagrees (naming the file), or OUT_DIR holding a split file
            this CSV would not overwrite. Nothing in OUT_DIR changes in those cases.
    """
    npy_dir, out_dir = Path(npy_dir), Path(out_dir)
    if not npy_dir.is_dir():
        raise StoreError(f"npy directory {npy_dir} does not exist; check the NPY_DIR path")
    rows = _read_labels_csv(Path(labels_csv), npy_dir)
    job = _NpyImport(
        npy_dir,
        sorted({label for _, labels, _ in rows for label in labels}),
        _check_npy_files(npy_dir, [vid for vid, _, _ in rows]),
        dtype,
        extractor,
        multilabel=any(len(labels) > 1 for _, labels, _ in rows),
    )
    splits = [s for s in SPLITS if any(r[2] == s for r in rows)]
    # A leftover split file from an earlier import would be picked up by training next to the
    # new ones; refuse rather than silently mixing two imports.
    stale = [f"{s}.h5" for s in SPLITS if s not in splits and (out_dir / f"{s}.h5").exists()]
    if stale:
        raise StoreError(
            f"{out_dir} already holds {stale}, which {Path(labels_csv).name} does "
            f"not produce; remove them or choose another OUT_DIR"
        )
    by_split = {s: [(vid, labels) for vid, labels, sp in rows if sp == s] for s in splits}
    return _write_splits_atomically(job, by_split, out_dir)


def _write_splits_atomically(
    job: _NpyImport, by_split: dict[str, list[tuple[str, list[str]]]], out_dir: Path
) -> dict[str, Path]:
    """Write every split of ``by_split`` (``write_atomically``)."""
    writers = {split: functools.partial(_write_split, job, rows) for split, rows in by_split.items()}
    return write_atomically(out_dir, writers)


def write_atomically(out_dir: Path, writers: Mapping[str, Callable[[Path], object]]) -> dict[str, Path]:
    """Run ``writers[split](temp file)`` for every split inside a temp directory in ``out_dir``, then rename
    them all in (``vidcls import npy`` and ``import yt8m``).

    The temp directory sits in ``out_dir`` so that the final renames stay on one file system
    (atomic, no copy). A failure before the renames leaves ``out_dir`` as it was.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".vidcls-import-", dir=out_dir))
    try:
        for split, write in writers.items():
            write(tmp_dir / f"{split}.h5")
        return _swap_in(tmp_dir, out_dir, list(writers))
    except StoreError as err:
        raise StoreError(f"{err}; nothing was imported, {out_dir} is unchanged") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # it did not exist before a failed import


def _swap_in(tmp_dir: Path, out_dir: Path, splits: list[str]) -> dict[str, Path]:
    """Rename ``tmp_dir/{split}.h5`` over ``out_dir/{split}.h5``; undo them all if one fails."""
    backup = tmp_dir / "previous"
    backup.mkdir()
    moved_old, placed = [], []
    try:
        for split in splits:
            target = out_dir / f"{split}.h5"
            if target.exists():
                os.replace(target, backup / target.name)
                moved_old.append(target)
            os.replace(tmp_dir / target.name, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            target.unlink(missing_ok=True)
        for target in moved_old:
            os.replace(backup / target.name, target)
        raise
    return {split: out_dir / f"{split}.h5" for split in splits}


def _read_labels_csv(path: Path, npy_dir: Path) -> list[_Row]:
    """Parse the labels CSV into (video_id, label, split) rows, checking every line."""
    if not path.exists():
        raise StoreError(f"labels CSV {path} does not exist; check the LABELS.csv path")
    if not path.is_file():
        raise StoreError(f"labels CSV {path} is not a file; give the CSV itself")
    try:
        return _parse_labels_csv(path, npy_dir)
    except UnicodeDecodeError as err:
        raise StoreError(f"{path} is not UTF-8 text (byte {err.start}); save it as a UTF-8 CSV") from None
    except csv.Error as err:
        raise StoreError(f"{path} is not a readable CSV ({err}); save it as a plain UTF-8 CSV") from None


def _parse_labels_csv(path: Path, npy_dir: Path) -> list[_Row]:
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: tolerate an Excel BOM
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("video_id", "label") if c not in header]
        if missing:
            raise StoreError(
                f"{path}: header must contain video_id,label[,split]; missing {missing} (header is {header})"
            )
        reader.fieldnames = header
        rows: list[_Row] = []
        seen: dict[str, int] = {}  # video id -> its line
        for line, rec in enumerate(reader, start=2):
            vid, label = (rec.get("video_id") or "").strip(), (rec.get("label") or "").strip()
            split = (rec.get("split") or "").strip() if "split" in header else "train"
            if not vid or not label:
                raise StoreError(f"{path} line {line}: empty video_id or label")
            _check_video_id(vid, npy_dir, f"{path} line {line}")
            if split not in SPLITS:
                raise StoreError(
                    f"{path} line {line}: split {split!r} for video {vid!r} is not one of {list(SPLITS)}"
                )
            if vid in seen:
                raise StoreError(
                    f"{path} line {line}: video {vid!r} already listed on line "
                    f"{seen[vid]}; each video may appear once"
                )
            seen[vid] = line
            rows.append((vid, parse_label_set(label, where=f"{path} line {line} (video {vid!r})"), split))
    if not rows:
        raise StoreError(f"{path} has a header but no rows; add one line per video")
    return rows


def _check_video_id(vid: str, npy_dir: Path, where: str) -> None:
    """Refuse an id whose .npy would lie outside ``npy_dir`` (absolute, ``..``, symlinked out)."""
    if any(ord(c) < 32 for c in vid):
        raise StoreError(
            f"{where}: video_id {vid!r} holds a control character (NUL, tab, ...); "
            f"ids are file names inside NPY_DIR {npy_dir} without '.npy'"
        )
    rel = PurePath(vid)
    if rel.is_absolute() or rel.anchor or ".." in rel.parts:
        raise StoreError(
            f"{where}: video_id {vid!r} is an absolute path or contains '..'; ids "
            f"are paths inside NPY_DIR {npy_dir} without '.npy' (e.g. 'cats/a' for "
            f"{npy_dir / 'cats' / 'a.npy'})"
        )
    target = (npy_dir / f"{vid}.npy").resolve()
    if not target.is_relative_to(npy_dir.resolve()):
        raise StoreError(
            f"{where}: video_id {vid!r} resolves to {target}, outside NPY_DIR "
            f"{npy_dir} (a symlink?); copy the file into NPY_DIR"
        )


def _check_npy_files(npy_dir: Path, ids: list[str]) -> int:
    """Check every id (there is at least one) has a 2-D .npy with the same D (reading headers only); return D."""
    missing = [v for v in ids if not (npy_dir / f"{v}.npy").is_file()]
    if missing:
        raise StoreError(
            f"{npy_dir}: no .npy file for {len(missing)} video(s) in the CSV: "
            f"{name_ids(missing)}; expected <video_id>.npy"
        )
    dim, first = None, None
    for v in ids:
        p = npy_dir / f"{v}.npy"
        try:
            shape = np.load(p, mmap_mode="r").shape  # header only: no feature data is read
        except (ValueError, OSError) as err:
            raise StoreError(f"{p}: not a readable .npy array ({err})") from None
        if len(shape) != 2 or shape[0] < 1:
            raise StoreError(
                f"{p}: expected a (T, D) array with T >= 1, got shape {shape}; save one feature row per frame"
            )
        if dim is None:
            dim, first = shape[1], p
        elif shape[1] != dim:
            raise StoreError(
                f"{p}: feature dim {shape[1]} differs from {dim} in {first}; "
                f"all videos must come from the same extractor"
            )
    assert dim is not None  # ids is not empty: the CSV has at least one row
    return int(dim)


def _write_split(job: _NpyImport, rows: list[tuple[str, list[str]]], out: Path) -> Path:
    index = {c: i for i, c in enumerate(job.class_names)}
    videos = (
        (vid, _load_npy(job, vid), [index[c] for c in labels] if job.multilabel else index[labels[0]])
        for vid, labels in rows
    )
    names, dim = job.class_names, job.feature_dim
    return write_store(out, videos, names, dim, job.extractor, dtype=job.dtype, multilabel=job.multilabel)


def _load_npy(job: _NpyImport, vid: str) -> np.ndarray:
    """Load and check one video's array; errors name the .npy file and the video id."""
    p = job.npy_dir / f"{vid}.npy"
    try:
        arr = np.load(p)
    except (ValueError, OSError) as err:  # header was fine but the data is cut short or pickled
        raise StoreError(f"{p}: not a readable .npy array ({err})") from None
    return check_features(arr, job.feature_dim, np.dtype(job.dtype), f"{p} (video {vid!r})")
