"""PNG charts for the HTML run report (:mod:`vidcls.reporting.report`).

Same approach as :mod:`vidcls.reporting.plots`: figures are :class:`matplotlib.figure.Figure` objects with an
Agg canvas, never registered with pyplot, so rendering is headless and leaks no global figures.
Every function returns PNG bytes; the report embeds them as base64 data URIs. Text that comes
from the run's data (class names, log tags) is drawn literally (:data:`~vidcls.reporting.plots.LITERAL`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

from .plots import LITERAL, MAX_NAMED_CLASSES, _series, epoch_axis, is_multilabel_history, new_figure, to_png

MAX_ANNOTATED_CELLS = 30  # above this many classes, numbers in confusion cells become unreadable


def _mark_best(ax: Axes, epochs: list[int], best_epoch: int | None) -> None:
    if best_epoch is not None and best_epoch in epochs:
        ax.axvline(best_epoch, color="red", linestyle="--", alpha=0.6, label=f"best epoch {best_epoch}")


# (history key, legend label) of a multi-label member's right-hand panel; val mAP (the first) is starred
MULTILABEL_SCORE_LINES = (
    ("val_map", "val mAP"),
    ("val_gap", "val GAP@20"),
    ("val_hit_at_1", "val hit@1"),
    ("train_hit_at_1", "train hit@1"),
    ("val_f1_micro", "val F1 micro (at 0.5)"),
)


def _score_lines(
    ax: Axes, epochs: list[int], hist: list[dict], marker: str | None
) -> tuple[list[float], str]:
    """The right-hand panel's lines; returns the starred series and the panel's name."""
    if is_multilabel_history(hist):
        for key, label in MULTILABEL_SCORE_LINES:
            style = ":" if key.startswith("train") else "-"
            ax.plot(epochs, _series(hist, key), marker=marker, ms=3, label=label, linestyle=style)
        return _series(hist, MULTILABEL_SCORE_LINES[0][0]), "ranking"
    ax.plot(epochs, _series(hist, "train_acc"), marker=marker, ms=3, label="train")
    val_acc = _series(hist, "val_acc")
    ax.plot(epochs, val_acc, marker=marker, ms=3, label="val")
    ax.plot(epochs, _series(hist, "val_f1_macro"), marker=marker, ms=3, label="val F1 macro", alpha=0.7)
    return val_acc, "accuracy"


def _member_curves(loss_ax: Axes, acc_ax: Axes, title: str, hist: list[dict], best: int | None) -> None:
    """One member's row: loss on the left, accuracy and macro F1 on the right (a multi-label history:
    mAP, GAP@20, hit@1 and micro F1), best epoch marked."""
    if not hist:
        loss_ax.text(0.5, 0.5, "no history", ha="center", va="center", transform=loss_ax.transAxes)
        return
    epochs = [int(h["epoch"]) for h in hist]
    marker = "o" if len(hist) <= 20 else None  # markers help short runs, clutter long ones
    loss_ax.plot(epochs, _series(hist, "train_loss"), marker=marker, ms=3, label="train")
    loss_ax.plot(epochs, _series(hist, "val_loss"), marker=marker, ms=3, label="val")
    val_acc, score_name = _score_lines(acc_ax, epochs, hist, marker)
    acc_ax.set_ylim(0.0, 1.02)
    for ax, name in ((loss_ax, "loss"), (acc_ax, score_name)):
        _mark_best(ax, epochs, best)
        epoch_axis(ax, epochs)
        ax.set_title(f"{title} - {name}", fontsize=11)
        ax.legend(fontsize=8, loc="best")
    if best in epochs:
        acc_ax.scatter([best], [val_acc[epochs.index(best)]], marker="*", s=160, color="red", zorder=5)


def curves_png(histories: list[list[dict]], best_epochs: list[int | None]) -> bytes:
    """Loss and accuracy per member (one row each), with each member's best epoch marked.

    Args:
        histories: per member, the per-epoch dicts of ``members/<i>/history.json`` (may be empty).
        best_epochs: per member, the selected epoch (or None).

    Returns:
        PNG bytes.
    """
    n = max(1, len(histories))
    height = 3.0 * n + 0.6
    fig = new_figure(13.0, height)
    axes = fig.subplots(n, 2, squeeze=False)
    fig.subplots_adjust(
        left=0.06, right=0.98, bottom=0.6 / height + 0.04, top=1 - 0.5 / height, hspace=0.55, wspace=0.18
    )
    for i, (hist, best) in enumerate(zip(histories, best_epochs)):
        _member_curves(axes[i][0], axes[i][1], f"member {i}", hist, best)
    return to_png(fig)


def lr_png(histories: list[list[dict]]) -> bytes:
    """Learning rate over epochs, one line per member, log y axis when every value is positive."""
    fig = new_figure(13.0, 3.6)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.16, top=0.9)
    all_lr: list[float] = []
    lines = [(f"member {i}", h) for i, h in enumerate(histories) if h]
    # Members share the schedule unless one stopped early; identical lines would just hide each other.
    if len(lines) > 1 and all(_series(h, "lr") == _series(lines[0][1], "lr") for _, h in lines):
        lines = [(f"all {len(lines)} members (identical)", lines[0][1])]
    for label, hist in lines:
        epochs = [int(h["epoch"]) for h in hist]
        lrs = _series(hist, "lr")
        all_lr += lrs
        ax.plot(epochs, lrs, marker="o" if len(hist) <= 30 else None, ms=3, label=label, alpha=0.85)
        epoch_axis(ax, epochs)
    # log of 0 is undefined: a schedule that reaches 0 would blank a log axis
    if all_lr and all(v > 0 for v in all_lr if not math.isnan(v)):
        ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedule")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return to_png(fig)


def per_class_png(names: list[str], f1: list[float], precision: list[float], recall: list[float]) -> bytes:
    """Horizontal F1 bars per class (worst at the top) with precision and recall as markers.

    Horizontal bars keep class names readable at any class count; the height grows with it.
    """
    n = len(names)
    order = sorted(
        range(n), key=lambda i: (f1[i], i)
    )  # worst first (ties in class order): the ones worth reading
    height = max(2.6, 0.32 * n + 1.2)
    fig = new_figure(11.0, height)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.22, right=0.97, bottom=0.6 / height + 0.03, top=1 - 0.45 / height)
    ys = list(range(n))
    ax.barh(ys, [f1[i] for i in order], color="tab:blue", alpha=0.8, label="F1")
    ax.scatter(
        [precision[i] for i in order], ys, marker="|", s=160, color="tab:orange", zorder=5, label="precision"
    )
    ax.scatter([recall[i] for i in order], ys, marker="x", s=40, color="tab:green", zorder=5, label="recall")
    ax.set_yticks(ys)
    ax.set_yticklabels(
        [names[i] for i in order] if n <= 4 * MAX_NAMED_CLASSES else [str(i) for i in order],
        fontsize=max(6.0, min(10.0, 400.0 / max(n, 1))),
        **LITERAL,
    )
    ax.invert_yaxis()  # worst class at the top
    ax.set_xlim(0.0, 1.05)
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(True, axis="x", alpha=0.3)
    # Above the axes: inside, the legend would hide the markers of classes with recall near 1.
    ax.legend(fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return to_png(fig)


def _annotate_cells(ax: Axes, matrix: list[list[float]], *, normalised: bool, vmax: float) -> None:
    n = len(matrix)
    size = max(5.0, min(11.0, 180.0 / n))
    for r, row in enumerate(matrix):
        for c, v in enumerate(row):
            if v == 0 and n > 8:  # a sea of zeros hides the few cells that matter
                continue
            text = f"{v:.2f}" if normalised else f"{int(v)}"
            # white on dark cells, black on light ones, so every number stays legible
            ax.text(
                c,
                r,
                text,
                ha="center",
                va="center",
                fontsize=size,
                color="white" if v > 0.55 * vmax else "black",
            )


def confusion_png(matrix: list[list[float]], names: list[str], *, normalised: bool, title: str) -> bytes:
    """One confusion-matrix heatmap (rows = true class), numbers in cells while they stay legible."""
    n = len(names)
    side = min(14.0, max(4.6, 0.45 * n + 2.2))
    fig = new_figure(side + 0.8, side)
    ax = fig.subplots()
    vmax = 1.0 if normalised else max(1.0, max((max(r) for r in matrix), default=1.0))
    im = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.03)
    if n <= MAX_ANNOTATED_CELLS:
        _annotate_cells(ax, matrix, normalised=normalised, vmax=vmax)
    ticks = list(range(n))
    labels = names if n <= MAX_NAMED_CLASSES else [str(i) for i in ticks]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    tick_size = max(5.0, min(10.0, 250.0 / max(n, 1)))
    ax.set_xticklabels(
        labels, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=tick_size, **LITERAL
    )
    ax.set_yticklabels(labels, fontsize=tick_size, **LITERAL)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, **LITERAL)
    fig.tight_layout()
    return to_png(fig)


def ap_png(names: list[str], ap: list[float], *, gap_after: int | None = None, gap_text: str = "") -> bytes:
    """Horizontal average-precision bars in the order given (best first, at the top), each labelled with
    its value; with ``gap_after`` a blank row after that many bars carries ``gap_text`` (the classes
    left out between the best and the worst).

    Args:
        names: the classes, in display order (long names are shortened in the chart).
        ap: their APs in [0, 1], same order.
        gap_after: the number of bars above the gap; None: no gap.
        gap_text: what the gap row says.

    Returns:
        PNG bytes.
    """
    n = len(names)
    ys = [i + (1 if gap_after is not None and i >= gap_after else 0) for i in range(n)]
    rows = n + (1 if gap_after is not None else 0)
    height = max(2.6, 0.28 * rows + 1.2)
    fig = new_figure(11.0, height)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.6 / height + 0.03, top=1 - 0.3 / height)
    ax.barh(ys, ap, color="tab:blue", alpha=0.8)
    for y, v in zip(ys, ap):
        ax.text(min(v, 1.0) + 0.01, y, f"{v:.3f}", va="center", fontsize=7)
    if gap_after is not None:
        ax.axhline(gap_after, color="gray", linestyle=":", alpha=0.8)
        box = {"facecolor": "white", "edgecolor": "none", "pad": 1.0}
        ax.text(
            0.5,
            gap_after,
            gap_text,
            ha="center",
            va="center",
            fontsize=9,
            color="dimgray",
            bbox=box,
            **LITERAL,
        )
    ax.set_yticks(ys)
    shown = [c if len(c) <= 32 else c[:31] + "\u2026" for c in names]
    ax.set_yticklabels(shown, fontsize=max(6.0, min(10.0, 400.0 / max(n, 1))), **LITERAL)
    ax.set_xlim(0.0, 1.1)
    ax.set_ylim(rows - 0.5, -0.5)  # best at the top
    ax.set_xlabel("average precision")
    ax.grid(True, axis="x", alpha=0.3)
    return to_png(fig)


def cooccurrence_png(counts: list[list[float]], names: list[str], *, title: str) -> bytes:
    """A label co-occurrence heat map: cell (r, c) coloured by the share of the videos carrying class r
    that also carry class c (the diagonal is 1), and numbered with the count of videos carrying both
    (the diagonal: the class's videos).

    Args:
        counts: the (k, k) symmetric counts matrix, k up to about 20.
        names: the k classes.
        title: the chart title.

    Returns:
        PNG bytes.
    """
    k = len(names)
    share = [[v / row[r] if row[r] else 0.0 for v in row] for r, row in enumerate(counts)]
    side = min(13.0, max(6.0, 0.5 * k + 2.6))
    fig = new_figure(side + 1.4, side)
    ax = fig.subplots()
    # fixed margins, not tight_layout (which draws the whole figure an extra time)
    fig.subplots_adjust(left=2.2 / (side + 1.4), right=0.88, bottom=1.7 / side, top=1 - 0.4 / side)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.03, label="share of the row class's videos")
    size = max(5.0, min(10.0, 160.0 / max(k, 1)))
    for r, row in enumerate(counts):
        for c, v in enumerate(row):
            if v:
                color = "white" if share[r][c] > 0.55 else "black"
                ax.text(c, r, f"{int(v)}", ha="center", va="center", fontsize=size, color=color)
    ticks = list(range(k))
    shown = [c if len(c) <= 20 else c[:19] + "\u2026" for c in names]
    tick_size = max(5.0, min(10.0, 250.0 / max(k, 1)))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    rotate: dict[str, Any] = {"rotation": 45, "ha": "right"} if k > 3 else {}
    ax.set_xticklabels(shown, fontsize=tick_size, **rotate, **LITERAL)
    ax.set_yticklabels(shown, fontsize=tick_size, **LITERAL)
    ax.set_xlabel("also carries")
    ax.set_ylabel("videos carrying")
    ax.set_title(title, **LITERAL)
    return to_png(fig)


def _parse_time(stamp: object) -> datetime | None:
    try:  # Python 3.10's fromisoformat does not accept a trailing "Z"
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None


def _elapsed(records: list[dict]) -> tuple[list[float], list[dict], str]:
    """Records with a readable timestamp, their time since the first one, and the unit of that time."""
    points = [
        (t, r) for r in records if isinstance(r, dict) and (t := _parse_time(r.get("timestamp"))) is not None
    ]
    if not points:
        return [], [], ""
    secs = [(t - points[0][0]).total_seconds() for t, _ in points]
    # minutes for short runs, hours for the multi-hour runs the monitor was built for
    scale, unit = (
        (3600.0, "hours")
        if secs[-1] > 3 * 3600
        else (60.0, "minutes")
        if secs[-1] > 120
        else (1.0, "seconds")
    )
    return [s / scale for s in secs], [r for _, r in points], unit


def _cpu_lines(ax: Axes, xs: list[float], rows: list[dict], marker: str | None) -> None:
    cpu = _series(rows, "cpu_percent")
    ax.plot(xs, cpu, marker=marker, ms=3, color="tab:red", label="CPU %")
    ax.set_ylabel("CPU %")
    # a flat 100 % line would else zoom to 96..104
    ax.set_ylim(0.0, max([105.0] + [v + 5.0 for v in cpu if not math.isnan(v)]))


def _memory_lines(ax: Axes, xs: list[float], rows: list[dict], marker: str | None) -> None:
    total = max((v for v in _series(rows, "ram_total_gb") if not math.isnan(v)), default=math.nan)
    ram_label = f"RAM used (of {total:.1f} GB)" if not math.isnan(total) else "RAM used"
    for key, label in (
        ("ram_used_gb", ram_label),
        ("gpu_allocated_gb", "GPU allocated"),
        ("gpu_reserved_gb", "GPU reserved"),
        ("gpu_max_allocated_gb", "GPU max allocated"),
    ):
        ys = _series(rows, key)
        # A CPU-only run logs GPU zeros; four lines stacked on 0 only add legend noise.
        if key != "ram_used_gb" and not any(v > 0 for v in ys if not math.isnan(v)):
            continue
        ax.plot(xs, ys, marker=marker, ms=3, label=label)
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("GB")


def _mark_member_starts(cpu_ax: Axes, mem_ax: Axes, xs: list[float], rows: list[dict]) -> None:
    for x, r in zip(xs, rows):
        tag = str(r.get("tag") or "")
        if tag.startswith("member ") and tag.endswith(" start"):
            for ax in (cpu_ax, mem_ax):
                ax.axvline(x, color="gray", linestyle="--", alpha=0.7)
            # above the axes, where the label cannot sit on a CPU line pinned at 100 %
            cpu_ax.annotate(
                tag[: -len(" start")],
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, 2),
                textcoords="offset points",
                fontsize=8,
                color="dimgray",
                **LITERAL,
            )


def resources_png(records: list[dict]) -> bytes | None:
    """CPU % and memory (RAM, GPU) over elapsed time, member starts marked.

    Args:
        records: the resource monitor's log (``results/resource_utilization_log.json``).

    Returns:
        PNG bytes, or None when no record has a readable timestamp.
    """
    xs, rows, unit = _elapsed(records)
    if not xs:
        return None
    fig = new_figure(13.0, 6.0)
    cpu_ax, mem_ax = fig.subplots(2, 1, sharex=True)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1, top=0.88, hspace=0.15)
    marker = "o" if len(xs) <= 50 else None
    _cpu_lines(cpu_ax, xs, rows, marker)
    _memory_lines(mem_ax, xs, rows, marker)
    mem_ax.set_xlabel(f"{unit} since start")
    _mark_member_starts(cpu_ax, mem_ax, xs, rows)
    for ax in (cpu_ax, mem_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Resource use over time (dashed lines: member starts)", fontsize=12)
    return to_png(fig)
