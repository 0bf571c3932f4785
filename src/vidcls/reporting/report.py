"""``RUN_DIR/report.html``: one self-contained page that summarises a training run.

Everything is inline (CSS, PNG charts as base64 data URIs), so the file can be mailed, archived or
opened on an offline machine. Every input other than the run directory itself is optional: a
missing or unreadable file turns its section into "not available" instead of failing the report,
because a partial report of an interrupted run is still worth reading.

The sections below build plain data (paragraphs, tables, images); ``templates/report.html.j2``
turns it into HTML with autoescaping on, so class names, video ids, paths and config values from
the run are always shown as text, never interpreted as markup.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import jinja2

from .. import __version__
from ..run.layout import CHECKPOINT_RE, checkpoint_member
from ..run.rundir import RunDir
from . import figures as rp
from . import multilabel as ml
from .blocks import Cell, bar_cell, figure, na, num, para, table
from .calibration import calibration_body
from .results import METRICS, confusion_body, ensemble_body, final_metrics, per_class_body, tta_body
from .run_data import RunData, load_run

log = logging.getLogger(__name__)

# --- sections ------------------------------------------------------------------------------------


def _config_body(run: RunData) -> list[dict]:
    if run.config is None:
        return [na("config.yaml not available")]

    def show(v: object) -> str:
        if isinstance(v, (list, tuple)):
            return ", ".join(str(x) for x in v)
        if isinstance(v, dict):
            return json.dumps(v)
        return "-" if v is None else str(v)

    rows = [(k, Cell(((show(v), False),), code=True)) for k, v in run.config.items()]
    return [table(["option", "value"], rows, table_id="config-table")]


def _data_body(run: RunData) -> list[dict]:
    s = run.summary
    counts = s.get("class_counts") or {}
    splits = [sp for sp in ("train", "val", "test") if counts.get(sp)]
    parts = [
        para(f"validation source: {s.get('val_source', 'not available')}"),
        para("features dir: ", code=str(s.get("features_dir", "not available"))),
    ]
    if not splits:
        return parts + [na("class counts not available")]
    names = run.classes or sorted({c for sp in splits for c in counts[sp]})
    totals = {sp: sum(counts[sp].values()) for sp in splits}

    def cell(sp: str, c: str) -> str:
        n = counts[sp].get(c, 0)
        return f"{n} ({100.0 * n / totals[sp]:.0f}%)" if totals[sp] else str(n)

    rows = [[c] + [cell(sp, c) for sp in splits] for c in names]
    rows.append(["total"] + [str(totals[sp]) for sp in splits])
    if "test" not in splits:
        parts.append(na("no test split in this run"))
    return [
        table(["class"] + splits, rows, table_id="data-table", row_classes=[""] * len(names) + ["total"])
    ] + parts


def _seed_member(row: dict) -> int | None:
    """The seed member a summary row belongs to: the ``<i>`` of its ``members/<i>/checkpoints/...``
    (with ``--snapshots`` a member has several rows), else its index (summaries without checkpoints)."""
    path = str(row.get("checkpoint") or "")
    return checkpoint_member(path) if CHECKPOINT_RE.fullmatch(path) else row.get("member")


def _model_fact(s: dict, run: RunData) -> str:
    """ "<model> x N member(s)", and the number of models when --snapshots gave members several."""
    rows = s.get("members") or []
    n = len({_seed_member(r) for r in rows}) if rows else len(run.histories)
    more = f" ({len(rows)} snapshot models)" if len(rows) > n else ""
    return f"{s.get('model', '?')} x {n} member(s){more}"


def _best_epochs(run: RunData) -> list[int | None]:
    """Per seed member (one history each), its best epoch: from the first summary row of that member."""
    best: dict[int | None, int | None] = {}
    for row in run.summary.get("members") or []:
        best.setdefault(_seed_member(row), row.get("best_epoch"))
    return [best.get(i) for i in range(len(run.histories))]


def _curves_body(run: RunData) -> list[dict]:
    if not any(run.histories):
        return [na("training history (members/*/history.json) not available")]
    return [
        para("Dashed red line and star: the epoch whose checkpoint the member uses (best validation score)."),
        figure("training curves per member", rp.curves_png, run.histories, _best_epochs(run)),
    ]


def _lr_body(run: RunData) -> list[dict]:
    if not any(run.histories):
        return [na("training history (members/*/history.json) not available")]
    return [figure("learning-rate schedule", rp.lr_png, run.histories)]


def _resources_body(run: RunData) -> list[dict]:
    parts = [
        figure("resource use over time", rp.resources_png, run.resources)
        if run.resources
        else na("resource log not available")
    ]
    res = run.summary.get("resources")
    if res:
        rows = [
            [name, num(v.get("mean"), 2), num(v.get("min"), 2), num(v.get("max"), 2)]
            for name, v in res.items()
            if isinstance(v, dict)
        ]
        parts.append(table(["field", "mean", "min", "max"], rows, table_id="resources-table"))
    else:
        parts.append(na("resource summary not available"))
    if run.resources:
        parts.append(para(f"{len(run.resources)} log records."))
    return parts


def _misclassified_body(run: RunData) -> list[dict]:
    if run.predictions is None:
        return [na("predictions (eval_test.json / eval_val.json) not available")]
    wrong = [p for p in run.predictions if isinstance(p, dict) and not p.get("correct", True)]
    wrong.sort(key=lambda p: -float(p.get("confidence") or 0.0))  # confidently wrong first
    n = len(run.predictions)
    split = "test" if run.pred_split == "test" else "validation"
    intro = f"{len(wrong)} of {n} {split} videos misclassified, most confident mistakes first."
    if run.pred_split != "test":
        intro = (
            "No test split: these are validation videos, which also chose checkpoints and TTA, "
            "so they flatter the model. " + intro
        )
    if not wrong:
        return [para(intro)]
    rows = [
        [
            i + 1,
            p.get("video_id", "?"),
            p.get("label", "?"),
            p.get("pred", "?"),
            bar_cell(p.get("confidence")),
        ]
        for i, p in enumerate(wrong)
    ]
    return [
        para(intro),
        table(
            ["#", "video", "true", "predicted", "confidence"],
            rows,
            table_id="misclassified-table",
            scroll=True,
        ),
    ]


SECTIONS = (  # (id, heading, builder): ids are a stable interface (tests, links)
    ("config", "Configuration", _config_body),
    ("data", "Data", _data_body),
    ("curves", "Training curves", _curves_body),
    ("lr", "Learning-rate schedule", _lr_body),
    ("per-class", "Per-class metrics", per_class_body),
    ("confusion", "Confusion matrix", confusion_body),
    ("ensemble", "Ensemble vs members", ensemble_body),
    ("tta", "Test-time augmentation", tta_body),
    ("calibration", "Calibration and trust", calibration_body),
    ("resources", "Resource use", _resources_body),
    ("misclassified", "Misclassified videos", _misclassified_body),
)
# A multi-label run's page: its metrics, per-class AP, co-occurrence and thresholds in place of the
# single-label per-class table and confusion matrix (which mean nothing for label sets).
_SAME = {sid: (sid, title, build) for sid, title, build in SECTIONS}
MULTILABEL_SECTIONS = (
    _SAME["config"],
    ("data", "Data", ml.data_body),
    _SAME["curves"],
    _SAME["lr"],
    ("metrics", "Multi-label metrics", ml.metrics_body),
    ("per-class", "Per-class average precision", ml.ap_body),
    ("cooccurrence", "Label co-occurrence", ml.cooccurrence_body),
    ("thresholds", "Decision thresholds", ml.thresholds_body),
    _SAME["ensemble"],
    _SAME["tta"],
    _SAME["calibration"],
    _SAME["resources"],
    ("misclassified", "Videos with a wrong label set", ml.misclassified_body),
)


def sections_of(run: RunData) -> tuple[tuple[str, str, Callable[[RunData], list[dict]]], ...]:
    """The sections of ``run``'s page: ``MULTILABEL_SECTIONS`` for a multi-label run, else ``SECTIONS``."""
    try:
        multilabel = ml.is_multilabel(run)
    except Exception as exc:  # noqa: BLE001 - an odd summary must not cost the report
        log.warning("report: the run's task could not be read (%s: %s)", type(exc).__name__, exc)
        multilabel = False
    return MULTILABEL_SECTIONS if multilabel else SECTIONS


def _section(run: RunData, sid: str, title: str, build: Callable[[RunData], list[dict]]) -> dict:
    try:
        blocks = build(run)
    except Exception as exc:  # noqa: BLE001 - one odd input must not cost the rest of the report
        log.warning("report: section %r could not be rendered (%s: %s)", sid, type(exc).__name__, exc)
        blocks = [na(f"could not render this section ({type(exc).__name__}: {exc})")]
    return {"id": sid, "title": title, "blocks": blocks}


def _header(run: RunData) -> dict:
    s = run.summary
    m, label = final_metrics(run)
    finished = ""
    summary = RunDir(run.run_dir).summary
    if summary.exists():
        finished = datetime.fromtimestamp(summary.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    wall = s.get("wall_seconds")
    facts = [
        ("run dir", str(run.run_dir)),
        ("finished", finished or "not finished / unknown"),
        ("report written", datetime.now().strftime("%Y-%m-%d %H:%M")),
        ("vidcls", f"{s.get('vidcls_version', '?')} (report {__version__})"),
        ("model", _model_fact(s, run)),
        ("classes", str(len(run.classes)) if run.classes else "?"),
        ("wall time", f"{wall / 60:.1f} min" if isinstance(wall, (int, float)) else "-"),
        ("final model", (s.get("final") or {}).get("source", "?")),
    ]
    if ml.is_multilabel(run):
        facts.append(("task", "multi-label (a set of labels per video)"))
        label = ml.final_split(run)[1]
        return {"name": run.run_dir.name, "facts": facts, "label": label, "cards": ml.header_cards(run)}
    return {
        "name": run.run_dir.name,
        "facts": facts,
        "label": label,
        "cards": [(num((m or {}).get(k)), n) for k, n in METRICS],
    }


def _safe_header(run: RunData) -> dict:
    """The header, or a plain one when summary.json (hand-edited, say) has the wrong shape."""
    try:
        return _header(run)
    except Exception as exc:  # noqa: BLE001 - as for a section: the rest of the report still renders
        log.warning("report: the header could not be rendered (%s: %s)", type(exc).__name__, exc)
        why = f"summary.json has an unexpected shape ({type(exc).__name__}: {exc})"
        return {
            "name": run.run_dir.name,
            "facts": [("run dir", str(run.run_dir)), ("summary", why)],
            "label": "not available",
            "cards": [(num(None), n) for _, n in METRICS],
        }


# Autoescape on for every template, whatever its file name: the page shows strings from the run.
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("vidcls.reporting", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.tests["cell"] = lambda value: isinstance(value, Cell)


def render_report(run_dir: str | os.PathLike) -> str:
    """The report for ``run_dir`` as an HTML string (see :func:`write_report`)."""
    run = load_run(Path(run_dir).resolve())
    sections = [_section(run, sid, title, build) for sid, title, build in sections_of(run)]
    return _ENV.get_template("report.html.j2").render(header=_safe_header(run), sections=sections)


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/report.html``: a single self-contained page summarising the run.

    Sections (``<section id=...>``): config, data, curves, lr, per-class, confusion, ensemble,
    tta, calibration, resources, misclassified; plus a header with the headline test numbers. A
    multi-label run's page (``MULTILABEL_SECTIONS``) has metrics, per-class (average precision),
    cooccurrence and thresholds in place of per-class and confusion, every per-class part capped (the
    best and worst 20 of many classes). PNG charts are embedded as base64 data URIs and there are no
    external references, so the file works offline.

    Args:
        run_dir: a ``vidcls train`` run directory. Only its config.yaml must exist; each missing
            input (summary.json, eval_*.json, resource log, histories) shows as "not available".

    Returns:
        The path of the written report.

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory.
        ConfigError: it holds no run (no config.yaml, the first file ``vidcls train`` writes).
        RunLockedError: another process (a train) is using ``run_dir``; ``fit``'s own call passes.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, "run directory does not exist", str(run_dir))
    run = RunDir(run_dir).require("give the RUN_DIR of `vidcls train`")  # before the lock: nothing written
    with run.lock("report"):
        return run.write_report(render_report(run_dir))
