"""The files of a run directory that the report reads, loaded once and leniently.

A run that is still going, was killed, or predates a file is still worth a report, so every file is
optional here: absent, half-written or malformed files load as ``None`` or empty, never an error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import read_yaml
from ..errors import ConfigError


@dataclass
class RunData:
    """Everything the report reads, loaded once; ``None``/empty where a file is absent."""
    run_dir: Path
    summary: dict = field(default_factory=dict)
    config: dict | None = None
    histories: list = field(default_factory=list)  # per member: list of per-epoch dicts
    resources: list | None = None
    predictions: list | None = None
    pred_split: str = "test"

    @property
    def has_test(self) -> bool:
        return bool(self.summary.get("test"))

    @property
    def classes(self) -> list[str]:
        names = self.summary.get("classes")
        return [str(c) for c in names] if isinstance(names, list) else []


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, half-written by a live run, or not JSON
        return None


def _member_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "members"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def load_run(run_dir: Path) -> RunData:
    """Read ``summary.json``, ``config.yaml``, member histories, the resource log and predictions.

    Args:
        run_dir: the run directory (need not hold any of those files).

    Returns:
        A :class:`RunData`; each missing or unreadable file leaves its field ``None`` or empty.
    """
    summary = _read_json(run_dir / "summary.json")
    run = RunData(run_dir, summary=summary if isinstance(summary, dict) else {})  # a hand-edited list: none
    try:
        run.config = read_yaml(run_dir / "config.yaml")
    except ConfigError:
        run.config = None
    run.histories = [_read_json(d / "history.json") or [] for d in _member_dirs(run_dir)]
    logged = _read_json(run_dir / "results" / "resource_utilization_log.json")
    run.resources = logged if isinstance(logged, list) else None
    # The test split is the honest one; validation predictions stand in only when there is none.
    for split in ("test", "val"):
        record = _read_json(run_dir / f"eval_{split}.json")
        if isinstance(record, dict) and isinstance(record.get("predictions"), list):
            run.predictions, run.pred_split = record["predictions"], split
            break
    return run
