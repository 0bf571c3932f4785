"""One record per input path: .npy features read here, videos decoded in worker processes beside the
models (:func:`vidcls.features.pipeline.iter_features`) when the predictor exposes its frame encoder,
or given to ``predict_records`` in chunks. A broken input is an error record, never an exception.
``vidcls predict`` (:mod:`vidcls.predict.batch`) writes what :func:`iter_records` yields."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError
from . import multilabel
from .collect import FEATURE_EXTENSIONS
from .inputs import error_record, load_npy


class RecordPredictor(Protocol):
    """What :func:`iter_records` needs of a predictor (``vidcls.load`` gives one): ``predict_records``.
    The attributes ``feature_dim_``, ``extractor_``, ``encoder_``, ``sampling_`` and ``quality_`` are
    read with ``getattr`` where the predictor has them."""

    def predict_records(self, x: Any, top_k: int = 3) -> list[dict]: ...


def _load_features(path: Path, feature_dim: int | None) -> np.ndarray:
    """A (T, D) float32 array from a .npy file; ValueError with the reason when unusable."""
    try:
        x = load_npy(path)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    if x.ndim != 2 or not len(x):
        raise ValueError(f"{path}: features must be a (T, D) array with T >= 1, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.complexfloating):  # a cast to float would drop the imaginary part
        raise ValueError(f"{path}: features must be real numbers, got a complex array ({x.dtype})")
    if feature_dim is not None and x.shape[1] != int(feature_dim):
        raise ValueError(
            f"{path}: features have D={x.shape[1]} but the run was trained on "
            f"D={feature_dim}; extract them with the run's extractor"
        )
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError(f"{path}: features hold NaN/Inf or are not numbers")
    return np.ascontiguousarray(x, dtype=np.float32)


def _pipeline_parts(predictor: RecordPredictor) -> tuple[Any, Any, Any] | None:
    """(encoder, sampling, quality) when the predictor exposes them, else None."""
    encoder, sampling, quality = (getattr(predictor, n, None) for n in ("encoder_", "sampling_", "quality_"))
    if encoder is None or sampling is None or quality is None:
        return None
    return encoder, sampling, quality


def _no_videos(predictor: RecordPredictor) -> str | None:
    """Why the run cannot read any video (its features were not made by a frame encoder vidcls
    runs: imported, synthetic), or None."""
    record = getattr(predictor, "extractor_", None)
    if not isinstance(record, dict):
        return None
    from ..features.families import family_of

    if family_of(record) is not None:
        return None
    if not record:
        made = "this run has no extractor record (it was trained on imported features)"
    else:
        made = (
            f"this run's features were made by {record.get('backbone') or 'an unrecorded extractor'!s}, "
            f"not by a frame encoder vidcls can run"
        )
    return (
        f"{made}, so it reads only .npy (T, D) feature files, not videos; extract this video's "
        f"features the way the run's were made and give the .npy"
    )


def _with_frames(record: dict, timestamps_ms: Sequence[float] | np.ndarray | None) -> dict:
    """Put the decoded frames' timestamps into a record predicted from their features."""
    if timestamps_ms is None:
        return record
    for f in record.get("frames") or []:
        i = int(f.get("index", -1))
        if 0 <= i < len(timestamps_ms):
            f["timestamp_ms"] = float(timestamps_ms[i])
    return record


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def iter_records(
    predictor: RecordPredictor,
    inputs: Sequence[Path],
    *,
    top_k: int = 3,
    batch_size: int = 16,
    decode_workers: int = 2,
) -> Iterator[dict]:
    """One record per input, in the order of ``inputs`` (:func:`_iter_records`); a multi-label run's
    error records carry its fields too (``multilabel.error_fields``, from the predictor's ``thresholds_``)."""
    thresholds = getattr(predictor, "thresholds_", None)
    for rec in _iter_records(
        predictor, inputs, top_k=top_k, batch_size=batch_size, decode_workers=decode_workers
    ):
        yield multilabel.error_fields(rec, thresholds) if rec.get("error") else rec


def _iter_records(
    predictor: RecordPredictor,
    inputs: Sequence[Path],
    *,
    top_k: int,
    batch_size: int,
    decode_workers: int,
) -> Iterator[dict]:
    """One record per input, in the order of ``inputs``.

    Args:
        predictor: a loaded run (``vidcls.load``): ``predict_records``, ``feature_dim_``, and, for
            overlapped decoding, ``encoder_`` / ``sampling_`` / ``quality_``.
        inputs: video files and .npy feature files.
        top_k: classes per record.
        batch_size: inputs per call of the temporal models.
        decode_workers: decoding processes beside the models (pipeline path only).

    Yields:
        dict records (``input`` is ``str(path)``); broken inputs give ``error`` records.
    """
    batch_size = max(1, int(batch_size))
    feature_dim = getattr(predictor, "feature_dim_", None)
    # consecutive runs of the same kind keep the order while each kind is batched its own way
    groups: list[tuple[str, list[Path]]] = []
    for p in inputs:
        kind = "features" if p.suffix.lower() in FEATURE_EXTENSIONS else "video"
        if groups and groups[-1][0] == kind:
            groups[-1][1].append(p)
        else:
            groups.append((kind, [p]))
    # a run that cannot read videos at all says why in each video's record; any other reason the
    # encoder cannot be built (weights missing) stops here, before any input is predicted
    videos = any(kind == "video" for kind, _ in groups)
    no_videos = _no_videos(predictor) if videos else None
    parts = _pipeline_parts(predictor) if videos and no_videos is None else None
    for kind, paths in groups:
        if kind == "features":
            yield from _feature_records(predictor, paths, top_k, batch_size, feature_dim)
        elif no_videos is not None:
            for p in paths:
                yield error_record(str(p), f"{p}: {no_videos}")
        elif parts is not None:
            yield from _pipeline_records(predictor, paths, top_k, batch_size, decode_workers)
        else:
            for chunk in _chunks(paths, batch_size):
                records = predictor.predict_records([str(p) for p in chunk], top_k=top_k)
                for p, rec in zip(chunk, records):
                    rec["input"] = str(p)
                    yield rec


def _feature_records(
    predictor: RecordPredictor, paths: list[Path], top_k: int, batch_size: int, feature_dim: int | None
) -> Iterator[dict]:
    for chunk in _chunks(paths, batch_size):
        loaded: list[tuple[Path, np.ndarray | None, str | None, float]] = []
        for p in chunk:
            t0 = time.perf_counter()
            try:
                loaded.append((p, _load_features(p, feature_dim), None, time.perf_counter() - t0))
            except ValueError as err:
                loaded.append((p, None, str(err), 0.0))
        ok = [item for item in loaded if item[1] is not None]
        records = iter(predictor.predict_records([x for _, x, _, _ in ok], top_k=top_k) if ok else [])
        place = 0  # the array's index in the predictor's call, which its error messages name
        for p, x, reason, load_s in loaded:
            if x is None:
                yield error_record(str(p), str(reason))
                continue
            rec = next(records)
            place += 1
            if rec.get("error"):  # named by its place in the predictor's call: name the file instead
                yield error_record(str(p), rec["error"].replace(f"features[{place - 1}]", str(p), 1), load_s)
                continue
            rec["input"] = str(p)
            rec.setdefault("timings", {})["decode_s"] = round(load_s, 4)
            yield rec


def _pipeline_records(
    predictor: RecordPredictor, paths: list[Path], top_k: int, batch_size: int, decode_workers: int
) -> Iterator[dict]:
    """Decode in worker processes, encode here, and run the temporal models on chunks.

    When a decode worker dies (FFmpeg crashing on some file), the videos that were in flight are
    decoded again one at a time, each in a worker of its own: the one that kills its worker gets an
    error record, and the pipeline goes on after them.
    """
    from ..errors import ExtractError
    from ..features import pipeline

    parts = _pipeline_parts(predictor)  # (encoder, sampling, quality)
    assert parts is not None  # iter_records comes here only when the predictor has them
    pending: list = []  # (path, VideoResult) waiting for the temporal models
    paths = list(paths)
    start = 0
    while start < len(paths):
        rest = paths[start:]
        try:
            for r in pipeline.iter_features([str(p) for p in rest], *parts, decode_workers=decode_workers):
                pending.append((rest[r.index], r))
                start += 1
                if len(pending) >= batch_size:
                    yield from _predict_pending(predictor, pending, top_k)
        except ExtractError:
            if not decode_workers:
                raise
            # the videos that may have been in flight: the window iter_features' ExtractError names
            window = paths[start : start + 2 * max(1, int(decode_workers)) * pipeline.PREFETCH]
            for item in _decode_one_by_one(window, parts):
                pending.append(item)
                if len(pending) >= batch_size:
                    yield from _predict_pending(predictor, pending, top_k)
            start += len(window)
    yield from _predict_pending(predictor, pending, top_k)


def _predict_pending(predictor: RecordPredictor, pending: list, top_k: int) -> Iterator[dict]:
    """The records of the decoded ``pending`` (path, VideoResult) pairs, in order; empties ``pending``."""
    ok = [r for _, r in pending if r.status == "ok"]
    t0 = time.perf_counter()
    records = iter(predictor.predict_records([r.features for r in ok], top_k=top_k) if ok else [])
    model_s = (time.perf_counter() - t0) / max(1, len(ok))
    for path, r in pending:
        if r.status != "ok":
            yield error_record(str(path), f"{r.reason}: {r.detail}", r.info.get("decode_s", 0.0))
            continue
        rec = _with_frames(next(records), r.timestamps_ms)
        rec["input"] = str(path)
        rec["timings"] = {
            "decode_s": round(float(r.info.get("decode_s", 0.0)), 6),
            "features_s": round(float(r.info.get("cnn_s", 0.0)), 6),
            "model_s": round(model_s, 6),
        }
        yield rec
    pending.clear()


def _decode_one_by_one(window: list[Path], parts: tuple[Any, Any, Any]) -> Iterator[tuple]:
    """(path, VideoResult) per video, each decoded by a worker of its own, so that a video that
    kills its worker costs only its own record."""
    from ..errors import ExtractError
    from ..features import pipeline

    for path in window:
        try:
            yield path, next(pipeline.iter_features([str(path)], *parts, decode_workers=1))
        except ExtractError as err:
            yield (
                path,
                pipeline.VideoResult(
                    0, "skipped", reason="error", detail=f"{path}: the decoder crashed on it ({err})"
                ),
            )
