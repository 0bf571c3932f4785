"""Label sets: the labels of one video in a multi-label store, as text and as stored.

A multi-label store (format version 2, attribute ``multilabel`` = 1) keeps every video's set of
class indices in two datasets, ``label_sets`` (all sets concatenated) and ``label_set_offsets``
(N+1 entries; video i's set is ``label_sets[label_set_offsets[i]:label_set_offsets[i+1]]``). On
disk and in memory a set is sorted ascending, unique and non-empty; ``labels[i]`` is its smallest
index. In a CSV a set is written ``a|b|c`` (:func:`parse_label_set`).

This module imports nothing from the rest of the store, so the reader and the writer both use it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import h5py
import numpy as np
import numpy.typing as npt

from ..errors import StoreError

LABEL_SEP = "|"  # between the labels of one video in a CSV: "outdoor|dog|music"


def parse_label_set(text: str, *, where: str) -> list[str]:
    """Split ``a|b|c`` into its labels, spaces around each one stripped.

    Args:
        text: one CSV cell. where: names the cell at the start of an error, e.g.
            "labels.csv line 5 (video 'x')".

    Returns:
        The labels in the order given (a single label gives a one-item list).

    Raises:
        StoreError: an empty set, an empty item ("a||b", "a|"), or a label listed twice.
    """
    if not text.strip():
        raise StoreError(f"{where}: empty label set; give at least one label (several as a{LABEL_SEP}b)")
    items = [t.strip() for t in text.split(LABEL_SEP)]
    if "" in items:
        raise StoreError(
            f"{where}: label set {text!r} has an empty label (two '{LABEL_SEP}' in a row, or one at "
            f"an end); separate labels with a single '{LABEL_SEP}'"
        )
    twice = sorted({t for t in items if items.count(t) > 1})
    if twice:
        raise StoreError(
            f"{where}: label set {text!r} lists {', '.join(repr(t) for t in twice)} more than once; "
            f"list each label of a video once"
        )
    return items


def multi_hot(label_sets: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Label sets as an (n, C) 0/1 matrix: row i has a 1 in every column of set i.

    Args:
        label_sets: n arrays of class indices in [0, n_classes). n_classes: C.

    Returns:
        (n, C) uint8.
    """
    out = np.zeros((len(label_sets), int(n_classes)), np.uint8)
    if len(label_sets):
        sizes = [len(s) for s in label_sets]
        rows = np.repeat(np.arange(len(label_sets)), sizes)
        cols = np.concatenate([np.asarray(s, np.int64).reshape(-1) for s in label_sets])
        out[rows, cols] = 1
    return out


def check_label_set(label: object, n_classes: int, where: str) -> np.ndarray:
    """One video's label for a multi-label writer: an int or a sequence of ints -> sorted int64 set.

    Raises:
        StoreError: empty, not whole numbers (floats, bools), outside [0, n_classes), or repeats;
            the message starts with ``where`` (it names the video).
    """
    if isinstance(label, np.ndarray) and label.dtype.kind in "iu":  # the common case: no per-item check
        arr = label.astype(np.int64).reshape(-1)
    else:
        arr = _as_int_array(label, where)
    if not len(arr):
        raise StoreError(f"{where}: empty label set; a video needs at least one label")
    out = arr[(arr < 0) | (arr >= n_classes)]
    if len(out):
        raise StoreError(f"{where}: label {int(out[0])} outside [0, {n_classes}) in label set {arr.tolist()}")
    srt = np.sort(arr)
    if len(srt) > 1 and (srt[1:] == srt[:-1]).any():
        twice = sorted({int(v) for v in srt[1:][srt[1:] == srt[:-1]]})
        raise StoreError(
            f"{where}: label set {arr.tolist()} lists {twice} more than once; list each label once"
        )
    return srt


def _as_int_array(label: object, where: str) -> np.ndarray:
    """An int, or a list/tuple/array of ints (no floats, no bools), as int64; else a StoreError."""
    if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
        items: list[object] = [label]
    elif isinstance(label, np.ndarray):
        items = list(label.astype(object).reshape(-1))
    elif isinstance(label, (list, tuple)):
        items = list(label)
    else:
        raise StoreError(f"{where}: label must be an int class index or a list of them, got {label!r}")
    bad = [v for v in items if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))]
    if bad:
        raise StoreError(f"{where}: label set {label!r} holds {bad[0]!r}; labels must be int class indices")
    return np.array(items, np.int64)


def sorted_sets(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``flat`` with each set (``offsets``: N+1 non-decreasing, from 0) sorted ascending."""
    seg = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return flat[np.lexsort((flat, seg))]


def label_set_problem(
    flat: np.ndarray, offsets: np.ndarray, labels: np.ndarray, n_classes: int
) -> tuple[str, np.ndarray] | None:
    """What is wrong with stored label sets, and at which videos (None: nothing).

    Args:
        flat: ``label_sets`` up to ``offsets[-1]`` (int64; the caller checked offsets[-1] fits).
        offsets: ``label_set_offsets[:N+1]``, starting at 0 (checked by the caller).
        labels: the (N,) ``labels``. n_classes: C.

    Returns:
        (what is wrong, the offending video indices), or None when the sets are valid.
    """
    sizes = np.diff(offsets)
    down = np.flatnonzero(sizes < 0)
    if len(down):
        return "'label_set_offsets' decrease (corrupted)", down
    seg = np.repeat(np.arange(len(sizes)), sizes)
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        return "empty label sets (a video needs at least one label)", empty
    out = np.unique(seg[(flat < 0) | (flat >= n_classes)])
    if len(out):
        return f"label_sets indices outside [0, {n_classes}) (class_names has {n_classes} entries)", out
    srt = sorted_sets(flat, offsets)
    rep = np.unique(seg[1:][(srt[1:] == srt[:-1]) & (seg[1:] == seg[:-1])])
    if len(rep):
        return "label_sets list a class twice in one video's set", rep
    first = srt[offsets[:-1]] if len(sizes) else np.zeros(0, np.int64)
    off = np.flatnonzero(first != labels)
    if len(off):
        return "'labels' is not the smallest index of the label set", off
    return None


def split_sets(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """``flat`` cut at ``offsets`` (N+1) into N arrays (views)."""
    if len(offsets) < 2:
        return []
    return np.split(flat[: offsets[-1]], offsets[1:-1])


def read_label_sets(f: h5py.File, n: int, path: object) -> tuple[np.ndarray, np.ndarray]:
    """Load a multi-label file's committed ``label_sets`` / ``label_set_offsets`` (tails ignored).

    Only the structure is checked here (datasets present, integers, long enough, offsets from 0);
    :func:`label_set_problem` checks the sets themselves.

    Returns:
        (flat, offsets): label_sets[:offsets[N]] and label_set_offsets[:N+1], both int64.

    Raises:
        StoreError: naming ``path`` and the dataset.
    """
    fix = "the file is corrupt, re-create it"
    for name in ("label_sets", "label_set_offsets"):
        if name not in f or not isinstance(f[name], h5py.Dataset) or f[name].ndim != 1:
            raise StoreError(f"{path}: multilabel file without a 1-D dataset {name!r}; {fix}")
        if np.dtype(f[name].dtype).kind not in "iu":
            raise StoreError(f"{path}: {name!r} are stored as {f[name].dtype}; they must be integers; {fix}")
    ds = f["label_set_offsets"]
    if ds.shape[0] < n + 1:
        raise StoreError(
            f"{path}: 'label_set_offsets' has {ds.shape[0]} entries but 'offsets' describes {n} videos "
            f"(needs {n + 1}); {fix}"
        )
    offsets = np.asarray(ds[: n + 1], dtype=np.int64)
    total = f["label_sets"].shape[0]
    if offsets[0] != 0 or not 0 <= offsets[-1] <= total:
        raise StoreError(
            f"{path}: 'label_set_offsets' must start at 0 and end within 'label_sets' ({total} entries), "
            f"got {offsets[0]} ... {offsets[-1]}; {fix}"
        )
    return np.asarray(f["label_sets"][: offsets[-1]], dtype=np.int64), offsets


class LabelSets:
    """Mixin: ``label_sets`` of a store that sets ``_set_flat`` and ``_set_offsets`` (N+1)."""

    _set_flat: np.ndarray
    _set_offsets: np.ndarray

    @functools.cached_property
    def label_sets(self) -> list[np.ndarray]:
        """Each video's class indices: int64, sorted ascending, unique, non-empty (single-label: [label])."""
        return split_sets(self._set_flat, self._set_offsets)


# ---- writing (FeatureWriter of a multi-label store) --------------------------------------------
def create_label_set_datasets(f: h5py.File) -> None:
    """Add the empty, resizable ``label_sets`` and ``label_set_offsets`` (= [0]) to a new file."""
    f.create_dataset("label_sets", shape=(0,), maxshape=(None,), chunks=(4096,), dtype=np.int64)
    f.create_dataset("label_set_offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1024,))


def append_label_sets(f: h5py.File, n: int, m: int, sets: Sequence[npt.ArrayLike]) -> int:
    """Write ``sets`` after the ``n`` videos / ``m`` label indices already there; return the new m.

    Not a commit: ``offsets``, extended after this, is the commit record.
    """
    arrays = [np.asarray(x, np.int64).reshape(-1) for x in sets]
    sizes = np.cumsum([len(x) for x in arrays], dtype=np.int64)
    for name, start, data in (
        ("label_sets", m, np.concatenate(arrays)),
        ("label_set_offsets", n + 1, m + sizes),
    ):
        ds = f[name]  # one lookup: h5py's by-name access is slow enough to show in a profile
        ds.resize(start + len(data), axis=0)
        ds[start : start + len(data)] = data
    return m + int(sizes[-1])


def drop_label_set_tail(f: h5py.File, n: int, m: int) -> None:
    """Cut the label-set datasets (if the file has them) back to ``n`` videos / ``m`` indices."""
    if "label_set_offsets" in f:
        f["label_set_offsets"].resize(n + 1, axis=0)
        f["label_sets"].resize(m, axis=0)
