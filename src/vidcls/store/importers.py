"""Convert other feature layouts into the vidcls store, and describe a store in words.

* ``import_padded_h5``: the padded (N, max_frames, D) HDF5 layout an older system wrote.
* ``import_npy``: one ``<video_id>.npy`` (T, D) per video plus a labels CSV.
* ``store_info``: a human-readable summary of one store file (``vidcls info``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePath

import h5py
import numpy as np
import numpy.typing as npt

from ..errors import StoreError
from .reader import H5_READ_ERRORS, SPLITS, name_ids
from .writer import FeatureWriter, check_features, write_store

_ID_DATASETS = ("video_ids", "video_names")  # where older files keep per-row names, if anywhere


# ---- padded HDF5 ----------------------------------------------------------------------------
def import_padded_h5(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "float16",
    block: int = 64,
    extractor: dict | None = None,
) -> Path:
    """Convert a padded HDF5 file into a ragged vidcls store, streaming ``block`` rows at a time.

    Source layout: ``features`` (N, max_frames, D), ``labels`` (N), ``num_frames`` (N), attribute
    ``category_mapping`` (JSON {name: index}); optional ``video_ids``/``video_names`` (N).

    Args:
        src: the padded file.
        out: the store file to write (replaced atomically when the import succeeds).
        dtype: stored dtype, "float16" or "float32".
        block: rows read per step; memory use is about block * max_frames * D values.
        extractor: optional description of how the features were made (default: the source's
            ``extractor`` attribute if it has one, else {}).

    Returns:
        The written path.

    Raises:
        StoreError: the source is missing or malformed (naming the dataset / row), or a video is
            invalid (NaN, bad label).
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise StoreError(f"source file {src} does not exist; check the SRC path")
    try:
        f = h5py.File(src, "r")
    except OSError as err:
        raise StoreError(f"{src} is not a readable HDF5 file ({err})") from None
    with f:
        _convert_padded(f, src, out, dtype=dtype, block=block, extractor=extractor)
    return out


def _convert_padded(
    f: h5py.File, src: Path, out: Path, *, dtype: str, block: int, extractor: dict | None
) -> None:
    """``import_padded_h5`` on the open source: write a temp file next to ``out``, rename it over ``out``."""
    feats, labels, nframes, class_names, ids = _read_padded_header(f, src)
    if extractor is None:
        extractor = _source_extractor(f)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # A temp file is never read mid-write: commit once per block, not per video.
        with FeatureWriter(
            tmp,
            class_names,
            feats.shape[2],
            extractor,
            dtype=dtype,
            flush_every=max(1, block),
            resume=False,
        ) as w:
            _stream_rows(feats, labels, nframes, ids, w, max(1, int(block)))
        os.replace(tmp, out)  # only a complete, validated file replaces the old one
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, H5_READ_ERRORS):  # a damaged chunk in the source
            detail = " ".join(str(err).split())  # HDF5 messages can span lines
            raise StoreError(
                f"{src}: cannot read 'features' ({detail}); the source file is damaged; {out} is unchanged"
            ) from None
        if isinstance(err, StoreError):
            raise StoreError(f"importing {src}: {err}; {out} is unchanged") from None
        raise


def _whole_numbers(values: npt.ArrayLike, src: Path, name: str) -> np.ndarray:
    """Integers as int64; floats only when every value is whole (1.0, never 1.7, which would be truncated)."""
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    bad = [
        i for i, v in enumerate(arr.tolist()) if not (isinstance(v, (int, float)) and float(v).is_integer())
    ]
    raise StoreError(
        f"{src}: {name!r} must hold whole numbers, got {arr.dtype} with e.g. row "
        f"{bad[0] if bad else 0} = {arr[bad[0]] if bad else arr[:1]}; fix the source file"
    )


def _read_padded_header(
    f: h5py.File, src: Path
) -> tuple[h5py.Dataset, np.ndarray, np.ndarray, list[str], list[str]]:
    """Validate the padded layout and load the small per-row arrays (never ``features``)."""
    for name in ("features", "labels", "num_frames"):
        if name not in f:
            raise StoreError(
                f"{src}: dataset {name!r} is missing; expected the padded layout "
                f"features (N, max_frames, D), labels (N), num_frames (N)"
            )
    feats = f["features"]
    if feats.ndim != 3:
        raise StoreError(f"{src}: 'features' must be (N, max_frames, D), got shape {feats.shape}")
    n, max_frames = feats.shape[0], feats.shape[1]
    labels = _whole_numbers(f["labels"][:], src, "labels")
    nframes = _whole_numbers(f["num_frames"][:], src, "num_frames")
    for name, arr in (("labels", labels), ("num_frames", nframes)):
        if len(arr) != n:
            raise StoreError(f"{src}: {name!r} has {len(arr)} rows but 'features' has {n}")
    bad = np.flatnonzero((nframes < 1) | (nframes > max_frames))
    if len(bad):
        rows = ", ".join(f"row {i} ({nframes[i]})" for i in bad[:10])
        raise StoreError(
            f"{src}: num_frames must be in [1, {max_frames}] (max_frames); bad: "
            f"{rows}{' ...' if len(bad) > 10 else ''}"
        )
    class_names = _class_names_from_mapping(f, src)
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if len(bad):
        raise StoreError(
            f"{src}: labels outside [0, {len(class_names)}) (category_mapping) at "
            f"rows {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}"
        )
    return feats, labels, nframes, class_names, _row_ids(f, src, n)


def _class_names_from_mapping(f: h5py.File, src: Path) -> list[str]:
    raw = f.attrs.get("category_mapping")
    if raw is None:
        raise StoreError(f"{src}: attribute 'category_mapping' (JSON {{name: index}}) is missing")
    try:
        mapping = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        index = {int(v): str(k) for k, v in mapping.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise StoreError(f"{src}: 'category_mapping' is not a JSON {{name: index}} object ({err})") from None
    if sorted(index) != list(range(len(mapping))):
        raise StoreError(
            f"{src}: 'category_mapping' indices must be 0..{len(mapping) - 1} "
            f"without gaps or repeats, got {sorted(mapping.values())}"
        )
    return [index[i] for i in range(len(index))]


def _row_ids(f: h5py.File, src: Path, n: int) -> list[str]:
    for name in _ID_DATASETS:
        if name in f:
            ids = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in f[name][:]]
            if len(ids) != n:
                raise StoreError(f"{src}: {name!r} has {len(ids)} rows but 'features' has {n}")
            return ids
    return [f"video_{i:06d}" for i in range(n)]


def _source_extractor(f: h5py.File) -> dict:
    raw = f.attrs.get("extractor")
    try:
        value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (json.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _stream_rows(
    feats: h5py.Dataset, labels: np.ndarray, nframes: np.ndarray, ids: list[str], w: FeatureWriter, block: int
) -> None:
    """Append every row, reading only ``block`` rows x the frames they use at a time."""
    n = feats.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        t_max = int(nframes[start:stop].max())
        rows = feats[start:stop, :t_max]  # skip the padding columns no row in the block needs
        for j in range(stop - start):
            i = start + j
            w.append(ids[i], rows[j, : nframes[i]], int(labels[i]))


# ---- per-video .npy -------------------------------------------------------------------------
@dataclass
class _NpyImport:
    """What every split of one ``import npy`` shares."""

    npy_dir: Path
    class_names: list[str]
    feature_dim: int
    dtype: str
    extractor: dict | None


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
    without it every row goes to train). Class names are the sorted unique labels of the whole CSV.
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
        StoreError: bad CSV (naming the line), a video id that points outside ``npy_dir``,
            missing .npy files (listing the ids), arrays that are not 2-D, not floating point,
            hold NaN/Inf or whose D disagrees (naming the file), or OUT_DIR holding a split file
            this CSV would not overwrite. Nothing in OUT_DIR changes in those cases.
    """
    npy_dir, out_dir = Path(npy_dir), Path(out_dir)
    if not npy_dir.is_dir():
        raise StoreError(f"npy directory {npy_dir} does not exist; check the NPY_DIR path")
    rows = _read_labels_csv(Path(labels_csv), npy_dir)
    job = _NpyImport(
        npy_dir,
        sorted({label for _, label, _ in rows}),
        _check_npy_files(npy_dir, [vid for vid, _, _ in rows]),
        dtype,
        extractor,
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
    by_split = {s: [(vid, label) for vid, label, sp in rows if sp == s] for s in splits}
    return _write_splits_atomically(job, by_split, out_dir)


def _write_splits_atomically(
    job: _NpyImport, by_split: dict[str, list[tuple[str, str]]], out_dir: Path
) -> dict[str, Path]:
    """Write every split into a temp directory inside ``out_dir``, then rename them all in.

    The temp directory sits in ``out_dir`` so that the final renames stay on one file system
    (atomic, no copy). A failure before the renames leaves ``out_dir`` as it was.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".vidcls-import-", dir=out_dir))
    try:
        for split, rows in by_split.items():
            _write_split(job, rows, tmp_dir / f"{split}.h5")
        return _swap_in(tmp_dir, out_dir, list(by_split))
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


def _read_labels_csv(path: Path, npy_dir: Path) -> list[tuple[str, str, str]]:
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


def _parse_labels_csv(path: Path, npy_dir: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: tolerate an Excel BOM
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("video_id", "label") if c not in header]
        if missing:
            raise StoreError(
                f"{path}: header must contain video_id,label[,split]; missing {missing} (header is {header})"
            )
        reader.fieldnames = header
        rows: list[tuple[str, str, str]] = []
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
            rows.append((vid, label, split))
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


def _write_split(job: _NpyImport, rows: list[tuple[str, str]], out: Path) -> Path:
    index = {c: i for i, c in enumerate(job.class_names)}
    videos = ((vid, _load_npy(job, vid), index[label]) for vid, label in rows)
    return write_store(out, videos, job.class_names, job.feature_dim, job.extractor, dtype=job.dtype)


def _load_npy(job: _NpyImport, vid: str) -> np.ndarray:
    """Load and check one video's array; errors name the .npy file and the video id."""
    p = job.npy_dir / f"{vid}.npy"
    try:
        arr = np.load(p)
    except (ValueError, OSError) as err:  # header was fine but the data is cut short or pickled
        raise StoreError(f"{p}: not a readable .npy array ({err})") from None
    return check_features(arr, job.feature_dim, np.dtype(job.dtype), f"{p} (video {vid!r})")


# ---- info -----------------------------------------------------------------------------------
