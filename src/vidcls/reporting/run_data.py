"""The files of a run directory that the report reads, loaded once and leniently
(through ``RunDir``'s strict readers, a damaged file read as absent).

A run that is still going, was killed, or predates a file is still worth a report, so every file is
optional here: absent, half-written or malformed files load as ``None`` or empty, never an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from ..config import read_yaml
from ..errors import ConfigError
from ..run.rundir import RunDir

T = TypeVar("T")
D = TypeVar("D")


@dataclass
class RunData:
    """Everything the report reads, loaded once; ``None``/empty where a file is absent."""

    run_dir: Path
    summary: dict = field(default_factory=dict)
    config: dict | None = None
    histories: list = field(default_factory=list)  # per member: list of per-epoch dicts
    resources: list | None = None
    predictions: list | None = None
    calibration: dict | None = None  # calibration.json when it is a valid calibration
    pred_split: str = "test"

    @property
    def has_test(self) -> bool:
        return bool(self.summary.get("test"))

    @property
    def classes(self) -> list[str]:
        names = self.summary.get("classes")
        return [str(c) for c in names] if isinstance(names, list) else []


def _lenient(read: Callable[[], T | None], default: D) -> T | D:
    """``read()``, or ``default`` when its file is damaged (a live run may be half-way through a write)."""
    try:
        value = read()
    except ConfigError:
        return default
    return default if value is None else value


def load_run(run_dir: Path) -> RunData:
    """Read ``summary.json``, ``config.yaml``, member histories, the resource log and predictions.

    Args:
        run_dir: the run directory (need not hold any of those files).

    Returns:
        A :class:`RunData`; each missing or unreadable file leaves its field ``None`` or empty.
    """
    rd = RunDir(run_dir)
    run = RunData(run_dir, summary=_lenient(rd.read_summary, {}))
    try:
        run.config = read_yaml(rd.config)
    except ConfigError:
        run.config = None
    run.histories = [_lenient(partial(rd.read_history, i), []) for i in rd.member_indices()]
    run.resources = _lenient(rd.read_resource_log, None)
    run.calibration = _lenient(rd.read_calibration, None)
    # The test split is the honest one; validation predictions stand in only when there is none.
    for split in ("test", "val"):
        record = _lenient(partial(rd.read_eval, split), None)
        if isinstance(record, dict) and isinstance(record.get("predictions"), list):
            run.predictions, run.pred_split = record["predictions"], split
            break
    return run
