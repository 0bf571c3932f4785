"""What ``vidcls predict`` writes: records as a table, JSON, JSON lines or CSV, and the JSON-lines file
that makes a run resumable (read back with a torn last line dropped, appended with fsync).

An existing output file is only ever replaced (or, JSON lines, appended to) when it holds vidcls
output of the same format: anything else (foreign lines, another format, an input of the run) is
refused before any work, the file untouched (:func:`check_output`).

A multi-label run's records (``"task": "multilabel"``) carry their label set: the CSV gets a ``labels``
column after ``label`` (``a|b``, most probable first; empty for the empty set) and the table a
``labels`` column after ``prob`` (``a|b``, ``(none)`` for the empty set); single-label output is as it
always was. JSON and JSON lines carry the records as they are."""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeGuard

from ..errors import ConfigError, RunLockedError
from .multilabel import is_multilabel, labels_cell
from .verdict import csv_cell, table_cells

FORMATS = ("table", "json", "jsonl", "csv")
CSV_FIELDS = ("input", "label", "prob", "trusted", "trust_reason", "top_k", "error")
TABLE_HEAD = ("input", "label", "prob", "trusted", "note")
# a multi-label run's: its label set after the most probable class (CSV) and its probability (table)
MULTILABEL_CSV_FIELDS = ("input", "label", "labels", "prob", "trusted", "trust_reason", "top_k", "error")
MULTILABEL_TABLE_HEAD = ("input", "label", "prob", "labels", "trusted", "note")


def _finite(obj: object) -> object:
    """``obj`` with NaN/Inf floats replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(record: dict | list[dict], indent: int | None = None) -> str:
    """A record (or a list of them) as strict JSON (a non-finite number becomes null)."""
    try:
        return json.dumps(record, indent=indent, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(record), indent=indent, allow_nan=False)


def _prob(record: dict) -> float | None:
    top = record.get("top_k") or []
    return float(top[0]["probability"]) if top else None


def _csv_row(r: dict) -> dict:
    prob = _prob(r)
    return {
        "input": r["input"],
        "label": r.get("label") or "",
        "labels": labels_cell(r, empty=""),
        "prob": "" if prob is None else f"{prob:.6f}",
        "trusted": csv_cell(r),  # true / false, empty when unknown (not calibrated) or not predicted
        "trust_reason": r.get("trust_reason") or "",
        "top_k": ";".join(f"{t['class']}:{float(t['probability']):.6f}" for t in r.get("top_k") or []),
        "error": r.get("error") or "",
        "spans": ";".join(f"{sp['label']}@{_where(sp, '-')}" for sp in r.get("spans") or []),
    }


def _where(span: dict, dash: str = "–") -> str:
    """A span's extent: seconds when known (``12.5s``), else frames (``f12``), end exclusive."""
    if span.get("start_s") is not None and span.get("end_s") is not None:
        return f"{float(span['start_s']):g}s{dash}{float(span['end_s']):g}s"
    return f"f{int(span['start_frame'])}{dash}f{int(span['end_frame'])}"


def _table(records: list[dict], multi: bool) -> str:
    rows = []
    for r in records:
        prob = _prob(r)
        if r.get("error"):
            row = [r["input"], "ERROR", "", "", r["error"]]
        else:  # yes / no / unknown; every OOD score against its threshold
            row = [r["input"], str(r.get("label")), "" if prob is None else f"{prob:.3f}", *table_cells(r)]
        if multi:
            row.insert(3, labels_cell(r))
        rows.append(row)
        spans = [
            f"{_where(sp)} {sp['label']} ({float(sp['probability']):.2f})" for sp in r.get("spans") or []
        ]
        if spans:  # what happens when: one line under the video's row, never padded into the columns
            rows.append(["  spans: " + ", ".join(spans)])
    head = MULTILABEL_TABLE_HEAD if multi else TABLE_HEAD
    cols = [row for row in rows if len(row) > 1]
    width = [max([len(head[i])] + [len(row[i]) for row in cols]) for i in range(len(head) - 1)]
    width[0] = min(width[0], 80)
    lines = []
    for row in [list(head), *rows]:
        if len(row) == 1:
            lines.append(row[0])
            continue
        cells = [c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, width))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def format_records(records: list[dict], fmt: str, *, task: str | None = None) -> str:
    """``records`` as text in ``fmt`` (one of FORMATS); ``task``: the run's ("multilabel" adds the label
    set's column to the CSV and the table), None: "multilabel" when any record says so."""
    multi = task == "multilabel" if task is not None else is_multilabel(records)
    if fmt == "json":
        return to_json(records, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(to_json(r) + "\n" for r in records)
    if fmt == "csv":
        buf = io.StringIO()
        fields = MULTILABEL_CSV_FIELDS if multi else CSV_FIELDS
        if any("spans" in r for r in records):  # --segments: the merged spans, label@start-end;...
            fields = (*fields, "spans")
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(_csv_row(r) for r in records)
        return buf.getvalue()
    if fmt == "table":
        return _table(records, multi)
    raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def format_for(output: str | os.PathLike | None, fmt: str | None = None) -> str:
    """``fmt`` when given, else the format the output file's extension names (.json, .jsonl,
    .csv), else ``table``."""
    if fmt:
        return fmt
    suffix = Path(output).suffix.lower().lstrip(".") if output else ""
    return suffix if suffix in ("json", "jsonl", "csv") else "table"


# ---- what an existing --output file holds ------------------------------------------------------
# Every record vidcls writes starts with its "input" (json.dumps of the record dict, its first key):
# a last line without its newline that starts so is the torn line of a killed run.
_RECORD_START = b'{"input": "'
_RECORD_KEYS = ("input", "label", "top_k", "error")
_TABLE_HEADS = [re.compile(" +".join(map(re.escape, h))) for h in (TABLE_HEAD, MULTILABEL_TABLE_HEAD)]
_MAX_LINE = 64 << 20  # no record is that long: a longer "line" is no vidcls output
_LEAVE_IT = "it is left untouched: choose another --output, or delete {path} to write there"


def _is_record(obj: object) -> TypeGuard[dict]:
    return isinstance(obj, dict) and isinstance(obj.get("input"), str) and all(k in obj for k in _RECORD_KEYS)


def _parse_line(line: bytes) -> object:
    try:
        return json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        return None


def _scan_jsonl(path: Path) -> tuple[list[dict], int, str, str | None]:
    """Read a JSON-lines output: (records, bytes to keep, what to do with the last line, problem).

    The last line without a newline is "torn" (the start of one of our records: drop it), "complete"
    (a whole record: keep it, a newline is missing) or "" (none). ``problem`` names the first line
    that is no vidcls record (None: the file holds only vidcls records and blank lines).
    """
    records: list[dict] = []
    keep, n = 0, 0
    with open(path, "rb") as fh:
        while True:
            line = fh.readline(_MAX_LINE)
            if not line:
                return records, keep, "", None
            n += 1
            if not line.endswith(b"\n"):
                if len(line) >= _MAX_LINE:
                    return records, keep, "", f"line {n} is longer than any vidcls record"
                rec = _parse_line(line)
                if _is_record(rec):
                    records.append(rec)
                    return records, keep + len(line), "complete", None
                if rec is None and (
                    not line.strip() or line.startswith(_RECORD_START) or _RECORD_START.startswith(line)
                ):
                    return records, keep, "torn", None
                return records, keep, "", f"its last line ({n}) is not a vidcls record"
            keep += len(line)
            if not line.strip():
                continue
            rec = _parse_line(line)
            if not _is_record(rec):
                return records, keep, "", f"line {n} is not a vidcls record"
            records.append(rec)


def _holds(path: Path) -> tuple[str | None, str]:
    """(the vidcls format ``path`` holds, or None for other data; why it is not vidcls output).

    "empty" for a file without data (nothing to lose). Formats are told apart by their first line:
    the CSV header, the table header, a JSON list, JSON lines.
    """
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    if not head.strip() and len(head) < 1 << 20:
        return "empty", ""
    # (a long first line may be cut inside a character: the headers compared are short ASCII)
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    fields = next((f for f in (CSV_FIELDS, MULTILABEL_CSV_FIELDS) if first == ",".join(f)), None)
    if fields is not None:
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                if all(len(row) == len(fields) for row in csv.reader(fh)):
                    return "csv", ""
        except (csv.Error, UnicodeDecodeError):
            pass
        return None, "it is a CSV file with other rows than vidcls writes"
    if any(h.fullmatch(first) for h in _TABLE_HEADS):
        return "table", ""
    if first.lstrip().startswith("["):
        try:
            data = json.loads(path.read_bytes())
        except ValueError:
            data = None
        if isinstance(data, list) and all(_is_record(r) for r in data):
            return "json", ""
        return None, "it is not a JSON list of vidcls records"
    _, _, _, problem = _scan_jsonl(path)
    return ("jsonl", "") if problem is None else (None, problem)


def _refuse(path: str | os.PathLike, why: str) -> ConfigError:
    return ConfigError(f"--output {path} {why}; " + _LEAVE_IT.format(path=path))


def check_contents(path: str | os.PathLike, fmt: str) -> None:
    """Refuse an existing ``path`` that holds anything but vidcls ``fmt`` output.

    A file of the same format is replaced (``jsonl``: appended to; a torn last line is dropped by
    :func:`read_jsonl`); a file with data vidcls did not write, or vidcls output of another format,
    would be lost: refused, the file untouched.

    Raises:
        ConfigError: naming the file and what it holds.
    """
    path = Path(path)
    if not path.is_file():
        return
    kind, why = _holds(path)
    if kind in ("empty", fmt):
        return
    if kind is None:
        raise _refuse(path, f"holds data vidcls did not write ({why})")
    raise _refuse(path, f"holds vidcls {kind} output, not the {fmt} asked for")


def _same_file(a: str, b_real: str, b_stat: os.stat_result | None) -> bool:
    if os.path.realpath(a) == b_real:
        return True
    if b_stat is None:
        return False
    try:
        return os.path.samestat(os.stat(a), b_stat)
    except OSError:
        return False


def check_output(
    output: str | os.PathLike | None,
    fmt: str,
    inputs: Sequence[str | os.PathLike] = (),
    *,
    contents: bool = True,
) -> None:
    """Refuse an --output that cannot or must not be written, before any work.

    Refused: a directory, a device or other non-regular file (``/dev/full``), a link to nothing,
    one of ``inputs`` (compared by real path and by inode: links and hard links count), a file
    that is not writable, a folder in which it cannot be created (a file on the way, no
    permission, a read-only file system), and (``contents``) what :func:`check_contents` refuses.

    Raises:
        ConfigError: one line naming the file and what to do; nothing was written.
    """
    if output is None:
        return
    if not os.fspath(output):
        raise ConfigError("--output is empty; give a file name, or leave --output out to write to stdout")
    path = Path(output)
    if path.is_dir():
        name = "predictions." + ("txt" if fmt == "table" else fmt)
        raise ConfigError(f"--output {path} is a directory; give a file name in it, e.g. {path / name}")
    if path.exists() and not path.is_file():
        raise ConfigError(
            f"--output {path} is not a regular file (a device, pipe or socket); give a file, "
            f"or leave --output out to write to stdout"
        )
    if path.is_symlink() and not path.exists():
        raise ConfigError(
            f"--output {path} is a link to {os.readlink(path)}, which does not exist; "
            f"choose another --output, or delete the link"
        )
    real = os.path.realpath(path)
    stat = path.stat() if path.exists() else None
    for p in inputs:
        if _same_file(os.fspath(p), real, stat):
            raise ConfigError(
                f"--output {path} is also an input ({p}); writing there would destroy it: "
                f"choose another --output"
            )
    if stat is not None and not os.access(path, os.W_OK):
        raise ConfigError(f"--output {path} is read-only; " + _LEAVE_IT.format(path=path))
    folder = Path(os.path.abspath(real)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"--output {path}: {folder} is a file, not a folder; choose another --output")
    if (stat is None or fmt != "jsonl") and not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--output {path}: cannot write in {folder} (no permission, or a read-only file "
            f"system); choose another --output"
        )
    if contents:
        check_contents(path, fmt)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records already in a JSON-lines output, for resuming into it.

    Only the torn last line of a killed run (the start of a record, without its newline) is ever
    dropped (the file is truncated before it); a last record without its newline gets one. Any
    other content is refused, the file untouched.

    Returns:
        The records, in file order ([] for a missing file).

    Raises:
        ConfigError: the file holds a line that is no vidcls record (see :func:`check_contents`).
    """
    path = Path(path)
    if not path.exists():
        return []
    records, keep, last, problem = _scan_jsonl(path)
    if problem is not None:
        check_contents(path, "jsonl")  # names what the file holds
        raise _refuse(path, f"holds data vidcls did not write ({problem})")
    if last == "torn":
        with open(path, "r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
    elif last == "complete":
        with open(path, "ab") as fh:
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    return records


class JsonlAppender:
    """Appends one record per line; each line is flushed and fsynced before the next input."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.fh = open(path, "ab")
        self.failed = False
        try:  # one writer per file: two runs appending to it would each predict every input again
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.fh.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"--output {path} is being written by another vidcls predict; wait "
                    f"for it to finish (a rerun then skips what it wrote) or choose another "
                    f"--output"
                ) from None
            raise

    def _named(self, exc: OSError) -> OSError:
        """A failed write or fsync (disk full) names no file: name this one."""
        if exc.filename is None and exc.errno is not None:
            return OSError(exc.errno, exc.strerror, self.path)
        return exc

    def write(self, record: dict) -> None:
        try:
            self.fh.write((to_json(record) + "\n").encode("utf-8"))
            self.fh.flush()
            os.fsync(self.fh.fileno())
        except OSError as exc:  # the lines before stay whole; a torn last one is dropped by a rerun
            self.failed = True
            raise self._named(exc) from exc

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError as exc:
            if not self.failed:  # after a failed write, closing fails the same way: reported already
                raise self._named(exc) from exc
