"""Tests for vidcls.reporting.plots: PNG output, sizes, file naming, no figure leaks."""

from __future__ import annotations

import gc
import math

import matplotlib

matplotlib.use("Agg")  # the test imports pyplot itself (for get_fignums); never open a window

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vidcls.reporting import plots  # noqa: E402
from vidcls.reporting.plots import plot_dashboard, save_epoch_plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# 15 x 8 inches at 80 dpi
EXPECTED_HW = (640, 1200)


def make_history(n_epochs: int, n_classes: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "epoch": e,
            "lr": 1e-3 * 0.5 * (1 + math.cos(math.pi * e / n_epochs)) + 1e-6,
            "train_loss": 2.0 / e,
            "train_acc": 1 - 1 / (e + 1),
            "val_loss": 2.2 / e,
            "val_acc": 0.9 - 1 / (e + 2),
            "val_f1_weighted": 0.85 - 1 / (e + 3),
            "val_f1_macro": 0.8 - 1 / (e + 3),
            "val_f1_worst": 0.5 - 1 / (e + 4),
            "epoch_seconds": 30.0 + float(rng.random()),
            "val_f1_per_class": [float(v) for v in rng.random(n_classes)],
        }
        for e in range(1, n_epochs + 1)
    ]


def _check_png(path, hw=EXPECTED_HW):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.shape[:2] == hw
    assert float(img[..., :3].std()) > 0.05  # something was drawn, not a blank canvas
    return data


def test_pixel_size_matches_module_constants():
    assert EXPECTED_HW == (round(plots.FIGSIZE[1] * plots.DPI), round(plots.FIGSIZE[0] * plots.DPI))


def test_dashboard_png(tmp_path):
    names = ["walk", "run", "jump", "sit"]
    out = plot_dashboard(make_history(12), names, tmp_path / "sub" / "dash.png", title="run 1")
    assert out == tmp_path / "sub" / "dash.png"
    _check_png(out)
    # atomic write leaves no temp files behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["dash.png"]


def test_single_epoch_history(tmp_path):
    out = plot_dashboard(make_history(1), ["a", "b", "c", "d"], tmp_path / "one.png")
    _check_png(out)


def test_many_classes_and_zero_lr(tmp_path):
    hist = make_history(5, n_classes=101)
    for h in hist:
        h["lr"] = 0.0  # a log axis cannot show 0; must not crash
    out = plot_dashboard(hist, [f"class_{i}" for i in range(101)], tmp_path / "many.png")
    _check_png(out)


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError):
        plot_dashboard([], ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="val_f1_per_class"):
        plot_dashboard(make_history(3, n_classes=4), ["a", "b", "c"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_save_epoch_plots_names_and_identical_bytes(tmp_path):
    hist = make_history(7)
    out = save_epoch_plots(hist, ["a", "b", "c", "d"], tmp_path / "plots")
    assert out == tmp_path / "plots" / "epoch_007.png"
    epoch_bytes = _check_png(out)
    current_bytes = _check_png(tmp_path / "plots" / "current.png")
    assert epoch_bytes == current_bytes  # rendered once, written twice
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["current.png", "epoch_007.png"]


def test_current_png_is_overwritten_each_epoch(tmp_path):
    d = tmp_path / "plots"
    save_epoch_plots(make_history(1), ["a", "b", "c", "d"], d)
    first = (d / "current.png").read_bytes()
    save_epoch_plots(make_history(2), ["a", "b", "c", "d"], d)
    assert (d / "current.png").read_bytes() == (d / "epoch_002.png").read_bytes() != first
    assert (d / "epoch_001.png").read_bytes() == first


def test_no_figure_leaks_after_20_calls(tmp_path):
    hist = make_history(150, n_classes=4)
    names = ["a", "b", "c", "d"]
    gc.collect()
    figs_before = sum(type(o) is Figure for o in gc.get_objects())
    for i in range(1, 21):
        save_epoch_plots(hist[: i * 7], names, tmp_path / "plots")
    assert plt.get_fignums() == []
    gc.collect()
    # a margin of one: a figure from an earlier test may be collected meanwhile, or the last one
    # still referenced by a cache (seen once in CI); 20 leaked renders would be far above it.
    assert sum(type(o) is Figure for o in gc.get_objects()) <= figs_before + 1
    assert len(list((tmp_path / "plots").glob("epoch_*.png"))) == 20


@pytest.mark.parametrize("n_classes", [4, 45])  # named ticks; past MAX_NAMED_CLASSES, the "worst:" line
def test_dollar_class_names_are_literal(tmp_path, n_classes):
    # "$5_to_$10" holds "$5_to_$", a formula mathtext cannot parse; "a_$x$_b" holds a valid one
    names = (["$5_to_$10", "a_$x$_b", "cost $", "plain"] * 12)[:n_classes]
    hist = make_history(3, n_classes=n_classes)
    for h in hist:  # the "$" classes are the worst, so the many-class panel names them too
        h["val_f1_per_class"][:3] = [0.0, 0.01, 0.02]
    out = plot_dashboard(hist, names, tmp_path / "dollar.png", title="run $5_to_$10")
    _check_png(out)
