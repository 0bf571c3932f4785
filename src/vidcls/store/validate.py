"""What a store accepts: class names, and one video's features (shape, floating point, finite once
cast to the stored dtype). The writer checks everything it appends with these; importers check their
sources with them before any file is written."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from ..errors import StoreError
from .labels import LABEL_SEP
from .reader import ALLOWED_DTYPES


def check_features(features: npt.ArrayLike, feature_dim: int, dtype: np.dtype, where: str) -> np.ndarray:
    """Check one video's (T, D) features and cast them to the stored ``dtype``.

    Args:
        features: the array as given. feature_dim: required D. dtype: the stored dtype.
        where: names the video (and its source file) at the start of every error message.

    Returns:
        A C-contiguous (T, D) array of ``dtype``.

    Raises:
        StoreError: wrong shape, not floating point, or NaN/Inf after the cast.
    """
    arr = np.asarray(features)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != feature_dim:
        raise StoreError(f"{where}: features must have shape (T>=1, {feature_dim}), got {arr.shape}")
    # Integer arrays are pixels, indices or counts saved by mistake, not CNN features.
    if arr.dtype.kind != "f":
        raise StoreError(
            f"{where}: features are {arr.dtype}; features must be floating point "
            f"(stored as {' or '.join(ALLOWED_DTYPES)})"
        )
    with np.errstate(over="ignore"):  # overflow is reported below, with a hint
        cast = arr.astype(dtype, copy=False)
    if not np.isfinite(cast).all():
        hint = (
            " (finite before the cast: values exceed the float16 range; use dtype float32)"
            if np.isfinite(arr).all()
            else ""
        )
        raise StoreError(f"{where}: features contain NaN/Inf{hint}")
    return np.ascontiguousarray(cast)


def check_class_names(class_names: Iterable[object], *, multilabel: bool = False) -> list[str]:
    """Class names as strings: at least one, unique, and (multi-label) none holding the separator.

    Raises:
        StoreError: naming the offending class.
    """
    names = [str(c) for c in class_names]
    if not names:
        raise StoreError("class_names is empty; a store needs at least one class")
    dups = sorted(c for c, k in Counter(names).items() if k > 1)  # Counter: 10,000 classes stay fast
    if dups:
        raise StoreError(f"class_names has duplicates {dups}; each class needs a unique name")
    sep = [c for c in names if LABEL_SEP in c] if multilabel else []
    if sep:
        raise StoreError(
            f"class name {sep[0]!r} contains {LABEL_SEP!r}, the label-set separator; rename the class "
            f"(a multi-label store's class names may not contain {LABEL_SEP!r})"
        )
    return names
