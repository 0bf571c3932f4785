"""The feature store: one ragged HDF5 file per split (format + reader, writer, importers, synthetic data).

A split may also be several shard files read as one (:mod:`vidcls.store.shards`); ``open_splits``
opens a features directory either way (:mod:`vidcls.store.directory`).
"""

from .directory import SplitStore, open_splits
from .reader import FORMAT_VERSION, SPLITS, FeatureStore, StoreLockedError
from .shards import MultiFileStore
from .split import stratified_split
from .writer import FeatureWriter, write_store

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "FeatureStore",
    "FeatureWriter",
    "MultiFileStore",
    "SplitStore",
    "StoreLockedError",
    "open_splits",
    "stratified_split",
    "write_store",
]
