"""A features directory: whichever of train/val/test it holds, each one file or a set of shards.

``open_splits`` opens them (:mod:`vidcls.store.reader` for single files, :mod:`vidcls.store.shards`
for shard sets) and checks that they agree. It sits above both, so the store modules import in one
direction: reader <- writer <- shards <- directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

from ..errors import StoreError

# ``log`` is the reader's logger, so these messages keep the "vidcls.store.reader" logger name.
from .reader import CREATE_HINT, SPLITS, FeatureStore, log
from .shards import MultiFileStore, open_shard_splits

# One split as read: a single file, or the shard files of a sharded extraction read as one. Both
# have ``multilabel`` and ``label_sets`` (:mod:`vidcls.store.labels`) next to ``labels``.
SplitStore: TypeAlias = FeatureStore | MultiFileStore


def open_splits(
    features_dir: str | os.PathLike, *, require: Sequence[str] = ("train",)
) -> dict[str, SplitStore]:
    """Open whichever of train/val/test exist in ``features_dir`` and check they agree.

    A split is one file (``train.h5``) or the shard files of a sharded extraction, read as one
    ``MultiFileStore`` once every shard is found complete (:mod:`vidcls.store.shards`).

    Args:
        features_dir: directory holding {split}.h5 files (or their shards).
        require: splits that must be present.

    Returns:
        {split: FeatureStore or MultiFileStore} for the splits found, in SPLITS order.

    Raises:
        StoreError: directory or a required split missing, an empty split, splits disagreeing
            on feature_dim / class_names / multilabel; a split both single and sharded, a shard missing.
    """
    d = Path(features_dir)
    if not d.is_dir():
        raise StoreError(f"features directory {d} does not exist; {CREATE_HINT}")
    unknown = [s for s in require if s not in SPLITS]
    if unknown:
        raise StoreError(f"unknown split(s) {unknown} in require; choose from {list(SPLITS)}")
    singles = [s for s in SPLITS if (d / f"{s}.h5").exists()]
    sharded = open_shard_splits(d, singles)
    missing = [s for s in require if s not in singles and s not in sharded]
    if missing:
        present = sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
        raise StoreError(
            f"{d}: required split file(s) {[f'{s}.h5' for s in missing]} missing; "
            f"the directory contains {present or 'nothing'}; {CREATE_HINT}"
        )
    stores = {
        s: sharded[s] if s in sharded else FeatureStore(d / f"{s}.h5")
        for s in SPLITS
        if s in singles or s in sharded
    }
    _check_across_splits(stores)
    return stores


def _check_across_splits(stores: dict[str, SplitStore]) -> None:
    for s in stores.values():
        if len(s) == 0:
            raise StoreError(f"{s.path} holds 0 videos; re-create it or remove the file")
    ref = next(iter(stores.values()), None)
    if ref is None:  # no split found, none required
        return
    for s in stores.values():
        if s.feature_dim != ref.feature_dim:
            raise StoreError(
                f"feature_dim differs: {ref.path} has {ref.feature_dim}, {s.path} has "
                f"{s.feature_dim}; extract all splits with the same backbone"
            )
        if s.multilabel != ref.multilabel:
            kind = {True: "multi-label", False: "single-label"}
            raise StoreError(
                f"label kind differs: {ref.path} is {kind[ref.multilabel]}, {s.path} is "
                f"{kind[s.multilabel]}; import all splits from one labels CSV so that they share one kind"
            )
        if s.class_names != ref.class_names:
            raise StoreError(
                f"class_names differ: {ref.path} has {ref.class_names}, {s.path} has "
                f"{s.class_names}; write all splits with the same class list"
            )
        if ref.extractor and s.extractor and s.extractor != ref.extractor:
            log.warning(
                "extractor differs: %s has %s, %s has %s", ref.path, ref.extractor, s.path, s.extractor
            )
