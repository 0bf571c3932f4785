"""The spans of a segments record (:mod:`vidcls.predict.segments`) as coloured bands on a timeline.

One colour per class, by the class's position in the run's class list (the record's
``probabilities`` keep that order), so a class has the same colour in every picture of a run. The
palette leaves out the orange and red of the attention strip; past ``len(PALETTE)`` classes the
colours repeat. A single-label record has one band row (its spans partition the video); a
multi-label record one lane per class present in its spans, in class order, top to bottom (its
spans may overlap). The legend lists the classes present, drawn literally (no mathtext).
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..reporting.plots import LITERAL

__all__ = ["PALETTE", "class_order", "class_colors", "has_spans", "lanes", "span_x", "draw_bands", "legend"]

# tab10 without orange and red (the attention bars), then tab20's light tones of the same
PALETTE = (
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#98df8a",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
)
LEGEND_ROW = 0.045  # figure height per legend entry
LEGEND_NAME = 24  # characters of a class name in the legend


def has_spans(record: dict) -> bool:
    """Whether ``record`` has spans to draw (a segments record that was predicted)."""
    return bool(record.get("spans"))


def class_order(record: dict) -> list[str]:
    """The run's classes in their order (the record's ``probabilities``), then any span label not there."""
    order = list(record.get("probabilities") or {})
    seen = set(order)
    for span in record.get("spans") or []:
        if span["label"] not in seen:
            seen.add(span["label"])
            order.append(span["label"])
    return order


def class_colors(classes: Sequence[str]) -> dict[str, str]:
    """{class: hex colour} by the class's position in ``classes``."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


def lanes(record: dict) -> list[str | None]:
    """The band rows, top to bottom: [None] (one row) single-label, the classes present multi-label."""
    if record.get("task") != "multilabel":
        return [None]
    present = {s["label"] for s in record.get("spans") or []}
    return [c for c in class_order(record) if c in present]


def span_x(span: dict, seconds: bool) -> tuple[float, float]:
    """(start, end) of ``span`` on the time axis: seconds, or frame positions (end exclusive)."""
    if seconds:
        return float(span["start_s"]), float(span["end_s"])
    return float(span["start_frame"]), float(span["end_frame"])


def draw_bands(fig: Figure, rect: tuple[float, float, float, float], record: dict, *, seconds: bool) -> Axes:
    """An axes at ``rect`` (figure fractions) with the record's spans as bands, one row per lane.

    The caller sets its x limits to those of the strip it stands over.
    """
    ax = fig.add_axes(rect)
    rows = lanes(record)
    colors = class_colors(class_order(record))
    for span in record.get("spans") or []:
        row = rows.index(None if rows == [None] else span["label"])
        a, b = span_x(span, seconds)
        ax.broken_barh([(a, b - a)], (len(rows) - 1 - row, 1.0), facecolors=colors[span["label"]], lw=0)
    ax.set_ylim(0, len(rows))
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return ax


def legend(fig: Figure, record: dict, *, left: float, top: float, bottom: float) -> None:
    """The classes of the record's spans, in class order, from ``top`` down to ``bottom`` at ``left``."""
    colors = class_colors(class_order(record))
    present = {s["label"] for s in record.get("spans") or []}
    names = [c for c in class_order(record) if c in present]
    room = max(1, int((top - bottom) / LEGEND_ROW))
    shown = names if len(names) <= room else names[: room - 1]
    y = top
    for name in shown:
        fig.patches.append(
            Rectangle((left, y - 0.028), 0.012, 0.028, transform=fig.transFigure, color=colors[name], lw=0)
        )
        text = name if len(name) <= LEGEND_NAME else name[: LEGEND_NAME - 1] + "…"
        fig.text(left + 0.016, y - 0.014, text, fontsize=8, va="center", **LITERAL)
        y -= LEGEND_ROW
    if len(shown) < len(names):
        fig.text(left, y - 0.014, f"+ {len(names) - len(shown)} more", fontsize=8, va="center")
