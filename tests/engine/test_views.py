"""Test-time augmentation: the views of a sequence and their batched form (the models' pass over them is
tests/engine/test_forward.py)."""

from __future__ import annotations

import pytest
import torch

from vidcls.data.dataset import collate
from vidcls.engine.views import tta_batch, tta_indices, views_to_predict
from vidcls.errors import ConfigError


@pytest.mark.parametrize(
    "n,mode,want",
    [
        (4, "original", [0, 1, 2, 3]),
        (4, "reverse", [3, 2, 1, 0]),
        (12, "speed_up", [0, 2, 4, 6, 8, 11]),  # linspace(0, 11, 6) = 0, 2.2, 4.4, 6.6, 8.8, 11
        (11, "speed_up", [0, 2, 5, 7, 10]),  # linspace(0, 10, 5) = 0, 2.5, 5, 7.5, 10
        (10, "speed_up", list(range(10))),  # only when > 10 frames
        (6, "speed_down", [0, 0, 1, 1, 2, 3, 3, 4, 5]),  # linspace(0, 5, 9) = 0, .625, 1.25, ... 5
        (
            7,
            "speed_down",
            [0, 0, 1, 2, 2, 3, 4, 4, 5, 6],
        ),  # int(10.5) = 10 indices: 0, .67, 1.33, 2, 2.67, ... 6
        (5, "speed_down", [0, 1, 2, 3, 4]),  # only when > 5 frames
        (1, "reverse", [0]),
    ],
)
def test_tta_indices_by_hand(n, mode, want):
    assert tta_indices(n, mode).tolist() == want


def test_tta_indices_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="valid modes: original, reverse, speed_up, speed_down"):
        tta_indices(5, "mirror")


@pytest.mark.parametrize(
    "modes,want",
    [
        (("reverse", "speed_up"), ("original", "reverse", "speed_up")),  # original added first
        (
            ("speed_up", "original", "reverse"),
            ("original", "speed_up", "reverse"),
        ),  # moved first, not repeated
        (("original",), ("original",)),
    ],
)
def test_views_to_predict_always_holds_the_original_sequence(modes, want):
    assert views_to_predict(modes) == want


def test_tta_batch_applies_each_row_its_own_view():
    a = torch.arange(12.0)[:, None].repeat(1, 2)  # frame t holds value t
    b = torch.arange(4.0)[:, None].repeat(1, 2) + 100
    x, lengths, _, _ = collate([(a, 0, 0), (b, 1, 1)])
    xs, ls = tta_batch(x, lengths, "speed_up")
    assert ls.tolist() == [6, 4] and ls.dtype == torch.int64 and xs.shape == (2, 6, 2)
    assert xs[0, :, 0].tolist() == [0, 2, 4, 6, 8, 11]
    assert xs[1, :4, 0].tolist() == [100, 101, 102, 103] and xs[1, 4:].abs().sum() == 0
    xr, lr = tta_batch(x, lengths, "reverse")
    assert lr.tolist() == [12, 4]
    assert xr[1, :4, 0].tolist() == [103, 102, 101, 100] and xr[1, 4:].abs().sum() == 0
    xd, ld = tta_batch(x, lengths, "speed_down")
    assert ld.tolist() == [18, 4] and xd.shape == (2, 18, 2)
    xo, lo = tta_batch(x, lengths, "original")
    assert xo is x and lo is lengths  # the original view costs no copy
