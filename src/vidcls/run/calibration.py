"""A run's calibration record (``RUN_DIR/calibration.json``, written by
:func:`vidcls.evaluation.calibrate.calibrate_run`) and its typicality statistics (``RUN_DIR/typicality.npz``):
their strict readers, and the checks a calibration asks for.

A calibration records the run's ``"task"`` (absent in one written before multi-label runs: "single");
a multi-label one also its decision ``"thresholds"`` (``{"rule", "global", "per_class": [C], "support"}``),
chosen on the calibrated validation probabilities.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..utils.fs import atomic_write_bytes
from .layout import CALIBRATION_FILE, TYPICALITY_FILE  # noqa: F401

CALIBRATION_FORMAT = "vidcls-calibration"


def load_calibration(run_dir: str | os.PathLike) -> dict | None:
    """``RUN_DIR/calibration.json``, or None when the run has none.

    Raises:
        ConfigError: the file is there but damaged or not a calibration; the message says how to redo it.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    redo = f"re-create it with `vidcls calibrate {run_dir}`"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is damaged ({type(exc).__name__}: {exc}); {redo}") from None
    ood = data.get("ood") if isinstance(data, dict) else None
    t = data.get("temperature") if isinstance(data, dict) else None
    ok = (
        isinstance(t, (int, float))
        and not isinstance(t, bool)
        and math.isfinite(t)
        and t > 0
        and isinstance(ood, dict)
        and isinstance(ood.get("threshold"), (int, float))
        and ood.get("score", DEFAULT_OOD_SCORE) in OOD_SCORES
        and _checks_ok(data)
        and _task_ok(data)
    )
    if not ok:
        raise ConfigError(
            f"{path} is not a valid vidcls calibration (temperature, ood.threshold, ood.score, task, "
            f"thresholds); {redo}"
        )
    return data


def _task_ok(data: dict) -> bool:
    """A known task (absent: single); a single-label calibration has no thresholds, a multi-label one
    valid ones (``valid_thresholds``) or none (prediction then uses final.json's)."""
    task = data.get("task", "single")
    if task == "single":
        return "thresholds" not in data
    return task == "multilabel" and ("thresholds" not in data or valid_thresholds(data["thresholds"]))


def valid_thresholds(thresholds: object) -> bool:
    """Whether ``thresholds`` is a decision-threshold record: a dict whose ``per_class`` is a non-empty
    list of numbers strictly between 0 and 1."""
    per_class = thresholds.get("per_class") if isinstance(thresholds, dict) else None
    return (
        isinstance(per_class, list)
        and bool(per_class)
        and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 < t < 1.0 for t in per_class)
    )


def _checks_ok(data: dict) -> bool:
    """Every score a calibration names is known and has a finite threshold."""
    try:
        checks = ood_checks(data)
    except (TypeError, ValueError, AttributeError):
        return False
    known = (*OOD_SCORES, *FEATURE_SCORES)
    return bool(checks) and all(math.isfinite(v) and k in known for k, v in checks.items())


TYPICALITY_KEYS = ("frame_mean", "frame_std", "prototypes", "variance")


def typicality_stats(run_dir: str | os.PathLike, calibration: dict | None) -> dict | None:
    """The typicality statistics a run's ``calibration`` refers to, or None when it checks no typicality
    (no calibration, or one written before typicality).

    Raises:
        ConfigError: the statistics file is missing or damaged.
    """
    ood = (calibration or {}).get("ood") or {}
    if "typicality" not in (ood.get("scores") or []):
        return None
    entry = (ood.get("typicality") or {}).get("file") or TYPICALITY_FILE
    name = Path(str(entry)).name  # never outside the run
    return load_typicality(Path(run_dir) / name)


def save_typicality(path: str | os.PathLike, stats: dict) -> Path:
    """Write ``stats`` to ``path`` (.npz, float32) atomically."""

    buf = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(stats[k], np.float32) for k in TYPICALITY_KEYS}
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_typicality(path: str | os.PathLike) -> dict:
    """The statistics in ``path``.

    Raises:
        ConfigError: missing, damaged or inconsistent; the message says how to redo it.
    """
    path = Path(path)
    redo = f"re-create it with `vidcls calibrate {path.parent}`"
    if not path.is_file():
        raise ConfigError(f"{path} is missing but calibration.json refers to it; {redo}")
    try:
        with np.load(path, allow_pickle=False) as data:
            stats = {k: np.asarray(data[k], np.float32) for k in TYPICALITY_KEYS}
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path} is damaged ({type(exc).__name__}: {exc}); {redo}") from None
    d = stats["frame_mean"].shape
    ok = (
        len(d) == 1
        and stats["frame_std"].shape == d
        and stats["prototypes"].ndim == 2
        and stats["prototypes"].shape[1] == 2 * d[0]
        and stats["variance"].shape == (2 * d[0],)
        and all(np.isfinite(v).all() for v in stats.values())
    )
    if not ok:
        raise ConfigError(f"{path} does not hold consistent typicality statistics; {redo}")
    return stats


OOD_SCORES = ("energy", "max_softmax")


DEFAULT_OOD_SCORE = "energy"


DIRECTION = "higher is more in-distribution"


FEATURE_SCORES = ("typicality",)  # scores of the features, not the logits


def ood_checks(calibration: dict | None) -> dict:
    """``{score name: threshold}`` a calibration asks for (energy alone for one written before typicality)."""
    ood = (calibration or {}).get("ood") or {}
    if ood.get("threshold") is None:
        return {}
    kind = ood.get("score", DEFAULT_OOD_SCORE)
    thresholds = ood.get("thresholds") or {}
    return {
        name: float(thresholds.get(name, ood["threshold"] if name == kind else math.nan))
        for name in ood.get("scores", [kind])
    }


VAL_PASS = 0.95  # share of validation videos above the OOD threshold
