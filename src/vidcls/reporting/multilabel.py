"""The report's sections for a multi-label run (summary.json ``"task": "multilabel"``): the headline
metrics on validation and test, per-class average precision, label co-occurrence, the decision
thresholds, the data and the videos whose label set is wrong.

A multi-label run may have 10,000 classes, so every per-class table and chart is capped: up to
``MAX_ALL_CLASSES`` classes in full, beyond that the ``SHOWN_EACH`` best and worst, saying how many are
left out. Every value read from summary.json is checked (a hand-edited file may hold anything): one of
the wrong type or not finite shows as "-" or "not available", never as an error.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from . import figures as rp
from .blocks import bar_cell, figure, na, num, num_cell, para, table
from .calibration import run_calibration
from .plots import is_multilabel_history
from .run_data import RunData

MULTILABEL = "multilabel"
MAX_ALL_CLASSES = 40  # up to this many classes a per-class table or chart shows every one
SHOWN_EACH = 20  # beyond it: this many best and this many worst
MAX_COOCCURRENCE = 20  # classes of the co-occurrence heat map (evaluation records the 20 most frequent)
MAX_WRONG_SETS = 200  # rows of the wrong-label-set table
# the header cards of a multi-label run
ML_METRICS = (("map_macro", "mAP"), ("gap_at_20", "GAP@20"), ("f1_micro", "micro F1"))
HEADLINE = (  # (key, row label) of the metrics table
    ("n", "videos"),
    ("map_macro", "mAP (macro, over classes with a positive video)"),
    ("gap_at_20", "GAP@20"),
    ("f1_micro", "F1 micro (at the run's thresholds)"),
    ("f1_macro", "F1 macro (at the run's thresholds)"),
    ("hit_at_1", "hit@1 (top class in the true set)"),
    ("exact_set_accuracy", "exact-set accuracy (at the run's thresholds)"),
    ("label_cardinality", "labels per video: true"),
    ("predicted_cardinality", "labels per video: predicted"),
)
RULES = {
    "per_class": "per class: the grid threshold that maximises the class's validation F1, shrunk toward "
    "the global threshold by the class's validation support (a rare class keeps close to the global one)",
    "global": "global: the one threshold that maximises validation micro F1, for every class",
    "fixed": "fixed: the threshold given with --threshold, for every class",
}


def _obj(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _finite(value: object) -> float | None:
    """A finite number as float; None for anything else (None, a bool, a string, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def is_multilabel(run: RunData) -> bool:
    """Whether ``run`` is a multi-label run: summary.json says so, or (no task recorded: a run still
    training, or an older summary) config.yaml does, its metrics are multi-label ones or its histories
    have mAP rows."""
    task = run.summary.get("task")
    if task in ("single", MULTILABEL):
        return task == MULTILABEL
    config = run.config if isinstance(run.config, dict) else {}
    if config.get("task") == MULTILABEL or "map_macro" in _obj(run.summary.get("val")):
        return True
    return any(isinstance(h, list) and is_multilabel_history(h) for h in run.histories)


def final_split(run: RunData) -> tuple[dict, str]:
    """The final model's metrics on test, else on validation (labelled so); ``{}`` when neither."""
    test = _obj(run.summary.get("test"))
    if test:
        return test, "test"
    return _obj(run.summary.get("val")), "validation (no test split)"


def header_cards(run: RunData) -> list[tuple[str, str]]:
    m, _ = final_split(run)
    return [(num(_finite(m.get(k))), name) for k, name in ML_METRICS]


def capped(order: list[Any]) -> tuple[list[Any], int]:
    """``order`` (best first) in full up to ``MAX_ALL_CLASSES``, else its ``SHOWN_EACH`` first and last;
    and how many are left out in between."""
    if len(order) <= MAX_ALL_CLASSES:
        return list(order), 0
    return list(order[:SHOWN_EACH]) + list(order[-SHOWN_EACH:]), len(order) - 2 * SHOWN_EACH


def _classes(k: int) -> str:
    return f"{k:,} class" if k == 1 else f"{k:,} classes"


def _left_out_row(left: int, width: int) -> list:
    return [f"... {_classes(left)} left out ..."] + [""] * (width - 1)


def _metric(m: dict, key: str) -> str:
    value = _finite(m.get(key))
    if key == "n" and value is not None:
        return f"{int(value):,}"
    return num(value)


def metrics_body(run: RunData) -> list[dict]:
    val, test = _obj(run.summary.get("val")), _obj(run.summary.get("test"))
    if not val and not test:
        return [na("multi-label metrics not available (summary.json missing or incomplete)")]
    splits = [("validation", val)] + ([("test", test)] if test else [])
    rows = [[label] + [num_cell(_metric(m, k)) for _, m in splits] for k, label in HEADLINE]
    rule = _obj(_obj(run.summary.get("final")).get("thresholds")).get("rule")
    parts = [
        para(
            "mAP, GAP@20 and hit@1 rank the scores and need no threshold; F1, exact-set accuracy and the "
            f"predicted labels per video are at the run's decision thresholds (rule: {rule or 'unknown'}; "
            "see Decision thresholds)."
        ),
        table(["final model"] + [name for name, _ in splits], rows, table_id="ml-metrics-table"),
    ]
    if not test:
        parts.append(na("no test split: the validation split also chose checkpoints and thresholds"))
    return parts


def _ap_values(m: dict, names: list[str]) -> tuple[list[str], dict[str, float], int]:
    """The classes in display order, their finite APs, and how many have none (no positive video)."""
    ap = _obj(m.get("ap_per_class"))
    order = names if names and set(ap) <= set(names) else [str(k) for k in ap]
    values = {str(k): v for k, v in ((str(k), _finite(v)) for k, v in ap.items()) if v is not None}
    return order, values, len(ap) - len(values)


def ap_body(run: RunData) -> list[dict]:
    m, label = final_split(run)
    order, ap, undefined = _ap_values(m, run.classes)
    if not ap:
        return [na("per-class average precision not available")]
    index = {c: i for i, c in enumerate(order)}
    ranked = sorted(ap, key=lambda c: (-ap[c], index.get(c, 0)))  # best first, ties in class order
    shown, left = capped(ranked)
    intro = f"Average precision per class on {label}, best first, of the {_classes(len(ap))} with a "
    intro += "positive video"
    if left:
        intro += f": the {SHOWN_EACH} best and the {SHOWN_EACH} worst; {left:,} in between are left out"
    if undefined:
        intro += f". {_classes(undefined)} without a positive video there: no AP, not in the mAP"
    f1, support = _obj(m.get("f1_per_class")), _obj(m.get("support_per_class"))
    rows: list[list] = [
        [c, bar_cell(ap[c]), bar_cell(_finite(f1.get(c))), num(support.get(c)) if c in support else "-"]
        for c in shown
    ]
    classes = [""] * len(rows)
    if left:
        rows.insert(SHOWN_EACH, _left_out_row(left, 4))
        classes.insert(SHOWN_EACH, "agg")
    gap = f"{_classes(left)} left out" if left else ""
    return [
        para(intro + "."),
        figure(
            "per-class average precision",
            rp.ap_png,
            shown,
            [ap[c] for c in shown],
            gap_after=SHOWN_EACH if left else None,
            gap_text=gap,
        ),
        table(["class", "AP", "F1", "support"], rows, table_id="ap-table", row_classes=classes),
    ]


def _counts_matrix(co: dict) -> tuple[list[str], list[list[float]]] | None:
    """The co-occurrence record's classes and counts (at most ``MAX_COOCCURRENCE``), None when malformed."""
    names, counts = co.get("classes"), co.get("counts")
    if not isinstance(names, list) or not isinstance(counts, list) or len(counts) != len(names):
        return None
    k = min(len(names), MAX_COOCCURRENCE)
    matrix = []
    for row in counts[:k]:
        if not isinstance(row, list) or len(row) != len(names):
            return None
        values = [_finite(v) for v in row[:k]]
        if any(v is None or v < 0 for v in values):
            return None
        matrix.append([float(v or 0.0) for v in values])
    return [str(c) for c in names[:k]], matrix


def cooccurrence_body(run: RunData) -> list[dict]:
    m, label = final_split(run)
    co = _obj(m.get("cooccurrence"))
    found = _counts_matrix(co) if co else None
    if found is None:
        return [na("label co-occurrence not available")]
    names, matrix = found
    if not names:
        return [na(f"label co-occurrence: no video of {label} carries a label")]
    total = len(co["classes"])
    intro = (
        f"True label sets of {label}: the {len(names)} most frequent classes. Each row is the videos "
        "carrying that class; a cell's number counts those that also carry the column's class (the "
        "diagonal: all of them), its colour is that share."
    )
    if total > len(names):
        intro += f" {_classes(total - len(names))} more in the record are left out."
    return [
        para(intro),
        figure(
            "label co-occurrence",
            rp.cooccurrence_png,
            matrix,
            names,
            title=f"True label co-occurrence ({label})",
        ),
    ]


def _threshold_list(record: dict, n: int) -> list[float] | None:
    per_class = record.get("per_class")
    if not isinstance(per_class, list) or len(per_class) != n or not n:
        return None
    values = [_finite(v) for v in per_class]
    return None if any(v is None for v in values) else [float(v or 0.0) for v in values]


def _thresholds_intro(record: dict, values: list[float], calibrated: bool) -> str:
    rule = str(record.get("rule", "unknown"))
    text = (
        f"Chosen on the validation split after training. Rule {RULES.get(rule, rule)}. Global threshold "
        f"{num(_finite(record.get('global')))}; over all {len(values):,} classes the per-class thresholds "
        f"run from {min(values):.3f} to {max(values):.3f} (median {statistics.median(values):.3f})."
    )
    if calibrated:
        text += (
            " calibration.json holds thresholds chosen again on the calibrated validation probabilities: "
            "predictions made with that calibration use those (last column)."
        )
    return text


def thresholds_body(run: RunData) -> list[dict]:
    record = _obj(_obj(run.summary.get("final")).get("thresholds"))
    per_class = record.get("per_class")
    n = len(run.classes) or (len(per_class) if isinstance(per_class, list) else 0)
    values = _threshold_list(record, n)
    if values is None:
        return [
            na(
                "decision thresholds not available (summary.json's final choice has no list of "
                f"{n} per-class thresholds)"
            )
        ]
    names = run.classes or [f"class {i}" for i in range(n)]
    cal = _threshold_list(_obj(_obj(run_calibration(run)).get("thresholds")), n)
    support = record.get("support")
    support = support if isinstance(support, list) and len(support) == n else [None] * n
    order, left = capped(sorted(range(n), key=lambda i: (values[i], i)))  # lowest threshold first
    headers = ["class", "threshold", "validation support"] + (["calibrated threshold"] if cal else [])
    rows: list[list] = [
        [names[i], num_cell(f"{values[i]:.3f}"), num_cell(num(support[i]))]
        + ([num_cell(f"{cal[i]:.3f}")] if cal else [])
        for i in order
    ]
    classes = [""] * len(rows)
    if left:
        rows.insert(SHOWN_EACH, _left_out_row(left, len(headers)))
        classes.insert(SHOWN_EACH, "agg")
    parts = [para(_thresholds_intro(record, values, cal is not None))]
    if left:
        parts.append(para(f"The {SHOWN_EACH} lowest and {SHOWN_EACH} highest thresholds; {left:,} left out."))
    return parts + [table(headers, rows, table_id="thresholds-table", row_classes=classes)]


def data_body(run: RunData) -> list[dict]:
    """Videos carrying each class per split (a video counts once for each of its labels); capped."""
    s = run.summary
    counts = _obj(s.get("class_counts"))
    splits = [sp for sp in ("train", "val", "test") if _obj(counts.get(sp))]
    parts = [
        para(f"validation source: {s.get('val_source', 'not available')}"),
        para("features dir: ", code=str(s.get("features_dir", "not available"))),
    ]
    if not splits:
        return parts + [na("class counts not available")]
    names = run.classes or sorted({str(c) for sp in splits for c in counts[sp]})
    first, index = counts[splits[0]], {c: i for i, c in enumerate(names)}
    order = sorted(names, key=lambda c: (-(_finite(first.get(c)) or 0.0), index[c]))  # most first
    shown, left = capped(order)
    rows: list[list] = [[c] + [num_cell(num(counts[sp].get(c, 0))) for sp in splits] for c in shown]
    classes = [""] * len(rows)
    if left:
        rows.insert(SHOWN_EACH, _left_out_row(left, 1 + len(splits)))
        classes.insert(SHOWN_EACH, "agg")
    sums = [sum(v for v in (_finite(x) for x in counts[sp].values()) if v is not None) for sp in splits]
    rows.append(["labels in total"] + [num_cell(f"{int(t):,}") for t in sums])
    classes.append("total")
    unseen = sum(1 for c in names if not _finite(first.get(c)))
    note = f"Videos carrying each class, most frequent in {splits[0]} first; a video counts once per label."
    if left:
        note += f" The {SHOWN_EACH} most and {SHOWN_EACH} least frequent; {left:,} left out."
    if unseen:
        note += f" {_classes(unseen)} without a {splits[0]} video."
    parts.insert(0, para(note))
    if "test" not in splits:
        parts.append(na("no test split in this run"))
    return [parts[0], table(["class"] + splits, rows, table_id="data-table", row_classes=classes)] + parts[1:]


def _set_cell(text: object, shown: int = 12) -> str:
    """A label set ``a|b|...`` for a table cell: its first ``shown`` labels and how many more (an untrained
    model over thousands of classes can predict thousands of labels per video)."""
    if text is None or text == "":
        return "(none)"
    labels = str(text).split("|")
    more = len(labels) - shown
    return "|".join(labels[:shown]) + (f" ... (+{more:,} more)" if more > 0 else "")


def _yes_no(value: object) -> str:
    return "yes" if value is True else "no" if value is False else "-"


def misclassified_body(run: RunData) -> list[dict]:
    """The videos whose predicted label set is not exactly the true one, most confident first; capped."""
    if run.predictions is None:
        return [na("predictions (eval_test.json / eval_val.json) not available")]
    wrong = [p for p in run.predictions if isinstance(p, dict) and not p.get("correct", True)]
    wrong.sort(key=lambda p: -(_finite(p.get("confidence")) or 0.0))
    split = "test" if run.pred_split == "test" else "validation"
    intro = (
        f"{len(wrong)} of {len(run.predictions)} {split} videos get a label set that is not exactly their "
        "true one (at the run's thresholds), most confident first; top-1 in set: whether the top-scored "
        "class is one of the true labels."
    )
    if run.pred_split != "test":
        intro = (
            "No test split: these are validation videos, which also chose checkpoints and thresholds. "
            + intro
        )
    if len(wrong) > MAX_WRONG_SETS:
        intro += f" The {MAX_WRONG_SETS} most confident are shown; {len(wrong) - MAX_WRONG_SETS:,} left out."
    if not wrong:
        return [para(intro)]
    rows = [
        [i + 1, p.get("video_id", "?"), _set_cell(p.get("label")), _set_cell(p.get("pred"))]
        + [_yes_no(p.get("hit_at_1")), bar_cell(p.get("confidence"))]
        for i, p in enumerate(wrong[:MAX_WRONG_SETS])
    ]
    headers = ["#", "video", "true set", "predicted set", "top-1 in set", "confidence"]
    return [para(intro), table(headers, rows, table_id="misclassified-table", scroll=True)]
