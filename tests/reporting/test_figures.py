"""The report's charts (vidcls.reporting.figures): PNG bytes for hand-made inputs, and text from the
run's data (class names, log tags) drawn literally, never parsed as mathtext."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import pytest

from vidcls.reporting import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# "$5_to_$10" holds "$5_to_$" (a broken formula for mathtext); "a_$x$_b" holds a valid one
DOLLAR_NAMES = ["$5_to_$10", "a_$x$_b", "cost $", "plain"]


def _image(png: bytes):
    assert png[:8] == PNG_MAGIC
    img = mpimg.imread(io.BytesIO(png), format="png")
    assert float(img[..., :3].std()) > 0.05  # something was drawn, not a blank canvas
    return img


def _history(n_epochs: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "lr": 1e-3 / e,
            "train_loss": 1.0 / e,
            "val_loss": 1.2 / e,
            "train_acc": 0.5 + 0.1 * e,
            "val_acc": 0.4 + 0.1 * e,
            "val_f1_macro": 0.3 + 0.1 * e,
        }
        for e in range(1, n_epochs + 1)
    ]


def test_per_class_with_dollar_names():
    _image(
        figures.per_class_png(DOLLAR_NAMES, [0.1, 0.9, 0.5, 0.7], [0.2, 0.8, 0.5, 0.6], [0.1, 1.0, 0.4, 0.8])
    )


@pytest.mark.parametrize("normalised", [False, True])
def test_confusion_with_dollar_names(normalised):
    counts = [[3, 1, 0, 0], [0, 4, 0, 1], [1, 0, 2, 0], [0, 0, 0, 5]]
    matrix = [[v / sum(r) for v in r] for r in counts] if normalised else counts
    _image(figures.confusion_png(matrix, DOLLAR_NAMES, normalised=normalised, title="Counts ($ test $_)"))


def test_resources_with_dollar_tag():
    records = [
        {
            "timestamp": f"2024-01-01T00:0{i}:00",
            "cpu_percent": 50.0 + i,
            "ram_used_gb": 2.0 + i,
            "ram_total_gb": 16.0,
            "tag": "member $5_to_$10 start" if i == 1 else None,
        }
        for i in range(4)
    ]
    _image(figures.resources_png(records))


def test_resources_without_timestamps_is_none():
    assert figures.resources_png([{"cpu_percent": 5.0}, {"timestamp": "not a time"}]) is None


def test_curves_and_lr_pixel_size():
    # 13 inches wide; curves are 3 inches per member plus 0.6, lr is 3.6 inches high (80 dpi)
    curves = _image(figures.curves_png([_history(4), _history(2)], [3, None]))
    assert curves.shape[:2] == (round((3.0 * 2 + 0.6) * 80), 13 * 80)
    lr = _image(figures.lr_png([_history(4), []]))
    assert lr.shape[:2] == (round(3.6 * 80), 13 * 80)
