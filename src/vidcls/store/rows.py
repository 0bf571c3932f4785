"""Row selections within one video: what ``FeatureStore.read(i, rows)`` and ``timestamps(i, rows)`` take.

A video thinned to a few hundred of its 30,000 frames is read as those rows, never loaded whole.
h5py's own fancy indexing is no help here: it builds one HDF5 selection per row, which costs more
than reading the whole video once a few hundred rows are asked for, and a union of row ranges in
one selection grows quadratically. So the rows are read per HDF5 chunk instead: for each chunk
that holds requested rows, one contiguous read from its first to its last requested row. HDF5 reads
a chunk whole from disk in any case, so this reads no chunk that one-row-at-a-time reads would
not, and at most one such span is in memory beside the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import h5py
import numpy as np

# None: every row. A slice (any step). Or 1-D integer row positions, in any order, repeats allowed.
Rows: TypeAlias = slice | Sequence[int] | np.ndarray | None
_DEFAULT_SPAN = 256  # rows per read of an unchunked (contiguous) dataset, like the writer's chunks


def select_rows(rows: Rows, n: int, *, where: str) -> slice | np.ndarray:
    """Resolve ``rows`` of a video of ``n`` rows to what ``read_rows`` takes.

    Args:
        rows: None, a slice (numpy semantics: bounds clamp to the video, any non-zero step) or a
            1-D sequence/array of integer positions in [0, n), any order, repeats allowed.
        n: the video's length. where: names the video in error messages ("video 'x' of train.h5").

    Returns:
        A step-1 ``slice(start, stop)`` within [0, n], or a 1-D int64 array of positions.

    Raises:
        IndexError: a negative position, or one >= n. TypeError: not integers, or not 1-D.
        ValueError: a slice step of 0.
    """
    if rows is None:
        return slice(0, n)
    if isinstance(rows, slice):
        start, stop, step = rows.indices(n)
        return slice(start, max(start, stop)) if step == 1 else np.arange(start, stop, step, dtype=np.int64)
    idx = np.asarray(rows)
    if idx.ndim != 1 or (idx.size and (idx.dtype.kind not in "iu" or idx.dtype == np.bool_)):
        raise TypeError(
            f"rows of {where} must be a slice or 1-D integer positions, got an array of shape "
            f"{idx.shape} and dtype {idx.dtype}; a boolean mask m reads as np.flatnonzero(m)"
        )
    idx = idx.astype(np.int64, copy=False)
    if idx.size and idx.min() < 0:
        bad = np.unique(idx[idx < 0])[:5].tolist()
        raise IndexError(f"negative rows {bad} for {where}; rows count from 0 (the video has {n} frames)")
    if idx.size and idx.max() >= n:
        bad = np.unique(idx[idx >= n])[:5].tolist()
        raise IndexError(f"rows {bad} out of range for {where}, which has {n} frames (rows 0..{n - 1})")
    return idx


def read_rows(ds: h5py.Dataset, start: int, sel: slice | np.ndarray) -> np.ndarray:
    """Read the rows ``start + sel`` of ``ds`` (``sel`` from ``select_rows``), in ``sel``'s order.

    Returns:
        ``ds``'s dtype, shape ``(len(sel),) + ds.shape[1:]``.
    """
    if isinstance(sel, slice):
        return ds[start + sel.start : start + sel.stop]
    if len(sel) < 2 or bool((np.diff(sel) > 0).all()):
        wanted, inverse = sel, None  # already increasing and unique: read straight into the result
    else:
        wanted, inverse = np.unique(sel, return_inverse=True)
    out = np.empty((len(wanted),) + ds.shape[1:], dtype=ds.dtype)
    if not len(wanted):
        return out
    span = ds.chunks[0] if ds.chunks else _DEFAULT_SPAN
    group = (wanted + start) // span  # the chunk holding each row
    cuts = np.flatnonzero(np.diff(group)) + 1
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(wanted)].tolist(), strict=True):
        first, last = int(wanted[a]), int(wanted[b - 1])
        block = ds[start + first : start + last + 1]
        out[a:b] = block if b - a == last + 1 - first else block[wanted[a:b] - first]
    return out if inverse is None else out[inverse.reshape(-1)]
