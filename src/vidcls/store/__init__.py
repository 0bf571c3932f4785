"""The feature store: one ragged HDF5 file per split (format + reader, writer, importers, synthetic data).

A split may also be several shard files read as one (:mod:`vidcls.store.shards`).
"""

from .reader import FORMAT_VERSION, SPLITS, FeatureStore, StoreLockedError, open_splits
from .shards import MultiFileStore
from .split import stratified_split
from .writer import FeatureWriter, write_store

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "FeatureStore",
    "FeatureWriter",
    "MultiFileStore",
    "StoreLockedError",
    "open_splits",
    "stratified_split",
    "write_store",
]
