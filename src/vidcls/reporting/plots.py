"""Training dashboard: one PNG with loss, accuracy, F1, learning rate, per-class F1 and epoch time.

A multi-label run's history (rows with ``val_map`` / ``val_ap_per_class``) gets its own panels in the
same grid: loss, ranking (val mAP, GAP@20, hit@1, train hit@1), label sets at threshold 0.5 (F1 micro
and macro, exact-set accuracy), learning rate, per-class validation AP and epoch time.

Figures are built with :class:`matplotlib.figure.Figure` and never registered with pyplot, so no
GUI backend is touched (works headless, whatever ``MPLBACKEND`` says), no global figure list
grows over a 150-epoch run, and rendering is safe from a background thread.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..utils.fs import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FIGSIZE = (15.0, 8.0)  # inches
DPI = 80  # 1200 x 640 px: readable, and small enough to render in well under 0.5 s
MAX_NAMED_CLASSES = 40  # above this the per-class panel shows class indices, not names
MAX_AP_BARS = 30  # a multi-label dashboard's AP panel: above this many classes only the lowest APs
SET_THRESHOLD = 0.5  # the threshold training's multi-label validation rows score label sets at
# Text properties for strings that come from data (class names, tags, titles): drawn as written.
# Without them a "$" starts matplotlib mathtext, and a class named "$5_to_$10" fails the whole figure.
LITERAL: dict[str, Any] = {"usetex": False, "parse_math": False}


def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas, never registered with pyplot."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    # Figure objects outside pyplot are freed by GC; clearing drops the artists right away.
    fig.clear()
    return buf.getvalue()


def epoch_axis(ax: Axes, epochs: list[int]) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 0.96" ticks
    ax.grid(True, alpha=0.3)
    if len(epochs) == 1:  # a single point would otherwise sit on a zero-width axis
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


def _series(history: list[dict], key: str) -> list[float]:
    # A missing or None value becomes NaN so matplotlib leaves a gap instead of failing.
    out: list[float] = []
    for h in history:
        v = h.get(key)
        out.append(float(v) if v is not None else math.nan)
    return out


def _argmax(values: list[float]) -> int | None:
    best: int | None = None
    for i, v in enumerate(values):
        if not math.isnan(v) and (best is None or v > values[best]):
            best = i
    return best


@dataclass
class _Dash:
    """What every dashboard panel reads: the history, its epochs and the class names."""

    history: list[dict]
    class_names: list[str]

    @property
    def epochs(self) -> list[int]:
        return [int(h["epoch"]) for h in self.history]

    @property
    def marker(self) -> str | None:
        # A single point draws no line; markers keep a 1-epoch history visible.
        return "o" if len(self.history) == 1 else None

    def series(self, key: str) -> list[float]:
        return _series(self.history, key)


def is_multilabel_history(history: list[dict]) -> bool:
    """Whether ``history`` holds a multi-label run's rows (``val_map``, ``val_ap_per_class``)."""
    return any(isinstance(h, dict) and ("val_map" in h or "val_ap_per_class" in h) for h in history)


def _check_history(history: list[dict], class_names: list[str]) -> None:
    if not history:
        raise ValueError("history is empty: nothing to plot")
    key = "val_ap_per_class" if is_multilabel_history(history) else "val_f1_per_class"
    for h in history:
        per_class = h.get(key)
        if per_class is not None and len(per_class) != len(class_names):
            raise ValueError(
                f"epoch {h.get('epoch')}: {key} has {len(per_class)} values "
                f"for {len(class_names)} class names"
            )


def _loss_panel(ax: Axes, d: _Dash) -> None:
    ax.plot(d.epochs, d.series("train_loss"), marker=d.marker, label="train")
    ax.plot(d.epochs, d.series("val_loss"), marker=d.marker, label="val")
    ax.set_title("Loss")


def _accuracy_panel(ax: Axes, d: _Dash) -> None:
    epochs, val_acc = d.epochs, d.series("val_acc")
    ax.plot(epochs, d.series("train_acc"), marker=d.marker, label="train")
    ax.plot(epochs, val_acc, marker=d.marker, label="val")
    best = _argmax(val_acc)
    if best is not None:
        ax.scatter(
            [epochs[best]],
            [val_acc[best]],
            marker="*",
            s=180,
            color="red",
            zorder=5,
            label=f"best val {val_acc[best]:.3f} (ep {epochs[best]})",
        )
    ax.set_title("Accuracy")
    ax.set_ylim(0.0, 1.02)


def _f1_panel(ax: Axes, d: _Dash) -> None:
    ax.plot(d.epochs, d.series("val_f1_weighted"), marker=d.marker, label="weighted")
    ax.plot(d.epochs, d.series("val_f1_macro"), marker=d.marker, label="macro")
    ax.plot(d.epochs, d.series("val_f1_worst"), marker=d.marker, label="worst class")
    ax.set_title("Validation F1")
    ax.set_ylim(0.0, 1.02)


def _lr_panel(ax: Axes, d: _Dash) -> None:
    lrs = d.series("lr")
    ax.plot(d.epochs, lrs, marker=d.marker, color="tab:purple")
    # Log scale needs positive values; a schedule that hits 0 would otherwise blank the panel.
    if any(v > 0 for v in lrs):
        ax.set_yscale("log")
    ax.set_title("Learning rate")


def _class_axis(ax: Axes, d: _Dash, f1: list[float]) -> None:
    """Class names under the bars, or indices plus the worst names when there are too many to read."""
    n_cls = len(d.class_names)
    xs = list(range(n_cls))
    if n_cls <= MAX_NAMED_CLASSES:
        ax.set_xticks(xs)
        ax.set_xticklabels(d.class_names, rotation=90, fontsize=max(5.0, min(9.0, 250.0 / n_cls)), **LITERAL)
        return
    # Beyond ~40 names the tick labels overlap into a black band; show indices instead and
    # name the worst classes, which are the ones worth reading.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("class index")
    worst = sorted(xs, key=lambda i: f1[i])[:5]
    # Below the axis label, where it cannot collide with the bars or the legend.
    ax.text(
        0.5,
        -0.2,
        "worst: " + ", ".join(f"{d.class_names[i]} {f1[i]:.2f}" for i in worst),
        transform=ax.transAxes,
        va="top",
        ha="center",
        fontsize=7,
        **LITERAL,
    )


def _per_class_panel(ax: Axes, d: _Dash) -> None:
    last = d.epochs[-1]
    latest = d.history[-1].get("val_f1_per_class")
    n_cls = len(d.class_names)
    if latest is not None and n_cls:
        xs = list(range(n_cls))
        f1 = [float(v) for v in latest]
        ax.bar(xs, f1, color="tab:blue", label=f"epoch {last}")
        best = _argmax(d.series("val_f1_weighted"))
        best_pc = d.history[best].get("val_f1_per_class") if best is not None else None
        if best is not None and best_pc is not None and best != len(d.history) - 1:
            ax.scatter(
                xs,
                [float(v) for v in best_pc],
                marker="_",
                s=200,
                color="red",
                zorder=5,
                label=f"best weighted F1 (ep {d.epochs[best]})",
            )
        _class_axis(ax, d, f1)
        ax.set_xlim(-0.6, n_cls - 0.4)
    ax.set_title(f"Per-class val F1 (epoch {last})")
    ax.set_ylim(0.0, 1.05)


def _epoch_time_panel(ax: Axes, d: _Dash) -> None:
    secs = d.series("epoch_seconds")
    # width=1 with no edges: 150 thin bars otherwise alias into an uneven comb at 80 dpi.
    ax.bar(d.epochs, secs, width=1.0, linewidth=0, color="tab:gray")
    total = sum(v for v in secs if not math.isnan(v))
    ax.set_title(f"Epoch time (s) - total {total / 60:.1f} min")


# --- multi-label panels (rows of ``training.loop._multilabel_row``) ---------------------------------


def _ranking_panel(ax: Axes, d: _Dash) -> None:
    """Threshold-free ranking scores: val mAP (best epoch starred), GAP@20, hit@1 and train hit@1."""
    epochs, val_map = d.epochs, d.series("val_map")
    ax.plot(epochs, val_map, marker=d.marker, label="val mAP")
    ax.plot(epochs, d.series("val_gap"), marker=d.marker, label="val GAP@20")
    ax.plot(epochs, d.series("val_hit_at_1"), marker=d.marker, label="val hit@1")
    ax.plot(epochs, d.series("train_hit_at_1"), marker=d.marker, linestyle=":", label="train hit@1")
    best = _argmax(val_map)
    if best is not None:
        ax.scatter(
            [epochs[best]],
            [val_map[best]],
            marker="*",
            s=180,
            color="red",
            zorder=5,
            label=f"best val mAP {val_map[best]:.3f} (ep {epochs[best]})",
        )
    ax.set_title("Ranking (no threshold)")
    ax.set_ylim(0.0, 1.02)


def _set_panel(ax: Axes, d: _Dash) -> None:
    ax.plot(d.epochs, d.series("val_f1_micro"), marker=d.marker, label="F1 micro")
    ax.plot(d.epochs, d.series("val_f1_macro"), marker=d.marker, label="F1 macro")
    ax.plot(d.epochs, d.series("val_exact_set_accuracy"), marker=d.marker, label="exact set")
    ax.set_title(f"Validation label sets at threshold {SET_THRESHOLD:g}")
    ax.set_ylim(0.0, 1.02)


def _ap_values(row: dict) -> list[float]:
    """A row's per-class validation AP, NaN where it is None (no validation video carries the class)."""
    values = row.get("val_ap_per_class") or []
    return [float(v) if isinstance(v, (int, float)) else math.nan for v in values]


def _ap_shown(latest: list[float]) -> list[int]:
    """The classes the AP panel shows: all (in class order) up to ``MAX_AP_BARS``, else the lowest
    defined APs, lowest first."""
    if len(latest) <= MAX_AP_BARS:
        return list(range(len(latest)))
    defined = [i for i, v in enumerate(latest) if not math.isnan(v)]
    return sorted(defined, key=lambda i: (latest[i], i))[:MAX_AP_BARS]


def _ap_panel(ax: Axes, d: _Dash) -> None:
    """Per-class val AP of the latest epoch (bars) and of the best val mAP epoch (red ticks); with more
    than ``MAX_AP_BARS`` classes only the lowest ones, the ones worth reading. A class that no validation
    video carries has no AP: "n/a" in its place, and the title counts them."""
    last, latest = d.epochs[-1], _ap_values(d.history[-1])
    shown, xs = _ap_shown(latest), []
    missing = sum(math.isnan(v) for v in latest)
    title = f"Per-class val AP (epoch {last})"
    if len(latest) > MAX_AP_BARS:
        title += f": the {len(shown)} lowest of {len(latest)} classes"
    if shown:
        xs = list(range(len(shown)))
        ax.bar(xs, [0.0 if math.isnan(latest[i]) else latest[i] for i in shown], label=f"epoch {last}")
        for x, i in zip(xs, shown):
            if math.isnan(latest[i]):
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", rotation=90, fontsize=7)
        best = _argmax(d.series("val_map"))
        best_ap = _ap_values(d.history[best]) if best is not None else []
        if best != len(d.history) - 1 and len(best_ap) == len(latest):
            label = f"best val mAP (ep {d.epochs[best]})" if best is not None else ""
            ax.scatter(xs, [best_ap[i] for i in shown], marker="_", s=200, color="red", zorder=5, label=label)
        ax.set_xticks(xs)
        size = max(5.0, min(9.0, 250.0 / len(shown)))
        ax.set_xticklabels([d.class_names[i] for i in shown], rotation=90, fontsize=size, **LITERAL)
        ax.set_xlim(-0.6, len(shown) - 0.4)
    else:
        ax.text(0.5, 0.5, "no per-class AP", transform=ax.transAxes, ha="center", va="center")
    if missing:
        title += f"\n{missing} of {len(latest)} classes: no validation video (no AP)"
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0.0, 1.05)


_PANELS = ((_loss_panel, _accuracy_panel, _f1_panel), (_lr_panel, _per_class_panel, _epoch_time_panel))
_ML_PANELS = (
    (_loss_panel, _ranking_panel, _set_panel),
    (_lr_panel, _ap_panel, _epoch_time_panel),
)


def _render_png(history: list[dict], class_names: list[str], title: str | None) -> bytes:
    _check_history(history, class_names)
    d = _Dash(history, list(class_names))
    fig = new_figure(*FIGSIZE)
    axes = fig.subplots(2, 3)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.14, top=0.9, wspace=0.22, hspace=0.38)
    fig.suptitle(title or f"Training dashboard - epoch {d.epochs[-1]}", fontsize=14, **LITERAL)
    for row, panels in zip(axes, _ML_PANELS if is_multilabel_history(history) else _PANELS):
        for ax, draw in zip(row, panels):
            draw(ax, d)
            per_class = draw in (_per_class_panel, _ap_panel)
            # Vertical grid lines would draw one line per class tick in the per-class panel.
            ax.grid(True, axis="y" if per_class else "both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="best")
            if not per_class:
                epoch_axis(ax, d.epochs)
    return to_png(fig)


def plot_dashboard(
    history: list[dict], class_names: list[str], out_path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Render the training dashboard to a PNG (written atomically).

    Args:
        history: one dict per epoch (keys epoch, lr, train_loss, train_acc, val_loss, val_acc,
            val_f1_weighted, val_f1_macro, val_f1_worst, epoch_seconds, val_f1_per_class; a multi-label
            run's: epoch, lr, train_loss, train_hit_at_1, val_loss, val_map, val_gap, val_hit_at_1,
            val_f1_micro, val_f1_macro, val_exact_set_accuracy, epoch_seconds, val_ap_per_class with
            None for a class no validation video carries); missing scalar keys leave gaps.
        class_names: one name per entry of ``val_f1_per_class`` (``val_ap_per_class``).
        out_path: PNG path; parent directories are created.
        title: figure title (default: "Training dashboard - epoch N").

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: empty history, or a ``val_f1_per_class`` (``val_ap_per_class``) whose length
            differs from ``class_names``.
    """
    return atomic_write_bytes(out_path, _render_png(history, class_names, title))


def save_epoch_plots(history: list[dict], class_names: list[str], plots_dir: str | os.PathLike) -> Path:
    """Write ``plots_dir/current.png`` and ``plots_dir/epoch_NNN.png`` (NNN = last epoch).

    Args:
        history: as for :func:`plot_dashboard`.
        class_names: as for :func:`plot_dashboard`.
        plots_dir: output directory (created if missing).

    Returns:
        The path of the ``epoch_NNN.png`` file.

    Raises:
        ValueError: as for :func:`plot_dashboard`.
    """
    png = _render_png(history, class_names, None)  # render once, write twice
    plots_dir = Path(plots_dir)
    epoch_path = atomic_write_bytes(plots_dir / f"epoch_{int(history[-1]['epoch']):03d}.png", png)
    atomic_write_bytes(plots_dir / "current.png", png)
    return epoch_path
