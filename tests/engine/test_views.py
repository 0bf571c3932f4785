"""Test-time augmentation: the views of a sequence, their batched form, and the per-view softmax."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vidcls.data.dataset import collate
from vidcls.engine.views import (
    predict_modes,
    tta_batch,
    tta_indices,
    tta_mean,
    views_to_predict,
)
from vidcls.errors import ConfigError
from vidcls.models import build_model


@pytest.mark.parametrize("n,mode,want", [
    (4, "original", [0, 1, 2, 3]),
    (4, "reverse", [3, 2, 1, 0]),
    (12, "speed_up", [0, 2, 4, 6, 8, 11]),       # linspace(0, 11, 6) = 0, 2.2, 4.4, 6.6, 8.8, 11
    (11, "speed_up", [0, 2, 5, 7, 10]),           # linspace(0, 10, 5) = 0, 2.5, 5, 7.5, 10
    (10, "speed_up", list(range(10))),            # only when > 10 frames
    (6, "speed_down", [0, 0, 1, 1, 2, 3, 3, 4, 5]),  # linspace(0, 5, 9) = 0, .625, 1.25, ... 5
    (7, "speed_down", [0, 0, 1, 2, 2, 3, 4, 4, 5, 6]),  # int(10.5) = 10 indices: 0, .67, 1.33, 2, 2.67, ... 6
    (5, "speed_down", [0, 1, 2, 3, 4]),           # only when > 5 frames
    (1, "reverse", [0]),
])
def test_tta_indices_by_hand(n, mode, want):
    assert tta_indices(n, mode).tolist() == want


def test_tta_indices_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="valid modes: original, reverse, speed_up, speed_down"):
        tta_indices(5, "mirror")


@pytest.mark.parametrize("modes,want", [
    (("reverse", "speed_up"), ("original", "reverse", "speed_up")),          # original added first
    (("speed_up", "original", "reverse"), ("original", "speed_up", "reverse")),  # moved first, not repeated
    (("original",), ("original",)),
])
def test_views_to_predict_always_holds_the_original_sequence(modes, want):
    assert views_to_predict(modes) == want


def test_tta_mean_averages_exactly_the_listed_modes():
    views = {"original": np.array([[1.0, 0.0]]), "reverse": np.array([[0.5, 0.5]]),
             "speed_up": np.array([[0.0, 1.0]])}
    np.testing.assert_allclose(tta_mean(views, ("reverse", "speed_up")), [[0.25, 0.75]])
    np.testing.assert_allclose(tta_mean(views, ("original", "reverse", "speed_up")), [[0.5, 0.5]])
    np.testing.assert_allclose(tta_mean(views, ("speed_up",)), [[0.0, 1.0]])


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


def _model(dropout=0.0):
    torch.manual_seed(0)
    return build_model("bilstm_attn", feature_dim=3, n_classes=3, hidden_dim=8, layers=1, heads=2, dropout=dropout)


def test_predict_modes_matches_one_video_at_a_time_in_dataset_order():
    model = _model().eval()
    vids = [torch.randn(n, 3) for n in (13, 7, 4)]
    # two batches, positions out of order: the result must come back in dataset order
    loader = [collate([(vids[2], 2, 2), (vids[0], 0, 0)]), collate([(vids[1], 1, 1)])]
    out = predict_modes(model, loader, torch.device("cpu"))
    assert set(out) == {"original", "reverse", "speed_up", "speed_down", "labels"}
    assert out["labels"].tolist() == [0, 1, 2]
    for i, v in enumerate(vids):
        for mode in ("original", "reverse", "speed_up", "speed_down"):
            view = v[tta_indices(len(v), mode)]
            want = torch.softmax(model(view[None], torch.tensor([len(view)])), 1)[0].detach().numpy()
            np.testing.assert_allclose(out[mode][i], want, atol=1e-6)
            assert out[mode].dtype == np.float64


def test_predict_modes_without_original_still_predicts_it_and_runs_in_eval_mode():
    model = _model(dropout=0.5).train()  # dropout on: predictions would be random in train mode
    vids = [torch.randn(n, 3) for n in (12, 6)]
    loader = [collate([(v, i, i) for i, v in enumerate(vids)])]
    out = predict_modes(model, loader, torch.device("cpu"), ("reverse", "speed_up"))
    assert set(out) == {"original", "reverse", "speed_up", "labels"}
    assert not model.training
    for i, v in enumerate(vids):
        want = torch.softmax(model(v[None], torch.tensor([len(v)])), 1)[0].detach().numpy()
        np.testing.assert_allclose(out["original"][i], want, atol=1e-6)
    again = predict_modes(model.train(), loader, torch.device("cpu"), ("reverse", "speed_up"))
    np.testing.assert_array_equal(again["reverse"], out["reverse"])
