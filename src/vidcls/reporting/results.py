"""The report's results sections: per-class metrics, the confusion matrix, ensemble vs members and
test-time augmentation, each built as plain blocks from the run's summary.json.

A multi-label run (summary.json ``"task": "multilabel"``) shows mAP, GAP@20 and micro F1 in the member
table (``ML_METRICS``) and those and exact-set accuracy in the TTA table; its per-class and
co-occurrence sections are :mod:`vidcls.reporting.multilabel`'s."""

from __future__ import annotations

import math
from typing import Any

from ..run.layout import SNAPSHOT_RE
from . import figures as rp
from .blocks import Cell, bar_cell, figure, na, num, num_cell, para, table
from .run_data import RunData

METRICS = (("accuracy", "acc"), ("f1_macro", "macro F1"), ("worst_class_f1", "worst-class F1"))
ML_METRICS = (("map_macro", "mAP"), ("gap_at_20", "GAP@20"), ("f1_micro", "micro F1"))
TTA_KEYS = (
    ("accuracy", "acc"),
    ("f1_weighted", "weighted F1"),
    ("f1_macro", "macro F1"),
    ("worst_class_f1", "worst F1"),
)
ML_TTA_KEYS = (*ML_METRICS, ("exact_set_accuracy", "exact set"))


def multilabel(run: RunData) -> bool:
    return run.summary.get("task") == "multilabel"


def metric_keys(run: RunData) -> tuple:
    """The member table's (key, heading) pairs for the run's task."""
    return ML_METRICS if multilabel(run) else METRICS


def final_metrics(run: RunData) -> tuple[dict | None, str]:
    """The served model's metrics on test, or on validation (labelled so) when there is no test split."""
    if run.has_test:
        return run.summary["test"], "test"
    return run.summary.get("val"), "validation (no test split)"


def per_class_body(run: RunData) -> list[dict]:
    m, label = final_metrics(run)
    if not m or not m.get("f1_per_class"):
        return [na("per-class metrics not available")]
    names = list(m["f1_per_class"])
    col = {
        k: [m.get(k, {}).get(c, math.nan) for c in names]
        for k in ("precision_per_class", "recall_per_class", "f1_per_class")
    }
    support = m.get("support_per_class", {})
    rows = [
        [
            c,
            bar_cell(col["precision_per_class"][i]),
            bar_cell(col["recall_per_class"][i]),
            bar_cell(col["f1_per_class"][i]),
            support.get(c, "-"),
        ]
        for i, c in enumerate(names)
    ]
    return [
        para(f"Final model on {label}."),
        table(["class", "precision", "recall", "F1", "support"], rows, table_id="per-class-table"),
        figure(
            "per-class F1",
            rp.per_class_png,
            names,
            col["f1_per_class"],
            col["precision_per_class"],
            col["recall_per_class"],
        ),
    ]


def confusion_body(run: RunData) -> list[dict]:
    m, label = final_metrics(run)
    metrics = m or {}
    cm = metrics.get("confusion_matrix")
    if not cm:
        return [na("confusion matrix not available")]
    names = list(metrics.get("f1_per_class") or {}) or run.classes or [str(i) for i in range(len(cm))]
    normed = [[v / sum(row) if sum(row) else 0.0 for v in row] for row in cm]
    figs = [
        figure(
            "confusion matrix counts",
            rp.confusion_png,
            cm,
            names,
            normalised=False,
            title=f"Counts ({label})",
        ),
        figure(
            "confusion matrix row-normalised",
            rp.confusion_png,
            normed,
            names,
            normalised=True,
            title="Row-normalised (recall per class)",
        ),
    ]
    # side by side while small; past a dozen classes each needs the full width to stay legible
    return [
        para(f"Final model on {label}; rows are the true class, columns the prediction."),
        {"kind": "group", "cls": "pair" if len(names) <= 12 else "stack", "blocks": figs},
    ]


def _pair(plain: dict | None, tta: dict | None, key: str, tta_used: bool) -> Cell:
    """'plain / TTA' in one cell, the variant actually used in bold."""
    a, b = num((plain or {}).get(key)), num((tta or {}).get(key))
    return Cell(((a, not tta_used), (" / ", False), (b, tta_used)), cls="num")


def _metric_cells(results: dict, splits: list[str], tta_used: bool, keys: tuple = METRICS) -> list:
    """``results`` maps "val", "val_tta", "test", "test_tta" to metric dicts (entries may be missing)."""
    return [_pair(results.get(sp), results.get(f"{sp}_tta"), k, tta_used) for sp in splits for k, _ in keys]


def _member_rows(run: RunData, splits: list[str]) -> tuple[list, list]:
    """One row per model (a member, or with --snapshots one of its snapshots); the class marks excluded
    models and the one the run serves."""
    rows, classes = [], []
    ens = run.summary.get("ensemble") or {}
    excluded = {e.get("member"): e.get("reason", "") for e in ens.get("excluded") or []}
    final = (run.summary.get("final") or {}).get("source")
    for m in run.summary.get("members") or []:
        i = m.get("member")
        status = f"excluded: {excluded[i]}" if i in excluded else "used"
        label, epoch = f"member {i}", m.get("best_epoch", "-")
        snapshot = SNAPSHOT_RE.fullmatch(str(m.get("checkpoint") or "").split("/")[-1])
        if snapshot:  # --snapshots: a model is one cycle end of a member, not the member's best epoch
            label, epoch = f"member {i} ({m['checkpoint']})", int(snapshot.group(1))
        rows.append(
            [label, epoch, "yes" if m.get("tta_used") else "no"]
            + _metric_cells(m, splits, bool(m.get("tta_used")), metric_keys(run))
            + [status]
        )
        classes.append(
            "member" + (" excluded" if i in excluded else "") + (" final" if final == f"member {i}" else "")
        )
    return rows, classes


def _aggregate_rows(run: RunData, splits: list[str]) -> tuple[list, list]:
    """Mean of members, the ensemble, and the ensemble's test gains, in the member table's columns."""
    s, rows, classes, keys = run.summary, [], [], metric_keys(run)
    ens = s.get("ensemble") or {}
    blank = ["-"] * len(keys)  # the val columns of test-only rows
    several = len(s.get("members") or []) > 1  # with one member, mean and gains are the member itself
    mean = s.get("mean_member_test")
    if mean and "test" in splits and several:
        rows.append(
            ["mean of members", "", "no"] + blank + [num_cell(num(mean.get(k))) for k, _ in keys] + [""]
        )
        classes.append("agg")
    if ens:
        wo, wi = ens.get("without_tta") or {}, ens.get("with_tta") or {}
        both = {**wo, **{f"{sp}_tta": v for sp, v in wi.items()}}
        rows.append(
            ["ensemble", "", "yes" if ens.get("tta_used") else "no"]
            + _metric_cells(both, splits, bool(ens.get("tta_used")), keys)
            + [f"members {', '.join(str(x) for x in ens.get('members_used') or [])}"]
        )
        classes.append("agg final" if (s.get("final") or {}).get("source") == "ensemble" else "agg")
    for key, label in (
        ("gain_vs_mean_member", "gain vs mean member"),
        ("gain_vs_best_val_member", "gain vs best-val member"),
    ):
        if ens.get(key) and "test" in splits and several:
            rows.append(
                [label, "", ""]
                + blank
                + [num_cell(num(ens[key].get(k), signed=True)) for k, _ in keys]
                + ["ensemble test minus that"]
            )
            classes.append("gain")
    return rows, classes


def ensemble_body(run: RunData) -> list[dict]:
    s = run.summary
    if not s.get("members"):
        return [na("member results not available (summary.json missing or incomplete)")]
    splits = ["val", "test"] if run.has_test else ["val"]  # no empty test columns without a test split
    rows, classes = _member_rows(run, splits)
    more_rows, more_classes = _aggregate_rows(run, splits)
    rows, classes = rows + more_rows, classes + more_classes
    headers = (
        ["", "best epoch", "TTA used"]
        + [f"{sp} {n}" for sp in splits for _, n in metric_keys(run)]
        + ["ensemble"]
    )
    parts = [
        para(
            "Each cell: without TTA / with TTA; the variant the row actually uses is bold. "
            "Green row: the model the run serves."
        ),
        table(headers, rows, table_id="member-table", row_classes=classes),
    ]
    final = s.get("final")
    if final:
        fm, label = final_metrics(run)
        fm = fm or {}
        numbers = (
            f"mAP {num(fm.get('map_macro'))}, GAP@20 {num(fm.get('gap_at_20'))}, "
            f"micro F1 {num(fm.get('f1_micro'))}"
            if multilabel(run)
            else f"accuracy {num(fm.get('accuracy'))}, macro F1 {num(fm.get('f1_macro'))}"
        )
        line = (
            f"Final choice: {final.get('source', '?')} (TTA {'on' if final.get('tta_used') else 'off'})"
            f" - {label} {numbers}."
        )
        if final.get("reason"):
            line += f" Reason: {final['reason']}"
        elif str(final.get("source", "")).startswith("member") and len(s["members"]) > 1:
            # the rule in inference.policy.choose_final: a single member that beats the ensemble on validation is served
            line += " Reason: this member scored higher on validation than the ensemble."
        parts.append(para(line, cls="choice"))
    return parts


def tta_body(run: RunData) -> list[dict]:
    tta = run.summary.get("tta") or {}
    per_mode = tta.get("per_mode") or {}
    if not per_mode:
        return [na("TTA results not available")]
    splits = [sp for sp in ("val", "test") if any(sp in v for v in per_mode.values())]
    keys = ML_TTA_KEYS if multilabel(run) else TTA_KEYS
    headers = ["mode"] + [f"{sp} {n}" for sp in splits for _, n in keys]
    by_mode: dict[str, list[Any]] = {
        mode: [(res.get(sp) or {}).get(k) for sp in splits for k, _ in keys] for mode, res in per_mode.items()
    }
    by_mode["mean of all modes (TTA)"] = [(tta.get(sp) or {}).get(k) for sp in splits for k, _ in keys]
    best = [
        max((v[j] for v in by_mode.values() if isinstance(v[j], (int, float))), default=None)
        for j in range(len(headers) - 1)
    ]
    # bold the best value of each column: the mode worth looking at stands out
    rows = [
        [mode] + [num_cell(num(v), bold=v is not None and v == best[j]) for j, v in enumerate(vals)]
        for mode, vals in by_mode.items()
    ]
    intro = (
        f"TTA setting: {tta.get('mode', '?')}; used by the ensemble: {'yes' if tta.get('used') else 'no'}. "
        "Rows: the ensemble scored on each single augmentation, then on their mean; best per column in bold."
    )
    return [
        para(intro),
        table(headers, rows, table_id="tta-table", row_classes=[""] * len(per_mode) + ["agg"]),
    ]
