"""Predicting many inputs with a loaded run: the engine of ``vidcls predict``.

Inputs are video files, folders (searched recursively for the extensions ``vidcls extract`` reads)
and ``.npy`` feature files holding one (T, D) array each (for callers that extract themselves).
Each input gives one record (``Predictor.predict_records``): label, top-k, trust verdict, per-frame
attention with timestamps, timings, or ``error`` with the reason when the input cannot be used.
A broken input never stops the run.

Videos go through the extraction pipeline (:func:`vidcls.features.pipeline.iter_features`) when
the predictor exposes its frame encoder, sampling and quality filter: worker processes decode the
next videos while this process runs the CNN and the temporal models. Otherwise they are passed to
``predict_records`` in chunks of ``batch_size``.

With a JSON-lines output file the run is resumable: each record is appended as one line, flushed
and fsynced, so that a run killed at any moment (even ``kill -9``) leaves every finished line
intact and at most one torn last line. On start the existing lines are read, the torn last line is
dropped from the file, and inputs already present are skipped. Inputs that were recorded with an
error are skipped as well: remove their lines to try them again. An output file holding anything
else (lines vidcls did not write, another format, one of the inputs) is refused before any work and
left untouched (:func:`vidcls.inference.outputs.check_output`).

A run whose features were not made by a frame encoder vidcls runs (imported with ``vidcls import``,
synthetic) reads only .npy features: each video gets an error record saying so.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError
from ..utils.device import check_decode_workers
from ..utils.fs import atomic_write_text
from .collect import FEATURE_EXTENSIONS
from .inputs import error_record, load_npy
from .outputs import (
    FORMATS,
    JsonlAppender,
    check_output,
    format_records,
    read_jsonl,
    to_json,
)

__all__ = ["iter_records", "run_predict", "PredictOptions", "PredictSummary"]



# ---- records ----------------------------------------------------------------------------------
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
        raise ValueError(f"{path}: features have D={x.shape[1]} but the run was trained on "
                         f"D={feature_dim}; extract them with the run's extractor")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError(f"{path}: features hold NaN/Inf or are not numbers")
    return np.ascontiguousarray(x, dtype=np.float32)


def _pipeline_parts(predictor):
    """(encoder, sampling, quality) when the predictor exposes them, else None."""
    parts = tuple(getattr(predictor, name, None) for name in ("encoder_", "sampling_", "quality_"))
    return parts if all(p is not None for p in parts) else None


def _no_videos(predictor) -> str | None:
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
        made = (f"this run's features were made by {record.get('backbone') or 'an unrecorded extractor'!s}, "
                f"not by a frame encoder vidcls can run")
    return (f"{made}, so it reads only .npy (T, D) feature files, not videos; extract this video's "
            f"features the way the run's were made and give the .npy")


def _with_frames(record: dict, timestamps_ms) -> dict:
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
        yield items[start:start + size]


def iter_records(predictor, inputs: Sequence[Path], *, top_k: int = 3, batch_size: int = 16,
                 decode_workers: int = 2) -> Iterator[dict]:
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


def _feature_records(predictor, paths, top_k, batch_size, feature_dim) -> Iterator[dict]:
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
        for p, x, err, load_s in loaded:
            if x is None:
                yield error_record(str(p), err)
                continue
            rec = next(records)
            place += 1
            if rec.get("error"):  # named by its place in the predictor's call: name the file instead
                yield error_record(str(p), rec["error"].replace(f"features[{place - 1}]", str(p), 1), load_s)
                continue
            rec["input"] = str(p)
            rec.setdefault("timings", {})["decode_s"] = round(load_s, 4)
            yield rec


def _pipeline_records(predictor, paths, top_k, batch_size, decode_workers) -> Iterator[dict]:
    """Decode in worker processes, encode here, and run the temporal models on chunks.

    When a decode worker dies (FFmpeg crashing on some file), the videos that were in flight are
    decoded again one at a time, each in a worker of its own: the one that kills its worker gets an
    error record, and the pipeline goes on after them.
    """
    from ..errors import ExtractError
    from ..features import pipeline

    parts = _pipeline_parts(predictor)  # (encoder, sampling, quality)
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
            window = paths[start:start + 2 * max(1, int(decode_workers)) * pipeline.PREFETCH]
            for item in _decode_one_by_one(window, parts):
                pending.append(item)
                if len(pending) >= batch_size:
                    yield from _predict_pending(predictor, pending, top_k)
            start += len(window)
    yield from _predict_pending(predictor, pending, top_k)


def _predict_pending(predictor, pending: list, top_k: int) -> Iterator[dict]:
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
        rec["timings"] = {"decode_s": round(float(r.info.get("decode_s", 0.0)), 6),
                          "features_s": round(float(r.info.get("cnn_s", 0.0)), 6),
                          "model_s": round(model_s, 6)}
        yield rec
    pending.clear()


def _decode_one_by_one(window, parts) -> Iterator[tuple]:
    """(path, VideoResult) per video, each decoded by a worker of its own, so that a video that
    kills its worker costs only its own record."""
    from ..errors import ExtractError
    from ..features import pipeline

    for path in window:
        try:
            yield path, next(pipeline.iter_features([str(path)], *parts, decode_workers=1))
        except ExtractError as err:
            yield path, pipeline.VideoResult(0, "skipped", reason="error",
                                             detail=f"{path}: the decoder crashed on it ({err})")


@dataclass
class PredictSummary:
    """What ``run_predict`` did."""

    total: int = 0  # inputs found
    skipped: int = 0  # already in the output file
    predicted: int = 0  # predicted now, errors included
    errors: int = 0  # of those, inputs that could not be used
    untrusted: int = 0  # usable records with trusted false
    unknown: int = 0  # usable records with trusted null: the run is not calibrated
    timelines: int = 0
    output: Path | None = None
    seconds: float = 0.0
    records: list = field(default_factory=list, repr=False)

    @property
    def usable(self) -> int:
        """Inputs predicted now with a label (the errors left out)."""
        return self.predicted - self.errors

    def line(self) -> str:
        parts = [f"{self.usable} predicted"]
        if self.skipped:
            parts.append(f"{self.skipped} already in {self.output}")
        if self.errors:
            parts.append(f"{self.errors} could not be used (see their \"error\")")
        if self.untrusted:
            parts.append(f"{self.untrusted} not trusted")
        if self.unknown:
            parts.append(f"{self.unknown} of unknown trust (not calibrated)")
        if self.timelines:
            parts.append(f"{self.timelines} timelines")
        where = f"; written: {self.output}" if self.output else ""
        return f"{self.total} inputs: {', '.join(parts)} in {self.seconds:.1f} s{where}"


def _common_folder(inputs: Sequence[Path]) -> str | None:
    """The deepest folder holding every input (timeline names are the paths below it)."""
    try:
        return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in inputs]) if inputs else None
    except ValueError:  # different drives
        return None


def _relative(name: str, base: str | None) -> str:
    if base is None:
        return name
    rel = os.path.relpath(os.path.abspath(name), base)
    return name if rel.startswith("..") else rel


def _progress(total: int, initial: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="video", file=sys.stderr, dynamic_ncols=True)


@dataclass(frozen=True)
class PredictOptions:
    """The settings of one ``run_predict`` (the flags of ``vidcls predict``).

    ``fmt``: one of FORMATS. ``output``: a file, or None for stdout; ``jsonl`` appends one line per
    input and skips the inputs already in the file (resumable), the other formats are written
    atomically at the end. ``top_k``, ``batch_size``, ``decode_workers``: see ``iter_records``.
    ``timeline_dir``: write one timeline PNG per usable input there.

    Raises:
        ConfigError: a bad --format / --top-k / --batch-size.
    """

    fmt: str = "table"
    output: str | os.PathLike | None = None
    top_k: int = 3
    batch_size: int = 16
    decode_workers: int = 2
    timeline_dir: str | os.PathLike | None = None

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if int(self.top_k) < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_decode_workers(self.decode_workers)


class _Timelines:
    """Writes one timeline PNG per usable record; one that fails is reported and the run goes on."""

    def __init__(self, folder, inputs: Sequence[Path], writer: Callable | None):
        Path(folder).mkdir(parents=True, exist_ok=True)
        if writer is None:
            from ..reporting.timeline import write_timeline as writer
        self.folder, self.writer = folder, writer
        self.base = _common_folder(inputs)
        self.names: set[str] = set()  # the file names taken, so that equal labels do not collide

    def write(self, record: dict) -> bool:
        try:
            self.writer(record, self.folder, names=self.names, label=_relative(record["input"], self.base))
            return True
        except (OSError, ValueError) as err:
            print(f"timeline of {record['input']} not written: {err}", file=sys.stderr)
            return False


def _resume(inputs: Sequence[Path], output) -> tuple[list[Path], JsonlAppender]:
    """The inputs not yet in the JSON-lines ``output`` (as given or as absolute paths), and an
    appender to it."""
    done = {r["input"] for r in read_jsonl(output)}
    done |= {os.path.abspath(d) for d in done}
    todo = [p for p in inputs if str(p) not in done and os.path.abspath(p) not in done]
    return todo, JsonlAppender(Path(output))


def _emit(record: dict, fmt: str, appender: JsonlAppender | None, stdout, out: PredictSummary) -> None:
    """Write a JSON-lines record at once; keep the others for ``_write_all`` at the end."""
    if appender is not None:
        appender.write(record)
    elif fmt == "jsonl":
        stdout.write(to_json(record) + "\n")
        stdout.flush()
    else:
        out.records.append(record)


def _write_all(records: list[dict], options: PredictOptions, stdout) -> None:
    text = format_records(records, options.fmt)
    if options.output:  # through a link to the file it names, as the JSON-lines appender writes
        atomic_write_text(os.path.realpath(options.output), text)
    else:
        stdout.write(text)
        stdout.flush()


def run_predict(predictor, inputs: Sequence[Path], options: PredictOptions | None = None, *,
                progress: bool | None = None, stdout=None, timeline: Callable | None = None,
                **settings) -> PredictSummary:
    """Predict ``inputs`` and write the records.

    Args:
        predictor: a loaded run (``vidcls.load``).
        inputs: from ``collect_inputs``.
        options: format, output, top_k, batch_size, decode_workers, timeline_dir; or give them as
            keyword ``settings`` with PredictOptions' field names (``fmt="jsonl", top_k=2``).
        progress: a progress bar on stderr (None: only when stderr is a terminal).
        stdout: where records go without ``output`` (default sys.stdout).
        timeline: the timeline writer (default ``vidcls.reporting.timeline.write_timeline``).

    Returns:
        PredictSummary (its ``records`` are those predicted in this run, unless written as JSON lines).
    """
    if options is None:
        options = PredictOptions(**settings)
    elif settings:
        raise TypeError(f"give either options or settings, not both (got {sorted(settings)})")
    t0 = time.perf_counter()
    stdout = stdout if stdout is not None else sys.stdout
    out = PredictSummary(total=len(inputs), output=Path(options.output) if options.output else None)
    todo, appender = list(inputs), None
    # before any work: never destroy what is there (JSON lines: read_jsonl checks what it reads)
    check_output(options.output, options.fmt, inputs, contents=options.fmt != "jsonl")
    if options.output and options.fmt == "jsonl":
        todo, appender = _resume(inputs, options.output)
        out.skipped = len(inputs) - len(todo)
    timelines = None if options.timeline_dir is None else _Timelines(options.timeline_dir, inputs, timeline)
    bar = _progress(len(inputs), out.skipped, progress)
    try:
        for rec in iter_records(predictor, todo, top_k=options.top_k, batch_size=options.batch_size,
                                decode_workers=options.decode_workers):
            out.predicted += 1
            out.errors += bool(rec.get("error"))
            out.untrusted += not rec.get("error") and rec.get("trusted", True) is False
            out.unknown += not rec.get("error") and rec.get("trusted", True) is None
            if timelines is not None and not rec.get("error"):
                out.timelines += timelines.write(rec)
            _emit(rec, options.fmt, appender, stdout, out)
            if bar is not None:
                bar.update(1)
    finally:
        if appender is not None:
            appender.close()
        if bar is not None:
            bar.close()
    if options.fmt != "jsonl":
        _write_all(out.records, options, stdout)
    out.seconds = time.perf_counter() - t0
    return out
