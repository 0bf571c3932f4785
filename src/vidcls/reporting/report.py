"""``RUN_DIR/report.html``: one self-contained page that summarises a training run.

Everything is inline (CSS, PNG charts as base64 data URIs), so the file can be mailed, archived or
opened on an offline machine. Every input other than the run directory itself is optional: a
missing or unreadable file turns its section into "not available" instead of failing the report,
because a partial report of an interrupted run is still worth reading.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .. import __version__
from ..config import read_yaml
from ..errors import ConfigError
from ..utils.fs import atomic_write_text
from . import figures as rp

METRICS = (("accuracy", "acc"), ("f1_macro", "macro F1"), ("worst_class_f1", "worst-class F1"))


class _Html(str):
    """Markup that is already escaped; every other string put into the page goes through html.escape."""


@dataclass
class _Run:
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
        return [str(c) for c in self.summary.get("classes") or []]


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


def _load_run(run_dir: Path) -> _Run:
    run = _Run(run_dir, summary=_read_json(run_dir / "summary.json") or {})
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


# --- small HTML builders -------------------------------------------------------------------------

def _esc(value) -> str:
    return value if isinstance(value, _Html) else html.escape(str(value))


def _num(value, digits: int = 3, signed: bool = False) -> str:
    """Metric formatting: fixed decimals, '-' for missing or NaN (JSON null, absent split)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _bar_cell(value) -> _Html:
    """A 0..1 metric with a light bar behind it, so a column of numbers reads like a chart."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return _Html("<td>-</td>")
    pct = max(0.0, min(100.0, 100.0 * float(value)))
    return _Html(f'<td class="bar" style="background:linear-gradient(90deg,#cfe0f5 {pct:.1f}%,'
                 f'transparent {pct:.1f}%)">{value:.3f}</td>')


def _table(headers: list, rows: list, *, table_id: str | None = None, row_classes: list | None = None) -> str:
    """A table; cells are escaped unless already :class:`_Html` (``<td>`` included when it starts so)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        cells = "".join(c if isinstance(c, _Html) and c.startswith("<td") else f"<td>{_esc(c)}</td>" for c in row)
        body.append(f'<tr class="{_esc(cls)}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    tid = f' id="{_esc(table_id)}"' if table_id else ""
    return f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return _na(f"{alt}: not available")
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _na(text: str = "not available") -> str:
    return f'<p class="na">{_esc(text)}</p>'


def _p(text: str) -> str:
    return f"<p>{_esc(text)}</p>"


# --- sections ------------------------------------------------------------------------------------

def _config_body(run: _Run) -> str:
    if run.config is None:
        return _na("config.yaml not available")

    def show(v):
        if isinstance(v, (list, tuple)):
            return ", ".join(str(x) for x in v)
        if isinstance(v, dict):
            return json.dumps(v)
        return "-" if v is None else str(v)

    rows = [(k, _Html(f"<td><code>{_esc(show(v))}</code></td>")) for k, v in run.config.items()]
    return _table(["option", "value"], rows, table_id="config-table")


def _data_body(run: _Run) -> str:
    s = run.summary
    counts = s.get("class_counts") or {}
    splits = [sp for sp in ("train", "val", "test") if counts.get(sp)]
    parts = [_p(f"validation source: {s.get('val_source', 'not available')}"),
             _Html(f"<p>features dir: <code>{_esc(s.get('features_dir', 'not available'))}</code></p>")]
    if not splits:
        return "".join(parts) + _na("class counts not available")
    names = run.classes or sorted({c for sp in splits for c in counts[sp]})
    totals = {sp: sum(counts[sp].values()) for sp in splits}

    def cell(sp, c):
        n = counts[sp].get(c, 0)
        return f"{n} ({100.0 * n / totals[sp]:.0f}%)" if totals[sp] else str(n)

    rows = [[c] + [cell(sp, c) for sp in splits] for c in names]
    rows.append(["total"] + [str(totals[sp]) for sp in splits])
    if "test" not in splits:
        parts.append(_na("no test split in this run"))
    return _table(["class"] + splits, rows, table_id="data-table", row_classes=[""] * len(names) + ["total"]) + "".join(parts)


def _best_epochs(run: _Run) -> list:
    members = run.summary.get("members") or []
    return [members[i].get("best_epoch") if i < len(members) else None for i in range(len(run.histories))]


def _curves_body(run: _Run) -> str:
    if not any(run.histories):
        return _na("training history (members/*/history.json) not available")
    note = _p("Dashed red line and star: the epoch whose checkpoint the member uses (best validation score).")
    return note + _img(rp.curves_png(run.histories, _best_epochs(run)), "training curves per member")


def _lr_body(run: _Run) -> str:
    if not any(run.histories):
        return _na("training history (members/*/history.json) not available")
    return _img(rp.lr_png(run.histories), "learning-rate schedule")


def _final_metrics(run: _Run) -> tuple[dict | None, str]:
    """The served model's metrics on test, or on validation (labelled so) when there is no test split."""
    if run.has_test:
        return run.summary["test"], "test"
    return run.summary.get("val"), "validation (no test split)"


def _per_class_body(run: _Run) -> str:
    m, label = _final_metrics(run)
    if not m or not m.get("f1_per_class"):
        return _na("per-class metrics not available")
    names = list(m["f1_per_class"])
    col = {k: [m.get(k, {}).get(c, math.nan) for c in names]
           for k in ("precision_per_class", "recall_per_class", "f1_per_class")}
    support = m.get("support_per_class", {})
    rows = [[c, _bar_cell(col["precision_per_class"][i]), _bar_cell(col["recall_per_class"][i]),
             _bar_cell(col["f1_per_class"][i]), support.get(c, "-")] for i, c in enumerate(names)]
    chart = rp.per_class_png(names, col["f1_per_class"], col["precision_per_class"], col["recall_per_class"])
    return (_p(f"Final model on {label}.") + _table(["class", "precision", "recall", "F1", "support"], rows,
                                                   table_id="per-class-table") + _img(chart, "per-class F1"))


def _confusion_body(run: _Run) -> str:
    m, label = _final_metrics(run)
    cm = (m or {}).get("confusion_matrix")
    if not cm:
        return _na("confusion matrix not available")
    names = list((m.get("f1_per_class") or {})) or run.classes or [str(i) for i in range(len(cm))]
    normed = [[v / sum(row) if sum(row) else 0.0 for v in row] for row in cm]
    counts_png = rp.confusion_png(cm, names, normalised=False, title=f"Counts ({label})")
    normed_png = rp.confusion_png(normed, names, normalised=True, title="Row-normalised (recall per class)")
    # side by side while small; past a dozen classes each needs the full width to stay legible
    layout = "pair" if len(names) <= 12 else "stack"
    return (_p(f"Final model on {label}; rows are the true class, columns the prediction.")
            + f'<div class="{layout}">{_img(counts_png, "confusion matrix counts")}'
            + f'{_img(normed_png, "confusion matrix row-normalised")}</div>')


def _pair(plain: dict | None, tta: dict | None, key: str, tta_used: bool) -> _Html:
    """'plain / TTA' in one cell, the variant actually used in bold."""
    a, b = _num((plain or {}).get(key)), _num((tta or {}).get(key))
    a, b = (a, f"<b>{b}</b>") if tta_used else (f"<b>{a}</b>", b)
    return _Html(f'<td class="num">{a} / {b}</td>')


def _metric_cells(results: dict, splits: list[str], tta_used: bool) -> list:
    """``results`` maps "val", "val_tta", "test", "test_tta" to metric dicts (entries may be missing)."""
    return [_pair(results.get(sp), results.get(f"{sp}_tta"), k, tta_used) for sp in splits for k, _ in METRICS]


def _member_rows(run: _Run, splits: list[str]) -> tuple[list, list]:
    """One row per member; the class marks excluded members and the one the run serves."""
    rows, classes = [], []
    ens = run.summary.get("ensemble") or {}
    excluded = {e.get("member"): e.get("reason", "") for e in ens.get("excluded") or []}
    final = (run.summary.get("final") or {}).get("source")
    for m in run.summary.get("members") or []:
        i = m.get("member")
        status = f"excluded: {excluded[i]}" if i in excluded else "used"
        rows.append([f"member {i}", m.get("best_epoch", "-"), "yes" if m.get("tta_used") else "no"]
                    + _metric_cells(m, splits, bool(m.get("tta_used"))) + [status])
        classes.append("member" + (" excluded" if i in excluded else "") + (" final" if final == f"member {i}" else ""))
    return rows, classes


def _aggregate_rows(run: _Run, splits: list[str]) -> tuple[list, list]:
    """Mean of members, the ensemble, and the ensemble's test gains, in the member table's columns."""
    s, rows, classes = run.summary, [], []
    ens = s.get("ensemble") or {}
    blank = [_Html("<td>-</td>")] * len(METRICS)  # the val columns of test-only rows
    several = len(s.get("members") or []) > 1  # with one member, mean and gains are the member itself
    mean = s.get("mean_member_test")
    if mean and "test" in splits and several:
        rows.append(["mean of members", "", "no"] + blank
                    + [_Html(f'<td class="num">{_num(mean.get(k))}</td>') for k, _ in METRICS] + [""])
        classes.append("agg")
    if ens:
        wo, wi = ens.get("without_tta") or {}, ens.get("with_tta") or {}
        both = {**wo, **{f"{sp}_tta": v for sp, v in wi.items()}}
        rows.append(["ensemble", "", "yes" if ens.get("tta_used") else "no"]
                    + _metric_cells(both, splits, bool(ens.get("tta_used")))
                    + [f"members {', '.join(str(x) for x in ens.get('members_used') or [])}"])
        classes.append("agg final" if (s.get("final") or {}).get("source") == "ensemble" else "agg")
    for key, label in (("gain_vs_mean_member", "gain vs mean member"),
                       ("gain_vs_best_val_member", "gain vs best-val member")):
        if ens.get(key) and "test" in splits and several:
            rows.append([label, "", ""] + blank
                        + [_Html(f'<td class="num">{_num(ens[key].get(k), signed=True)}</td>') for k, _ in METRICS]
                        + ["ensemble test minus that"])
            classes.append("gain")
    return rows, classes


def _ensemble_body(run: _Run) -> str:
    s = run.summary
    if not s.get("members"):
        return _na("member results not available (summary.json missing or incomplete)")
    splits = ["val", "test"] if run.has_test else ["val"]  # no empty test columns without a test split
    rows, classes = _member_rows(run, splits)
    more_rows, more_classes = _aggregate_rows(run, splits)
    rows, classes = rows + more_rows, classes + more_classes
    headers = ["", "best epoch", "TTA used"] + [f"{sp} {n}" for sp in splits for _, n in METRICS] + ["ensemble"]
    parts = [_p("Each cell: without TTA / with TTA; the variant the row actually uses is bold. "
                "Green row: the model the run serves."),
             _table(headers, rows, table_id="member-table", row_classes=classes)]
    final = s.get("final")
    if final:
        fm, label = _final_metrics(run)
        line = (f"Final choice: {final.get('source', '?')} (TTA {'on' if final.get('tta_used') else 'off'})"
                f" - {label} accuracy {_num((fm or {}).get('accuracy'))}, macro F1 {_num((fm or {}).get('f1_macro'))}.")
        if final.get("reason"):
            line += f" Reason: {final['reason']}"
        elif str(final.get("source", "")).startswith("member") and len(s["members"]) > 1:
            # the rule in ensemble.combine: a single member that beats the ensemble on validation is served
            line += " Reason: this member scored higher on validation than the ensemble."
        parts.append(f'<p class="choice">{_esc(line)}</p>')
    return "".join(parts)


def _tta_body(run: _Run) -> str:
    tta = run.summary.get("tta") or {}
    per_mode = tta.get("per_mode") or {}
    if not per_mode:
        return _na("TTA results not available")
    splits = [sp for sp in ("val", "test") if any(sp in v for v in per_mode.values())]
    keys = (("accuracy", "acc"), ("f1_weighted", "weighted F1"), ("f1_macro", "macro F1"),
            ("worst_class_f1", "worst F1"))
    headers = ["mode"] + [f"{sp} {n}" for sp in splits for _, n in keys]
    table = {mode: [(res.get(sp) or {}).get(k) for sp in splits for k, _ in keys] for mode, res in per_mode.items()}
    table["mean of all modes (TTA)"] = [(tta.get(sp) or {}).get(k) for sp in splits for k, _ in keys]
    best = [max((v[j] for v in table.values() if isinstance(v[j], (int, float))), default=None)
            for j in range(len(headers) - 1)]
    # bold the best value of each column: the mode worth looking at stands out
    rows = [[mode] + [_Html(f'<td class="num">{"<b>%s</b>" % _num(v) if v is not None and v == best[j] else _num(v)}</td>')
                      for j, v in enumerate(vals)] for mode, vals in table.items()]
    intro = (f"TTA setting: {tta.get('mode', '?')}; used by the ensemble: {'yes' if tta.get('used') else 'no'}. "
             "Rows: the ensemble scored on each single augmentation, then on their mean; best per column in bold.")
    return _p(intro) + _table(headers, rows, table_id="tta-table", row_classes=[""] * len(per_mode) + ["agg"])


def _resources_body(run: _Run) -> str:
    parts = []
    png = rp.resources_png(run.resources) if run.resources else None
    parts.append(_img(png, "resource use over time") if png else _na("resource log not available"))
    res = run.summary.get("resources")
    if res:
        rows = [[name, _num(v.get("mean"), 2), _num(v.get("min"), 2), _num(v.get("max"), 2)]
                for name, v in res.items() if isinstance(v, dict)]
        parts.append(_table(["field", "mean", "min", "max"], rows, table_id="resources-table"))
    else:
        parts.append(_na("resource summary not available"))
    if run.resources:
        parts.append(_p(f"{len(run.resources)} log records."))
    return "".join(parts)


def _misclassified_body(run: _Run) -> str:
    if run.predictions is None:
        return _na("predictions (eval_test.json / eval_val.json) not available")
    wrong = [p for p in run.predictions if isinstance(p, dict) and not p.get("correct", True)]
    wrong.sort(key=lambda p: -float(p.get("confidence") or 0.0))  # confidently wrong first
    n = len(run.predictions)
    split = "test" if run.pred_split == "test" else "validation"
    intro = f"{len(wrong)} of {n} {split} videos misclassified, most confident mistakes first."
    if run.pred_split != "test":
        intro = ("No test split: these are validation videos, which also chose checkpoints and TTA, "
                 "so they flatter the model. " + intro)
    if not wrong:
        return _p(intro)
    rows = [[i + 1, p.get("video_id", "?"), p.get("label", "?"), p.get("pred", "?"), _bar_cell(p.get("confidence"))]
            for i, p in enumerate(wrong)]
    table = _table(["#", "video", "true", "predicted", "confidence"], rows, table_id="misclassified-table")
    return _p(intro) + f'<div class="scroll">{table}</div>'


SECTIONS = (  # (id, heading, builder): ids are a stable interface (tests, links)
    ("config", "Configuration", _config_body),
    ("data", "Data", _data_body),
    ("curves", "Training curves", _curves_body),
    ("lr", "Learning-rate schedule", _lr_body),
    ("per-class", "Per-class metrics", _per_class_body),
    ("confusion", "Confusion matrix", _confusion_body),
    ("ensemble", "Ensemble vs members", _ensemble_body),
    ("tta", "Test-time augmentation", _tta_body),
    ("resources", "Resource use", _resources_body),
    ("misclassified", "Misclassified videos", _misclassified_body),
)


def _section(run: _Run, sid: str, title: str, build) -> str:
    try:
        body = build(run)
    except Exception as exc:  # noqa: BLE001 - one odd input must not cost the rest of the report
        body = _na(f"could not render this section ({type(exc).__name__}: {exc})")
    return f'<section id="{sid}"><h2>{_esc(title)}</h2>{body}</section>'


def _header(run: _Run) -> str:
    s = run.summary
    m, label = _final_metrics(run)
    cards = "".join(f'<div class="card"><div class="v">{_num((m or {}).get(k))}</div><div class="k">{_esc(n)}</div></div>'
                    for k, n in METRICS)
    finished = ""
    if (run.run_dir / "summary.json").exists():
        finished = datetime.fromtimestamp((run.run_dir / "summary.json").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    wall = s.get("wall_seconds")
    facts = [("run dir", str(run.run_dir)), ("finished", finished or "not finished / unknown"),
             ("report written", datetime.now().strftime("%Y-%m-%d %H:%M")),
             ("vidcls", f"{s.get('vidcls_version', '?')} (report {__version__})"),
             ("model", f"{s.get('model', '?')} x {len(s.get('members') or run.histories)} member(s)"),
             ("classes", str(len(run.classes)) if run.classes else "?"),
             ("wall time", f"{wall / 60:.1f} min" if isinstance(wall, (int, float)) else "-"),
             ("final model", (s.get("final") or {}).get("source", "?"))]
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts)
    nav = " ".join(f'<a href="#{sid}">{_esc(t)}</a>' for sid, t, _ in SECTIONS)
    return (f"<header><h1>vidcls run report: {_esc(run.run_dir.name)}</h1><dl>{dl}</dl>"
            f'<p class="sub">Final model on {_esc(label)}:</p><div class="cards">{cards}</div>'
            f"<nav>{nav}</nav></header>")


CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;
 background:#f4f6f9;color:#1d2733;line-height:1.45}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
header{background:#1f3a5f;color:#fff;padding:18px 24px;border-radius:8px;margin-top:12px}
header h1{margin:0 0 8px;font-size:24px}
header dl{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:2px 14px;margin:0;font-size:14px}
header dt{opacity:.7}header dd{margin:0;word-break:break-all}
.sub{margin:12px 0 6px;opacity:.8}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;color:#1f3a5f;border-radius:6px;padding:8px 18px;min-width:140px}
.card .v{font-size:28px;font-weight:600}.card .k{font-size:13px;color:#56657a}
nav{margin-top:12px;font-size:14px}nav a{color:#cfe0f5;margin-right:12px;text-decoration:none}
section{background:#fff;border-radius:8px;padding:6px 20px 16px;margin-top:16px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:19px;border-bottom:2px solid #e3e8ef;padding-bottom:6px;color:#1f3a5f}
table{border-collapse:collapse;font-size:13.5px;margin:8px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e3e8ef;text-align:left;vertical-align:top}
th{background:#eef2f7;position:sticky;top:0}
tbody tr:nth-child(even){background:#fafbfd}
td.num,td.bar{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.excluded{color:#8a94a3}tbody tr.agg,tbody tr.total{background:#f1f6fd}tr.agg td:first-child,tr.total{font-weight:600}
tr.gain{color:#35557d}tbody tr.final{background:#e3f4e8}td.bar{min-width:64px}tbody td:first-child{white-space:nowrap}
code{font-size:12.5px;background:#f1f3f6;padding:1px 4px;border-radius:3px}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.pair{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.pair img{max-width:49%}
.na{color:#9a5b00;font-style:italic}.choice{font-weight:600;color:#1c6b3a}
.scroll{max-height:640px;overflow:auto;display:inline-block}
"""
_CSS_MIN = re.sub(r"\s*\n\s*", "", CSS)  # one line: the page source stays compact


def render_report(run_dir: str | os.PathLike) -> str:
    """The report for ``run_dir`` as an HTML string (see :func:`write_report`)."""
    run = _load_run(Path(run_dir).resolve())
    sections = "".join(_section(run, sid, title, build) for sid, title, build in SECTIONS)
    title = html.escape(f"vidcls report - {run.run_dir.name}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<style>{_CSS_MIN}</style></head>"
            f"<body><main>{_header(run)}{sections}</main></body></html>\n")


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/report.html``: a single self-contained page summarising the run.

    Sections (``<section id=...>``): config, data, curves, lr, per-class, confusion, ensemble,
    tta, resources, misclassified; plus a header with the headline test numbers. PNG charts are
    embedded as base64 data URIs and there are no external references, so the file works offline.

    Args:
        run_dir: a ``vidcls train`` run directory. Only the directory must exist; each missing
            input (summary.json, eval_*.json, resource log, histories) shows as "not available".

    Returns:
        The path of the written report.

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    return atomic_write_text(run_dir / "report.html", render_report(run_dir))
