"""Predicting many inputs with a loaded run: the engine of ``vidcls predict``.

Inputs are video files, folders (searched recursively for the extensions ``vidcls extract`` reads)
and ``.npy`` feature files holding one (T, D) array each (for callers that extract themselves).
Each input gives one record (``Predictor.predict_records``): label, top-k, trust verdict, per-frame
attention with timestamps, timings, or ``error`` with the reason when the input cannot be used; a
multi-label run's records also hold the label set (``labels``, :mod:`vidcls.predict.multilabel`), which
the CSV and the table show in a ``labels`` column.
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
left untouched (:func:`vidcls.predict.outputs.check_output`).

A run whose features were not made by a frame encoder vidcls runs (imported with ``vidcls import``,
synthetic) reads only .npy features: each video gets an error record saying so.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ConfigError
from ..utils.device import check_decode_workers
from ..utils.fs import atomic_write_text
from .outputs import (
    FORMATS,
    JsonlAppender,
    check_output,
    format_records,
    read_jsonl,
    to_json,
)
from .records import RecordPredictor, iter_records

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["iter_records", "run_predict", "PredictOptions", "PredictSummary"]


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

    def count(self, record: dict) -> None:
        """Count one record predicted now."""
        self.predicted += 1
        self.errors += bool(record.get("error"))
        self.untrusted += not record.get("error") and record.get("trusted", True) is False
        self.unknown += not record.get("error") and record.get("trusted", True) is None

    @property
    def usable(self) -> int:
        """Inputs predicted now with a label (the errors left out)."""
        return self.predicted - self.errors

    def line(self) -> str:
        parts = [f"{self.usable} predicted"]
        if self.skipped:
            parts.append(f"{self.skipped} already in {self.output}")
        if self.errors:
            parts.append(f'{self.errors} could not be used (see their "error")')
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


def _progress(total: int, initial: int, enabled: bool | None) -> tqdm | None:
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
    segments: str | None = None
    stride: str | None = None

    def __post_init__(self) -> None:
        from .segments import parse_window

        parse_window(self.segments, self.stride)  # a bad window is refused before any work
        if self.fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if int(self.top_k) < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_decode_workers(self.decode_workers)


class _Timelines:
    """Writes one timeline PNG per usable record; one that fails is reported and the run goes on."""

    def __init__(self, folder: str | os.PathLike, inputs: Sequence[Path], writer: Callable | None) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        if writer is None:
            from .timeline import write_timeline

            writer = write_timeline
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


def _resume(inputs: Sequence[Path], output: str | os.PathLike) -> tuple[list[Path], JsonlAppender]:
    """The inputs not yet in the JSON-lines ``output`` (as given or as absolute paths), and an
    appender to it."""
    appender = JsonlAppender(Path(output))  # locked first: another run's lines cannot come in between
    try:
        done = {r["input"] for r in read_jsonl(output)}
    except BaseException:
        appender.close()
        raise
    done |= {os.path.abspath(d) for d in done}
    todo = [p for p in inputs if str(p) not in done and os.path.abspath(p) not in done]
    return todo, appender


def _emit(
    record: dict, fmt: str, appender: JsonlAppender | None, stdout: TextIO, out: PredictSummary
) -> None:
    """Write a JSON-lines record at once; keep the others for ``_write_all`` at the end."""
    if appender is not None:
        appender.write(record)
    elif fmt == "jsonl":
        stdout.write(to_json(record) + "\n")
        stdout.flush()
    else:
        out.records.append(record)


def _options(options: PredictOptions | None, settings: dict[str, Any]) -> PredictOptions:
    """``options``, or PredictOptions made of the keyword ``settings`` (never both)."""
    if options is None:
        return PredictOptions(**settings)
    if settings:
        raise TypeError(f"give either options or settings, not both (got {sorted(settings)})")
    return options


def _write_all(records: list[dict], options: PredictOptions, stdout: TextIO, task: str | None) -> None:
    text = format_records(records, options.fmt, task=task)
    if options.output:  # through a link to the file it names, as the JSON-lines appender writes
        atomic_write_text(os.path.realpath(options.output), text)
    else:
        stdout.write(text)
        stdout.flush()


def _records(predictor: RecordPredictor, todo: Sequence[Path], options: PredictOptions) -> Iterator[dict]:
    """The records of ``todo``: with ``--segments`` one video at a time (each streamed whole through
    the encoder, :meth:`Predictor.predict_segments`), else batched (:func:`iter_records`)."""
    if options.segments is None:
        yield from iter_records(
            predictor,
            todo,
            top_k=options.top_k,
            batch_size=options.batch_size,
            decode_workers=options.decode_workers,
        )
        return
    segment = getattr(predictor, "predict_segments")  # noqa: B009 (not in RecordPredictor: optional)
    for p in todo:
        yield from segment([str(p)], options.segments, options.stride, top_k=options.top_k)


def run_predict(
    predictor: RecordPredictor,
    inputs: Sequence[Path],
    options: PredictOptions | None = None,
    *,
    progress: bool | None = None,
    stdout: TextIO | None = None,
    timeline: Callable | None = None,
    **settings: Any,
) -> PredictSummary:
    """Predict ``inputs`` and write the records.

    Args:
        predictor: a loaded run (``vidcls.load``).
        inputs: from ``collect_inputs``.
        options: format, output, top_k, batch_size, decode_workers, timeline_dir; or give them as
            keyword ``settings`` with PredictOptions' field names (``fmt="jsonl", top_k=2``).
        progress: a progress bar on stderr (None: only when stderr is a terminal).
        stdout: where records go without ``output`` (default sys.stdout).
        timeline: the timeline writer (default ``vidcls.predict.timeline.write_timeline``).

    Returns:
        PredictSummary (its ``records`` are those predicted in this run, unless written as JSON lines).
    """
    options = _options(options, settings)
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
        for rec in _records(predictor, todo, options):
            out.count(rec)
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
        _write_all(out.records, options, stdout, getattr(predictor, "task_", None))
    out.seconds = time.perf_counter() - t0
    return out
