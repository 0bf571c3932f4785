"""A multi-label run's decision (``task`` "multilabel"): the thresholds it serves, the label set each
video gets, and how the outputs show that set.

The thresholds are the run's per-class decision thresholds chosen on validation
(``evaluation.multilabel.choose_thresholds``: ``{"rule", "global", "per_class": [C], "support": [C]}``),
taken from the first of:

1. ``calibration.json``'s "thresholds" (re-chosen on the calibrated validation probabilities), when the
   predictor uses that calibration (fitted for the members and views it serves);
2. ``final.json``'s "thresholds" (chosen on the validation probabilities at T = 1);
3. 0.5 for every class (a run older than both), with a warning logged once at load.

A video's label set is every class whose served probability reaches its threshold, most probable
first (``engine.probs.labels_above``); an empty set is a valid answer. Records show it as
``"labels": [{"label", "probability"}]``, the table as ``a|b`` (``(none)`` when empty), the CSV's
``labels`` column as ``a|b`` (empty when empty).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.probs import labels_above
from ..errors import CheckpointError, ConfigError

SINGLE, MULTILABEL = "single", "multilabel"
DEFAULT_THRESHOLD = 0.5
SOURCES = ("calibration", "final", "default")
SEPARATOR = "|"  # between the names of a label set in the table and the CSV
NONE_CELL = "(none)"  # an empty label set in the table (and the page)


@dataclass(frozen=True, eq=False)  # an array inside: no field-wise ==
class Thresholds:
    """The thresholds a multi-label predictor serves: ``values`` ``(C,)``, where they come from
    (``source``: one of SOURCES) and the rule that chose them (None for the default)."""

    values: np.ndarray
    source: str
    rule: str | None = None

    def describe(self, classes: Sequence[str]) -> dict:
        """JSON-able: ``{"source", "rule", "per_class": {class: threshold}}``."""
        return {
            "source": self.source,
            "rule": self.rule,
            "per_class": {c: float(t) for c, t in zip(classes, self.values)},
        }


def run_task(choice: Any, ckpts: Sequence[dict], run_dir: str | os.PathLike) -> str:
    """The task of the served members: their checkpoints' "task" (absent: "single"), which
    ``final.json`` (``choice.task``) must agree with.

    Raises:
        CheckpointError: served members trained for different tasks.
        ConfigError: final.json records another task than the checkpoints.
    """
    tasks = [str(c.get("task") or SINGLE) for c in ckpts]
    task = tasks[0] if tasks else SINGLE
    if any(t != task for t in tasks):
        raise CheckpointError(
            f"the served members of {run_dir} were trained for different tasks ({', '.join(tasks)}); "
            f"one run serves one task: retrain the run"
        )
    recorded = getattr(choice, "task", None) or SINGLE
    if recorded != task:
        raise ConfigError(
            f"{os.path.join(run_dir, 'final.json')} records task {recorded!r} but its members were trained "
            f"for {task!r}; re-create it with `vidcls evaluate {run_dir} --split val`"
        )
    return task


def _values(entry: dict, n_classes: int, where: str, redo: str) -> np.ndarray:
    """The ``(C,)`` thresholds of a recorded ``entry`` (its "per_class", else its "global").

    Raises:
        ConfigError: not C numbers in [0, 1]; names ``where`` and says ``redo``.
    """
    per_class = entry.get("per_class")
    if per_class is None and isinstance(entry.get("global"), (int, float)):
        per_class = [entry["global"]] * n_classes
    ok = (
        isinstance(per_class, list)
        and len(per_class) == n_classes
        and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0.0 <= t <= 1.0
            for t in per_class
        )
    )
    if not ok:
        count = len(per_class) if isinstance(per_class, list) else "no"
        raise ConfigError(
            f'{where}: its "thresholds" must hold one threshold in [0, 1] per class ({n_classes}), '
            f"it has {count} usable per_class values; {redo}"
        )
    assert isinstance(per_class, list)  # checked above
    return np.asarray(per_class, dtype=np.float64)


def served_thresholds(
    run_dir: str | os.PathLike, *, calibration: dict | None, final: dict | None, n_classes: int
) -> tuple[Thresholds, str | None]:
    """The thresholds a multi-label predictor serves (module docstring), and the warning to log once
    when it falls back to the default (None otherwise).

    Args:
        run_dir: the run (named in messages).
        calibration: the calibration the predictor uses (None: none, or not fitted for what it serves).
        final: final.json's "thresholds" (``FinalChoice.thresholds``; empty or None: none recorded).
        n_classes: C.

    Raises:
        ConfigError: recorded thresholds that are not one number in [0, 1] per class.
    """
    entry = (calibration or {}).get("thresholds")
    if entry:
        where = os.path.join(run_dir, "calibration.json")
        values = _values(entry, n_classes, where, f"re-create it with `vidcls calibrate {run_dir}`")
        return Thresholds(values, "calibration", entry.get("rule")), None
    if final:
        where = os.path.join(run_dir, "final.json")
        values = _values(
            final, n_classes, where, f"re-create it with `vidcls evaluate {run_dir} --split val`"
        )
        return Thresholds(values, "final", final.get("rule")), None
    warning = (
        f"warning: {run_dir} records no multi-label decision thresholds (neither calibration.json nor "
        f'final.json has "thresholds"): every class is decided at {DEFAULT_THRESHOLD}; record them with '
        f"`vidcls evaluate {run_dir} --split val` (or `vidcls calibrate {run_dir}`)"
    )
    return Thresholds(np.full(n_classes, DEFAULT_THRESHOLD), "default"), warning


def label_sets(probs: np.ndarray, thresholds: Thresholds, classes: Sequence[str]) -> list[list[str]]:
    """Per video (rows of ``probs`` ``(N, C)``), the names of its label set, most probable first."""
    return [[classes[c] for c in s] for s in labels_above(probs, thresholds.values)]


def decision(p: np.ndarray, thresholds: Thresholds, classes: Sequence[str]) -> dict:
    """The multi-label fields of one video's record (``p``: its ``(C,)`` served probabilities)::

    {"task": "multilabel", "labels": [{"label", "probability"}], "thresholds_source"}
    """
    chosen = labels_above(np.asarray(p, dtype=np.float64)[None, :], thresholds.values)[0]
    return {
        "task": MULTILABEL,
        "labels": [{"label": classes[c], "probability": float(p[c])} for c in chosen],
        "thresholds_source": thresholds.source,
    }


def error_fields(record: dict, thresholds: Thresholds | str | None) -> dict:
    """An error record of a multi-label run (``thresholds``: its ``Thresholds`` or their source) with the
    multi-label fields (``labels`` None: not predicted, as ``label`` is), placed after ``label``; a
    single-label run's (``thresholds`` None), or a record that has them, is returned as it is."""
    if thresholds is None or "task" in record:
        return record
    source = thresholds.source if isinstance(thresholds, Thresholds) else thresholds
    out: dict = {}
    for key, value in record.items():
        out[key] = value
        if key == "label":
            out.update({"task": MULTILABEL, "labels": None, "thresholds_source": source})
    return out


def is_multilabel(records: Sequence[dict]) -> bool:
    """Whether any of ``records`` is a multi-label run's."""
    return any(r.get("task") == MULTILABEL for r in records)


def labels_cell(record: dict, empty: str = NONE_CELL) -> str:
    """A record's label set as ``a|b`` (most probable first); ``empty`` for the empty set, "" for an
    input that was not predicted."""
    labels = record.get("labels")
    if record.get("error") or labels is None:
        return ""
    return SEPARATOR.join(str(item["label"]) for item in labels) or empty
