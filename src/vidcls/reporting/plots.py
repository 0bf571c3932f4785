"""Training dashboard: one PNG with loss, accuracy, F1, learning rate, per-class F1 and epoch time.

Figures are built with :class:`matplotlib.figure.Figure` and never registered with pyplot, so no
GUI backend is touched (works headless, whatever ``MPLBACKEND`` says), no global figure list
grows over a 150-epoch run, and rendering is safe from a background thread.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..utils.fs import atomic_write_bytes

FIGSIZE = (15.0, 8.0)  # inches
DPI = 80  # 1200 x 640 px: readable, and small enough to render in well under 0.5 s
MAX_NAMED_CLASSES = 40  # above this the per-class panel shows class indices, not names


def _series(history: list[dict], key: str) -> list[float]:
    # A missing or None value becomes NaN so matplotlib leaves a gap instead of failing.
    out = []
    for h in history:
        v = h.get(key)
        out.append(float(v) if v is not None else math.nan)
    return out


def _argmax(values: list[float]) -> int | None:
    best = None
    for i, v in enumerate(values):
        if not math.isnan(v) and (best is None or v > values[best]):
            best = i
    return best


def _render_png(history: list[dict], class_names: list[str], title: str | None) -> bytes:
    if not history:
        raise ValueError("history is empty: nothing to plot")
    n_cls = len(class_names)
    for h in history:
        per_class = h.get("val_f1_per_class")
        if per_class is not None and len(per_class) != n_cls:
            raise ValueError(
                f"epoch {h.get('epoch')}: val_f1_per_class has {len(per_class)} values "
                f"for {n_cls} class names"
            )

    epochs = [int(h["epoch"]) for h in history]
    # A single point draws no line; markers keep a 1-epoch history visible.
    marker = "o" if len(history) == 1 else None

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.14, top=0.9, wspace=0.22, hspace=0.38)
    latest = history[-1]
    fig.suptitle(title or f"Training dashboard - epoch {epochs[-1]}", fontsize=14)

    ax = axes[0, 0]
    ax.plot(epochs, _series(history, "train_loss"), marker=marker, label="train")
    ax.plot(epochs, _series(history, "val_loss"), marker=marker, label="val")
    ax.set_title("Loss")

    ax = axes[0, 1]
    val_acc = _series(history, "val_acc")
    ax.plot(epochs, _series(history, "train_acc"), marker=marker, label="train")
    ax.plot(epochs, val_acc, marker=marker, label="val")
    best_acc = _argmax(val_acc)
    if best_acc is not None:
        ax.scatter([epochs[best_acc]], [val_acc[best_acc]], marker="*", s=180, color="red", zorder=5,
                   label=f"best val {val_acc[best_acc]:.3f} (ep {epochs[best_acc]})")
    ax.set_title("Accuracy")
    ax.set_ylim(0.0, 1.02)

    ax = axes[0, 2]
    f1_w = _series(history, "val_f1_weighted")
    ax.plot(epochs, f1_w, marker=marker, label="weighted")
    ax.plot(epochs, _series(history, "val_f1_macro"), marker=marker, label="macro")
    ax.plot(epochs, _series(history, "val_f1_worst"), marker=marker, label="worst class")
    ax.set_title("Validation F1")
    ax.set_ylim(0.0, 1.02)

    ax = axes[1, 0]
    lrs = _series(history, "lr")
    ax.plot(epochs, lrs, marker=marker, color="tab:purple")
    # Log scale needs positive values; a schedule that hits 0 would otherwise blank the panel.
    if any(v > 0 for v in lrs):
        ax.set_yscale("log")
    ax.set_title("Learning rate")

    ax = axes[1, 1]
    best_f1 = _argmax(f1_w)
    if latest.get("val_f1_per_class") is not None and n_cls:
        xs = list(range(n_cls))
        ax.bar(xs, [float(v) for v in latest["val_f1_per_class"]], color="tab:blue",
               label=f"epoch {epochs[-1]}")
        best_pc = history[best_f1].get("val_f1_per_class") if best_f1 is not None else None
        if best_pc is not None and best_f1 != len(history) - 1:
            ax.scatter(xs, [float(v) for v in best_pc], marker="_", s=200, color="red", zorder=5,
                       label=f"best weighted F1 (ep {epochs[best_f1]})")
        if n_cls <= MAX_NAMED_CLASSES:
            ax.set_xticks(xs)
            ax.set_xticklabels(class_names, rotation=90, fontsize=max(5.0, min(9.0, 250.0 / n_cls)))
        else:
            # Beyond ~40 names the tick labels overlap into a black band; show indices instead and
            # name the worst classes, which are the ones worth reading.
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("class index")
            f1 = [float(v) for v in latest["val_f1_per_class"]]
            worst = sorted(range(n_cls), key=lambda i: f1[i])[:5]
            # Below the axis label, where it cannot collide with the bars or the legend.
            ax.text(0.5, -0.2, "worst: " + ", ".join(f"{class_names[i]} {f1[i]:.2f}" for i in worst),
                    transform=ax.transAxes, va="top", ha="center", fontsize=7)
        ax.set_xlim(-0.6, n_cls - 0.4)
    ax.set_title(f"Per-class val F1 (epoch {epochs[-1]})")
    ax.set_ylim(0.0, 1.05)

    ax = axes[1, 2]
    secs = _series(history, "epoch_seconds")
    # width=1 with no edges: 150 thin bars otherwise alias into an uneven comb at 80 dpi.
    ax.bar(epochs, secs, width=1.0, linewidth=0, color="tab:gray")
    total = sum(v for v in secs if not math.isnan(v))
    ax.set_title(f"Epoch time (s) - total {total / 60:.1f} min")

    for ax in axes.flat:
        # Vertical grid lines would draw one line per class tick in the per-class panel.
        ax.grid(True, axis="y" if ax is axes[1, 1] else "both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    for ax in (axes[0, 0], axes[0, 1], axes[0, 2], axes[1, 0], axes[1, 2]):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 0.96" ticks
        if len(history) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    # Figure objects outside pyplot are freed by GC; clearing drops the artists right away.
    fig.clear()
    return buf.getvalue()


def plot_dashboard(history: list[dict], class_names: list[str], out_path: str | os.PathLike, *,
                   title: str | None = None) -> Path:
    """Render the training dashboard to a PNG (written atomically).

    Args:
        history: one dict per epoch (keys epoch, lr, train_loss, train_acc, val_loss, val_acc,
            val_f1_weighted, val_f1_macro, val_f1_worst, epoch_seconds, val_f1_per_class);
            missing scalar keys leave gaps.
        class_names: one name per entry of ``val_f1_per_class``.
        out_path: PNG path; parent directories are created.
        title: figure title (default: "Training dashboard - epoch N").

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: empty history, or a ``val_f1_per_class`` whose length differs from
            ``class_names``.
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
