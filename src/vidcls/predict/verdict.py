"""A prediction's trust verdict in its three states, and its OOD scores against their thresholds, as
every output shows them (JSON records, the table and CSV of ``vidcls predict``, the service's page,
the timeline).

``record["trusted"]``:

* ``True``: every OOD score of the run's calibration passes its validation threshold;
* ``False``: one fails or is not a finite number (``trust_reason`` names it);
* ``None``: unknown. The run has no ``calibration.json`` (or one fitted for other members or views
  than served), so nothing was checked: it is not a verdict. ``vidcls calibrate RUN_DIR`` makes one.

``record["ood"]`` holds every score the verdict checked: ``{name: {"score", "threshold", "pass"}}``
(``energy``, and ``typicality`` for runs calibrated with it; ``score`` None when not a finite number),
or None without a calibration.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from ..run.calibration import DEFAULT_OOD_SCORE, VAL_PASS
from ..run.calibration import ood_checks as calibration_checks

TRUSTED, NOT_TRUSTED, UNKNOWN = "trusted", "not trusted", "unknown"


def not_calibrated(run_dir: str | os.PathLike, why: str = "no calibration.json") -> tuple[str, str]:
    """``(trust_reason, warning)`` of a run without a usable calibration (``why``): the reason every
    prediction gives, and the warning ``vidcls predict`` prints and ``vidcls serve`` logs once at start."""
    fix = f"run `vidcls calibrate {run_dir}`"
    reason = f"not calibrated ({why}): the verdict is unknown; {fix}"
    warning = (
        f"warning: {run_dir} is not calibrated ({why}): no prediction is checked for being out of "
        f"distribution, every one is given trusted: null (unknown, not a verdict); {fix}"
    )
    return reason, warning


def state(trusted: bool | None) -> str:
    """``trusted`` (True / False / None) as ``TRUSTED``, ``NOT_TRUSTED`` or ``UNKNOWN``."""
    if trusted is None:
        return UNKNOWN
    return TRUSTED if trusted else NOT_TRUSTED


def ood_checks(scores: dict | None, thresholds: dict) -> dict | None:
    """``{name: {"score", "threshold", "pass"}}`` for one video: its ``scores`` ({name: float}) against
    ``thresholds`` (``run.calibration.ood_checks`` of the calibration); None without thresholds (not calibrated).
    A missing or non-finite score is ``None`` and does not pass."""
    if not thresholds:
        return None
    out = {}
    for name, threshold in thresholds.items():
        v = (scores or {}).get(name)
        v = float(v) if v is not None and math.isfinite(float(v)) else None
        out[name] = {"score": v, "threshold": float(threshold), "pass": v is not None and v >= threshold}
    return out


def ood_text(ood: dict | None) -> str:
    """Every score against its threshold: ``energy 2.210 >= 2.066 pass, typicality -9.100 < -4.035 FAIL``
    ("" without scores)."""
    parts = []
    for name, c in (ood or {}).items():
        threshold = c.get("threshold")
        t = "?" if threshold is None else f"{float(threshold):.3f}"
        if c.get("score") is None:
            parts.append(f"{name} not a finite number (threshold {t}) FAIL")
        else:
            sign = ">=" if c.get("pass") else "<"
            parts.append(f"{name} {float(c['score']):.3f} {sign} {t} {'pass' if c.get('pass') else 'FAIL'}")
    return ", ".join(parts)


def table_cells(record: dict) -> tuple[str, str]:
    """The ``trusted`` and ``note`` cells of a usable record in ``vidcls predict``'s table: yes / no /
    unknown; the scores against their thresholds (with the reason when not trusted for another cause,
    the reason alone when unknown)."""
    s = state(record.get("trusted"))
    word = {TRUSTED: "yes", NOT_TRUSTED: "no", UNKNOWN: UNKNOWN}[s]
    text = ood_text(record.get("ood"))
    if s == UNKNOWN or not text:
        return word, "" if s == TRUSTED else str(record.get("trust_reason") or "")
    return word, text


def csv_cell(record: dict) -> str:
    """The CSV ``trusted`` cell: true / false, empty when unknown (and for an input not predicted)."""
    trusted = record.get("trusted")
    if record.get("error") or trusted is None:
        return ""
    return "true" if trusted else "false"


def counts(records: Iterable[dict]) -> dict[str, int]:
    """``{TRUSTED: n, NOT_TRUSTED: n, UNKNOWN: n}`` over the usable records (errors left out)."""
    out = {TRUSTED: 0, NOT_TRUSTED: 0, UNKNOWN: 0}
    for r in records:
        if not r.get("error"):
            out[state(r.get("trusted"))] += 1
    return out


NOT_CALIBRATED = "not calibrated: the verdict is unknown; run `vidcls calibrate RUN_DIR`"


def trust_verdict(score: dict | float | None, calibration: dict | None) -> tuple[bool | None, str]:
    """Whether to trust one prediction, and why. ``score``: ``{name: value}`` (``calibration_scores``
    of one video) or one number, the primary score (enough for a calibration of that score alone).

    Returns:
        ``(None, NOT_CALIBRATED)`` without a calibration: unknown, nothing was checked (see
        :mod:`vidcls.predict.verdict`); ``(False, reason naming every failing score with its value and
        threshold)`` when one is below its validation threshold or not a finite number; else
        ``(True, "within the validation range")``.
    """
    checks = calibration_checks(calibration)
    if not checks:
        return None, NOT_CALIBRATED
    assert calibration is not None  # ood_checks found thresholds in it
    ood = calibration["ood"]
    values = score if isinstance(score, dict) else {ood.get("score", DEFAULT_OOD_SCORE): score}
    failed = []
    for name, threshold in checks.items():
        v = values.get(name)
        v = math.nan if v is None else float(v)
        if not math.isfinite(v):
            failed.append(f"the {name} score is not a finite number (broken or missing features?)")
        elif v < threshold:
            failed.append(f"{name} score {v:.3f} is below the validation threshold {threshold:.3f}")
    if not failed:
        return True, "within the validation range"
    rate = ood.get("val_pass_rate")
    share = f"{100 * rate:.0f} %" if isinstance(rate, (int, float)) else f"{100 * VAL_PASS:.0f} %"
    which = (
        f"the {' and '.join(checks)} thresholds" if len(checks) > 1 else f"the {next(iter(checks))} threshold"
    )
    return False, f"out-of-distribution: {'; '.join(failed)} ({share} of validation videos pass {which})"
