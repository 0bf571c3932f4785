"""Convert other feature layouts into the vidcls store (``vidcls import``).

* ``import_padded_h5``: the padded (N, max_frames, D) HDF5 layout an older system wrote (here).
* ``import_npy``: one ``<video_id>.npy`` (T, D) per video plus a labels CSV (:mod:`vidcls.store.npy`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt

from ..errors import StoreError
from .npy import import_npy
from .reader import H5_READ_ERRORS
from .writer import FeatureWriter

__all__ = ["import_npy", "import_padded_h5"]

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
