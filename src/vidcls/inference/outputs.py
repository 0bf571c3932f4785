"""What ``vidcls predict`` writes: records as a table, JSON, JSON lines or CSV, and the JSON-lines file
that makes a run resumable (read back with a torn last line dropped, appended with fsync)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from ..errors import ConfigError
from ..utils.fs import atomic_write_text

FORMATS = ("table", "json", "jsonl", "csv")
CSV_FIELDS = ("input", "label", "prob", "trusted", "trust_reason", "top_k", "error")


def _finite(obj):
    """``obj`` with NaN/Inf floats replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(record: dict, indent: int | None = None) -> str:
    """A record as strict JSON (a non-finite number becomes null)."""
    try:
        return json.dumps(record, indent=indent, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(record), indent=indent, allow_nan=False)


def _prob(record: dict) -> float | None:
    top = record.get("top_k") or []
    return float(top[0]["probability"]) if top else None


def _csv_row(r: dict) -> dict:
    prob = _prob(r)
    return {"input": r["input"], "label": r.get("label") or "",
            "prob": "" if prob is None else f"{prob:.6f}",
            "trusted": "" if r.get("error") else str(bool(r.get("trusted"))).lower(),
            "trust_reason": r.get("trust_reason") or "",
            "top_k": ";".join(f"{t['class']}:{float(t['probability']):.6f}" for t in r.get("top_k") or []),
            "error": r.get("error") or ""}


def _table(records: list[dict]) -> str:
    rows = []
    for r in records:
        prob = _prob(r)
        if r.get("error"):
            rows.append((r["input"], "ERROR", "", "", r["error"]))
        else:
            rows.append((r["input"], str(r.get("label")), "" if prob is None else f"{prob:.3f}",
                         "yes" if r.get("trusted") else "no",
                         "" if r.get("trusted") else str(r.get("trust_reason") or "")))
    head = ("input", "label", "prob", "trusted", "note")
    width = [max([len(head[i])] + [len(row[i]) for row in rows]) for i in range(4)]
    width[0] = min(width[0], 80)
    lines = []
    for row in [head, *rows]:
        cells = [row[0].ljust(width[0]), row[1].ljust(width[1]), row[2].rjust(width[2]),
                 row[3].ljust(width[3]), row[4]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def format_records(records: list[dict], fmt: str) -> str:
    """``records`` as text in ``fmt`` (one of FORMATS)."""
    if fmt == "json":
        return to_json(records, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(to_json(r) + "\n" for r in records)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(_csv_row(r) for r in records)
        return buf.getvalue()
    if fmt == "table":
        return _table(records)
    raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def format_for(output, fmt: str | None = None) -> str:
    """``fmt`` when given, else the format the output file's extension names (.json, .jsonl,
    .csv), else ``table``."""
    if fmt:
        return fmt
    suffix = Path(output).suffix.lower().lstrip(".") if output else ""
    return suffix if suffix in ("json", "jsonl", "csv") else "table"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records already in a JSON-lines output, repairing the file in place.

    A line that is not a complete JSON record (the torn last line of a killed run) is dropped from
    the file; when it is the last line only, the file is truncated (nothing else is rewritten).

    Returns:
        The valid records, in file order ([] for a missing file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records, good, bad = [], [], 0
    offset = end_of_good = 0
    for line in data.splitlines(keepends=True):
        rec = None
        if line.endswith(b"\n"):
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
        if isinstance(rec, dict) and isinstance(rec.get("input"), str):
            records.append(rec)
            good.append(line)
            if not bad:
                end_of_good = offset + len(line)
        elif line.strip():
            bad += 1
        offset += len(line)
    if bad and end_of_good == len(b"".join(good)):  # every bad line comes after the good ones
        with open(path, "r+b") as fh:
            fh.truncate(end_of_good)
            fh.flush()
            os.fsync(fh.fileno())
    elif bad:
        atomic_write_text(path, b"".join(good).decode("utf-8"))
    return records


class JsonlAppender:
    """Appends one record per line; each line is flushed and fsynced before the next input."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "ab")

    def write(self, record: dict) -> None:
        self.fh.write((to_json(record) + "\n").encode("utf-8"))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()
