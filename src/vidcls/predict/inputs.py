"""Inputs of the predictor: video paths, (T, D) feature arrays or lists of them, checked and turned into
the feature sequences the models see, and the record of an input that could not be predicted."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import DTypeLike

from ..errors import CheckpointError, ConfigError, ExtractError, VidclsError

if TYPE_CHECKING:
    from ..features.backbone import FrameEncoder
    from ..features.quality import Quality
    from ..features.sampling import Sampling


def as_list(x: object) -> list:
    if isinstance(x, (str, os.PathLike)):
        return [x]
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            return [x]
        if x.ndim == 3:
            return list(x)
        raise ConfigError(f"features must be (T, D) or a list of them; got an array of shape {x.shape}")
    if isinstance(x, (list, tuple)):
        if len(x) and isinstance(x[0], (list, tuple)) and np.ndim(x[0]) == 1:
            return [list(x)]  # one (T, D) sequence as nested lists (JSON); check_features makes the array
        return list(x)
    raise ConfigError(f"cannot predict a {type(x).__name__}: give a video path, a (T, D) array or a list")


FEATURE_SUFFIX = ".npy"  # a path ending so is read as one video's (T, D) features, as by `vidcls predict`


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """The array of a .npy file, for :func:`check_features`.

    Raises:
        ConfigError: not a readable .npy of numbers (missing, a folder, no NumPy header, Python objects).
    """
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a .npy file") from None
    except (OSError, ValueError, EOFError) as err:
        with open(path, "rb") as f:
            header = f.read(6) == b"\x93NUMPY"
        why = (
            "holds Python objects, not numbers"
            if header and "allow_pickle" in str(err)
            else f"is damaged ({err})"
            if header
            else "is not a .npy array file (no NumPy header)"
        )
        raise ConfigError(
            f"{path}: {why}; write the (T, D) features with numpy.save(path, features)"
        ) from None


def check_features(a: object, name: str, feature_dim: int, store_dtype: DTypeLike | None) -> np.ndarray:
    """A (T, D) input as float32, rounded to the store's precision.

    Raises:
        ConfigError: not a (T >= 1, D) array of finite numbers. CheckpointError: another D.
    """
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a)
    except ValueError:  # a ragged nested list: numpy refuses to make it an array
        raise ConfigError(
            f"{name}: features must be a (T, D) array of numbers; the rows given have different lengths"
        ) from None
    # complex numbers are numbers to numpy, but not features: casting them drops the imaginary part
    if (
        arr.ndim != 2
        or not len(arr)
        or not np.issubdtype(arr.dtype, np.number)
        or np.issubdtype(arr.dtype, np.complexfloating)
    ):
        raise ConfigError(
            f"{name}: features must be a (T, D) array of numbers with T >= 1, got {arr.dtype} {arr.shape}"
        )
    if arr.shape[1] != feature_dim:
        raise CheckpointError(
            f"{name}: features have D={arr.shape[1]} but the run was trained on "
            f"D={feature_dim}; use features from the run's extractor"
        )
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name}: features hold NaN or Inf")
    if store_dtype is not None:
        with np.errstate(over="ignore"):  # an overflow is the error below, not a warning
            arr = arr.astype(store_dtype)
        if not np.isfinite(arr).all():
            raise ConfigError(
                f"{name}: features overflow {store_dtype}, the precision the run's "
                f"features were stored in; they cannot come from the run's extractor"
            )
    return np.ascontiguousarray(arr, dtype=np.float32)


def encode_videos(
    paths: Sequence[str | os.PathLike],
    encoder: FrameEncoder,
    sampling: Sampling,
    quality: Quality,
    decode_workers: int,
) -> list[dict]:
    """Per path: {"features", "timestamps_ms", "decode_s", "features_s"} or {"error"} (never raises
    for a broken file; a missing extractor raises)."""
    from ..features.pipeline import iter_features

    out: list[dict | None] = [None] * len(paths)
    try:
        for r in iter_features(
            [str(p) for p in paths],
            encoder,
            sampling,
            quality,
            decode_workers=decode_workers if len(paths) > 1 else 0,
        ):
            if r.status != "ok":
                out[r.index] = {"error": f"{r.reason}: {r.detail}"}
            else:
                out[r.index] = {
                    "features": r.features,
                    "timestamps_ms": r.timestamps_ms,
                    "decode_s": float(r.info.get("decode_s", 0.0)),
                    "features_s": float(r.info.get("cnn_s", 0.0)),
                }
    except VidclsError as err:  # a decode worker died: the videos not done get its message
        out = [o if o is not None else {"error": f"error: {err}"} for o in out]
    return [o if o is not None else {"error": "error: no result from the decoder"} for o in out]


def gather(
    x: object,
    *,
    check: Callable[[Any, str], np.ndarray],
    encode: Callable[[list], list[dict]],
    strict: bool,
) -> list[dict]:
    """Per input: {"input", "features" (T, D) float32 | None, "timestamps_ms", "error", timings}.

    ``check(array, name)`` validates one (T, D) input, ``encode(paths)`` turns videos into features
    (see :func:`encode_videos`); ``strict``: raise on the first unusable input (predict_proba) instead of recording its error.
    """
    items = as_list(x)
    out: list[dict] = []
    for i, item in enumerate(items):
        is_path = isinstance(item, (str, os.PathLike))
        is_npy = is_path and str(item).lower().endswith(FEATURE_SUFFIX)  # features, not a video
        out.append(
            {
                "input": str(item) if is_path else f"features[{i}]",
                "path": item if is_path and not is_npy else None,
                "features": None,
                "timestamps_ms": None,
                "error": None,
                "decode_s": 0.0,
                "features_s": 0.0,
            }
        )
        if not is_path or is_npy:
            try:
                out[-1]["features"] = check(load_npy(item) if is_npy else item, out[-1]["input"])
            except VidclsError as err:
                if strict:
                    raise
                out[-1]["error"] = str(err)
    videos = [r for r in out if r["path"] is not None]
    if videos:
        for r, v in zip(videos, encode([r["path"] for r in videos])):
            if "error" in v:
                if strict:
                    raise ExtractError(f"{r['input']}: {v['error']}")
                r["error"] = v["error"]
                continue
            try:
                r["features"] = check(v["features"], r["input"])
            except VidclsError as err:
                if strict:
                    raise
                r["error"] = str(err)
                continue
            r["timestamps_ms"] = np.asarray(v["timestamps_ms"], np.float64)
            r["decode_s"], r["features_s"] = v["decode_s"], v["features_s"]
    return out


def finite(v: float | np.floating | None) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def stamps(timestamps_ms: Sequence[float] | np.ndarray | None, kept: Sequence[int]) -> list[float | None]:
    if timestamps_ms is None:
        return [None] * len(kept)
    return [float(timestamps_ms[i]) for i in kept]


def error_record(name: str, error: str, decode_s: float = 0.0, features_s: float = 0.0) -> dict:
    """The record of an input that could not be predicted."""
    return {
        "input": name,
        "label": None,
        "top_k": [],
        "probabilities": {},
        "trusted": False,
        "trust_reason": f"not predicted: {error}",
        "ood_score": None,
        "ood_scores": {},
        "frames": [],
        "timings": {"decode_s": round(decode_s, 6), "features_s": round(features_s, 6), "model_s": 0.0},
        "error": error,
    }
