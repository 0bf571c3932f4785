"""The report's calibration section: the temperature (and how it was fitted), ECE and NLL on
validation before and after it, and every out-of-distribution check with its threshold and the share
of validation videos it passes (energy and, for runs calibrated with it, the feature-space typicality)."""

from __future__ import annotations

import math

from .blocks import na, num, num_cell, para, table
from .run_data import RunData

MULTILABEL = "multilabel"

SCORE_MEANING = {  # what each OOD score measures, for the table
    "energy": "logits: the negative free energy T * logsumexp(logits / T) of the served members and views",
    "max_softmax": "logits: the largest served probability",
    "typicality": "features: how typical the frames are of the training videos (distance to the nearest "
    "class prototype)",
}


def run_calibration(run: RunData) -> dict | None:
    """The run's calibration: ``calibration.json`` (``vidcls calibrate`` rewrites it), else summary.json's copy."""
    record = run.calibration
    if not isinstance(record, dict):
        record = run.summary.get("calibration")
    return record if isinstance(record, dict) else None


def _share(rate: object) -> str:
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate):
        return f"{100 * rate:.1f} %"
    return "-"


def _temperature_text(cal: dict, on: str, *, multilabel: bool = False) -> str:
    fit = cal.get("temperature_fit")
    if not isinstance(fit, dict):
        fit = {}
    how = "by minimising the validation negative log-likelihood"
    if "prior_sigma" in fit:
        how = (
            f"as the maximum a posteriori fit of the validation negative log-likelihood under a "
            f"log-normal prior centred on T = 1 (sd {num(fit.get('prior_sigma'), 2)} in log T), so that "
            f"a validation split the model separates perfectly cannot drive T to its floor; the "
            f"likelihood alone would give T = {num(fit.get('mle_temperature'))}"
        )
    if multilabel:
        after = (
            "before the sigmoid. Each video's ranking of classes does not change (nor mAP, GAP@20, "
            "hit@1); the probabilities become honest"
        )
        if isinstance(cal.get("thresholds"), dict):
            after += (
                ", and the decision thresholds were chosen again on the calibrated validation "
                "probabilities: predictions made with this calibration use those (see Decision thresholds)"
            )
    else:
        after = "before the softmax. The predicted class does not change; the probabilities become honest"
    return (
        f"Temperature scaling fitted on {on} {how}: every member's logits are divided by "
        f"T = {num(cal.get('temperature'))} {after}. Expected calibration error uses "
        f"{cal.get('ece_bins', 15)} equal-width confidence bins."
    )


def ood_rows(ood: dict) -> list[list]:
    """One row per OOD check: score, what it reads, threshold, validation pass rate."""
    kind = ood.get("score", "energy")
    names = ood.get("scores")
    if not isinstance(names, list):
        names = [kind]
    thresholds = ood.get("thresholds")
    if not isinstance(thresholds, dict):
        thresholds = {}
    rates = ood.get("pass_rates")
    if not isinstance(rates, dict):
        rates = {}
    rows = []
    for name in names:
        threshold = thresholds.get(name, ood.get("threshold") if name == kind else None)
        rate = rates.get(name, ood.get("val_pass_rate") if names == [kind] else None)
        rows.append([name, SCORE_MEANING.get(name, "-"), num_cell(num(threshold)), num_cell(_share(rate))])
    return rows


def calibration_body(run: RunData) -> list[dict]:
    cal = run_calibration(run)
    if cal is None:
        return [
            na(
                "calibration not available: predictions of this run are given trusted: null (unknown); "
                "make one with `vidcls calibrate RUN_DIR`"
            )
        ]
    ood = cal.get("ood") or {}
    n = cal.get("val_videos")
    on = f"{n} validation videos" if isinstance(n, int) else "the validation videos"
    rows = [
        [
            "expected calibration error (ECE)",
            num_cell(num(cal.get("ece_before"), 4)),
            num_cell(num(cal.get("ece_after"), 4), bold=True),
        ],
        [
            "negative log-likelihood",
            num_cell(num(cal.get("nll_before"), 4)),
            num_cell(num(cal.get("nll_after"), 4), bold=True),
        ],
    ]
    parts = [
        para(_temperature_text(cal, on, multilabel=MULTILABEL in (cal.get("task"), run.summary.get("task")))),
        table(["validation", "before", "after"], rows, table_id="calibration-table"),
    ]
    if ood:
        checks = ood_rows(ood)
        both = " and ".join(str(r[0]) for r in checks)
        parts.append(
            para(
                f"Out-of-distribution checks ({ood.get('direction', 'higher is more in-distribution')}): "
                f"a video is trusted only when it passes every one ({both}); "
                f"{_share(ood.get('val_pass_rate'))} of validation videos pass them all. A video "
                f"below a threshold is predicted with trusted: false and the reason; every "
                f'prediction record lists each score against its threshold under "ood".'
            )
        )
        parts.append(
            table(["score", "reads", "threshold", "validation videos passing"], checks, table_id="ood-table")
        )
    return parts
