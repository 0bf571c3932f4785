"""Tests for vidcls.losses.FocalLoss against hand-written expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidcls.training.losses import FocalLoss


def batch(B: int = 8, C: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, generator=g) * 2, torch.randint(0, C, (B,), generator=g)


def test_reduces_to_cross_entropy():
    logits, y = batch()
    loss = FocalLoss(gamma=0.0, smoothing=0.0)(logits, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))


def test_gamma0_smoothing_matches_torch_label_smoothing():
    # torch spreads eps/C over all classes; ours puts s/(C-1) on the others, so eps = s*C/(C-1).
    logits, y = batch(C=5)
    s = 0.2
    loss = FocalLoss(gamma=0.0, smoothing=s)(logits, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, label_smoothing=s * 5 / 4))


def test_hand_computed_example():
    logits = [[2.0, 0.5, -1.0], [0.1, 0.2, 1.5]]
    y = [0, 2]
    alpha = [0.25, 0.5, 1.0]
    gamma, s = 2.0, 0.1
    expected = 0.0
    for row, t in zip(logits, y):
        lse = math.log(sum(math.exp(v) for v in row))
        logp = [v - lse for v in row]
        q = [1 - s if c == t else s / 2 for c in range(3)]
        ce = -sum(qc * lc for qc, lc in zip(q, logp))
        pt = math.exp(-ce)
        expected += alpha[t] * (1 - pt) ** gamma * ce
    expected /= 2
    fl = FocalLoss(alpha=torch.tensor(alpha), gamma=gamma, smoothing=s)
    got = fl(torch.tensor(logits), torch.tensor(y))
    assert got.dim() == 0
    assert abs(got.item() - expected) < 1e-6
    # sanity on the hand computation itself: sample 0 is easy, so focal shrinks it below CE
    assert 0 < expected < F.cross_entropy(torch.tensor(logits), torch.tensor(y)).item()


def test_alpha_scales_each_sample():
    logits, y = batch(B=6, C=3, seed=3)
    alpha = torch.tensor([0.5, 2.0, 3.0])
    plain = FocalLoss(gamma=2.0, smoothing=0.1)
    weighted = FocalLoss(alpha=alpha, gamma=2.0, smoothing=0.1)
    per_sample = torch.stack([plain(logits[i : i + 1], y[i : i + 1]) for i in range(6)])  # (B,)
    torch.testing.assert_close(weighted(logits, y), (alpha[y] * per_sample).mean())
    torch.testing.assert_close(plain(logits, y), per_sample.mean())


def test_focusing_downweights_easy_samples():
    easy = torch.tensor([[6.0, 0.0, 0.0]])
    hard = torch.tensor([[0.0, 0.0, 0.0]])
    y = torch.tensor([0])

    def ratio(lg):
        return (FocalLoss(gamma=2.0, smoothing=0)(lg, y) / FocalLoss(gamma=0.0, smoothing=0)(lg, y)).item()

    p_easy = torch.softmax(easy, -1)[0, 0].item()
    assert ratio(easy) == pytest.approx((1 - p_easy) ** 2, rel=1e-5)
    assert ratio(hard) == pytest.approx((2 / 3) ** 2, rel=1e-5)


@pytest.mark.parametrize("gamma, smoothing", [(2.0, 0.1), (0.5, 0.0), (0.0, 0.0)])
def test_gradient_finite(gamma, smoothing):
    logits, y = batch()
    # include a sample predicted with probability 1.0 in float32: (1 - pt) == 0 there
    logits = torch.cat([logits, torch.tensor([[200.0, -200.0, -200.0, -200.0]])])
    y = torch.cat([y, torch.tensor([0])])
    logits.requires_grad_(True)
    loss = FocalLoss(alpha=torch.rand(4) + 0.1, gamma=gamma, smoothing=smoothing)(logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_alpha_is_a_buffer():
    fl = FocalLoss(alpha=torch.tensor([1.0, 2.0, 3.0]))
    assert "alpha" in fl.state_dict()
    assert "alpha" not in dict(fl.named_parameters())
    assert fl.to(torch.float64).alpha.dtype == torch.float64
    assert fl.to("meta").alpha.device.type == "meta"
    other = FocalLoss(alpha=torch.zeros(3))
    other.load_state_dict(FocalLoss(alpha=torch.tensor([1.0, 2.0, 3.0])).state_dict())
    assert other.alpha.tolist() == [1.0, 2.0, 3.0]
    assert "alpha" not in FocalLoss().state_dict()


def test_alpha_copied_not_aliased():
    a = torch.tensor([1.0, 1.0])
    fl = FocalLoss(alpha=a)
    a[0] = 5.0
    assert fl.alpha.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gamma=-1.0), "gamma"),
        (dict(smoothing=1.0), "smoothing"),
        (dict(smoothing=-0.1), "smoothing"),
        (dict(alpha=torch.ones(2, 2)), "alpha"),
        (dict(alpha=torch.tensor([1.0, -1.0])), "alpha"),
    ],
)
def test_invalid_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocalLoss(**kwargs)


def test_alpha_length_checked_at_forward():
    logits, y = batch(C=4)
    with pytest.raises(ValueError, match=r"alpha must be \(4,\)"):
        FocalLoss(alpha=torch.ones(3))(logits, y)


def test_bad_input_shapes():
    fl = FocalLoss()
    with pytest.raises(ValueError, match="logits"):
        fl(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        fl(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


# ---------------------------------------------------------------- edges the recipe relies on


def hand_focal(logits, y, alpha, gamma, s):
    """The docstring's formula in plain Python: mean of alpha_y (1 - pt)^gamma ce."""
    total = 0.0
    C = len(logits[0])
    for row, t in zip(logits, y):
        lse = math.log(sum(math.exp(v) for v in row))
        q = [1 - s if c == t else s / (C - 1) for c in range(C)]
        ce = -sum(qc * (v - lse) for qc, v in zip(q, row))
        total += (alpha[t] if alpha else 1.0) * (1 - math.exp(-ce)) ** gamma * ce
    return total / len(y)


def test_defaults_are_the_recipe_gamma_2_smoothing_0_1():
    logits, y = [[1.5, -0.5, 0.25], [0.0, 2.0, -1.0], [0.3, 0.2, 0.1]], [0, 2, 1]
    got = FocalLoss()(torch.tensor(logits), torch.tensor(y)).item()
    assert got == pytest.approx(hand_focal(logits, y, None, 2.0, 0.1), rel=1e-5)
    assert got != pytest.approx(hand_focal(logits, y, None, 3.0, 0.1), rel=1e-3)


def test_two_classes_hand_computed():
    # C = 2 is the smallest valid problem: the smoothed target puts s on the one other class
    logits, y = [[2.0, -1.0], [0.5, 0.7], [-0.2, 1.0]], [0, 0, 1]
    alpha = [0.4, 1.6]
    fl = FocalLoss(alpha=torch.tensor(alpha), gamma=2.0, smoothing=0.1)
    got = fl(torch.tensor(logits), torch.tensor(y)).item()
    assert got == pytest.approx(hand_focal(logits, y, alpha, 2.0, 0.1), rel=1e-5)


def test_one_class_rejected_with_a_message():
    with pytest.raises(ValueError, match="at least 2 classes.*C=1"):
        FocalLoss()(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


def test_alpha_kept_in_float32_whatever_it_came_as():
    logits, y = batch(B=5, C=3, seed=2)
    for alpha in (
        np.array([0.5, 1.0, 2.0]),
        torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
        [0.5, 1.0, 2.0],
    ):
        fl = FocalLoss(alpha=alpha)
        assert fl.alpha.dtype == torch.float32
        loss = fl(logits, y)
        assert loss.dtype == torch.float32
        expected = hand_focal(logits.tolist(), y.tolist(), [0.5, 1.0, 2.0], 2.0, 0.1)
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_alpha_length_one_is_caught_at_forward_naming_c():
    # a (1,) alpha is a valid 1-D tensor; it is the class count of the logits that it fails
    fl = FocalLoss(alpha=torch.ones(1))
    with pytest.raises(ValueError, match=r"alpha has shape \(1,\) .* alpha must be \(3,\)"):
        fl(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D"):
        FocalLoss(alpha=torch.ones(0))
