"""The temperature is a MAP fit (log-normal prior on T, centred on 1): a validation split the model
separates perfectly no longer drives T to the floor of its search range (every served probability
printed as 1.000), while overconfident and noisy splits keep about their NLL-optimal temperature.
Expectations are hand-made logits and an independent solution of the MAP condition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vidcls.evaluation.temperature import T_BOUNDS, fit_temperature, nll, served_probs

SIGMA = 0.5  # the prior's sd in log T these figures were worked out for (temperature.T_PRIOR_SIGMA)


def separated(n: int = 40, c: int = 4, margin: float = 3.29):
    """Every video: logit ``margin`` on its own class, 0 on the others (the demo run's logits look so:
    40 validation videos, 4 classes, margins 3.24-3.31, all right)."""
    y = np.arange(n) % c
    z = np.zeros((n, c))
    z[np.arange(n), y] = margin
    return z, y


def map_temperature_by_hand(n: int, c: int, margin: float, sigma: float) -> float:
    """The MAP temperature of ``separated(n, c, margin)``, solved independently of vidcls.

    With s = log T, every video has p(true) = 1 / (1 + (c - 1) exp(-margin / T)), so the objective is
    log(1 + (c-1) e^{-margin/T}) + s^2 / (2 sigma^2 n); its derivative in s is
    a (margin / T) / (1 + a) + s / (sigma^2 n) with a = (c - 1) e^{-margin/T}: zero where found by bisection."""

    def slope(s: float) -> float:
        t = math.exp(s)
        a = (c - 1) * math.exp(-margin / t)
        return a * (margin / t) / (1 + a) + s / (sigma**2 * n)

    lo, hi = math.log(T_BOUNDS[0]), 0.0  # slope(lo) < 0 < slope(0)
    assert slope(lo) < 0 < slope(hi)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return math.exp((lo + hi) / 2)


def sampled(n: int, c: int, true_t: float, seed: int = 0, scale: float = 3.0):
    """Logits and labels drawn from softmax(logits / true_t): calibrated at exactly ``true_t``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, (n, c))
    e = np.exp((z - z.max(1, keepdims=True)) / true_t)
    p = e / e.sum(1, keepdims=True)
    labels = (rng.random((n, 1)) > p.cumsum(1)).sum(1)
    return z, np.minimum(labels, c - 1)


def test_perfectly_separated_validation_does_not_drive_t_to_the_floor():
    z, y = separated()
    t = fit_temperature(z, y)
    assert t > 4 * T_BOUNDS[0]  # before: 0.058, the floor the NLL's eps clip leaves
    assert t == pytest.approx(map_temperature_by_hand(40, 4, 3.29, SIGMA), rel=1e-3)
    assert t == pytest.approx(0.5745, abs=2e-3)  # the same figure, to read: sigma 0.5, 40 videos
    # a typical video like those: served probability below 1 at the 3 decimals the table prints
    typical = np.array([[3.27, 0.0, 0.0, 0.0]])
    shown = f"{served_probs(typical, t).max():.3f}"
    assert shown != "1.000" and float(shown) > 0.95
    # the likelihood alone still runs to the floor: what the prior is there for
    assert fit_temperature(z, y, prior_sigma=None) < 0.06


@pytest.mark.parametrize(
    "n, c, margin, sigma", [(40, 4, 3.29, 0.5), (200, 3, 5.0, 0.5), (20, 6, 2.0, 1.0), (40, 4, 3.29, 0.25)]
)
def test_map_temperature_matches_the_hand_solution(n, c, margin, sigma):
    z, y = separated(n, c, margin)
    assert fit_temperature(z, y, prior_sigma=sigma) == pytest.approx(
        map_temperature_by_hand(n, c, margin, sigma), rel=1e-3
    )


def test_objective_is_nll_plus_the_log_normal_prior_over_n():
    from vidcls.evaluation.temperature import T_PRIOR_SIGMA, temperature_objective

    assert T_PRIOR_SIGMA == SIGMA
    z, y = separated(40, 4, 3.29)
    loss = temperature_objective(z, y, 0.5)
    s = math.log(0.7)
    want = math.log(1 + 3 * math.exp(-3.29 / 0.7)) + s * s / (2 * 0.25 * 40)
    assert loss(s) == pytest.approx(want, rel=1e-9)
    assert temperature_objective(z, y, None)(s) == pytest.approx(nll(served_probs(z, 0.7), y), rel=1e-12)


def test_overconfident_validation_still_gets_t_above_one():
    z, y = sampled(300, 4, true_t=2.5, seed=3)
    t, mle = fit_temperature(z, y), fit_temperature(z, y, prior_sigma=None)
    assert t > 1.8 and t == pytest.approx(mle, rel=0.05)
    assert nll(served_probs(z, t), y) < nll(served_probs(z, 1.0), y)


def noisy_clusters(n: int = 200, c: int = 5, flip: float = 0.1, seed: int = 0):
    """Well separated logits (+6 on the video's class, N(0, 1) noise) with ``flip`` of the labels
    moved to another class: confidently wrong now and then, so the NLL wants T > 1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    z = rng.normal(0, 1, (n, c))
    z[np.arange(n), y] += 6.0
    moved = rng.random(n) < flip
    return z, np.where(moved, (y + rng.integers(1, c, n)) % c, y)


@pytest.mark.parametrize("case", ["label noise", "sharpen"])
def test_noisy_well_separated_validation_keeps_about_the_nll_optimal_t(case):
    if case == "label noise":
        z, y = noisy_clusters()
    else:  # large logits, labels drawn from softmax(z / 0.5): a few mistakes, the NLL wants T about 0.5
        z, y = sampled(200, 5, true_t=0.5, seed=11, scale=6.0)
    assert 0.04 < np.mean(served_probs(z).argmax(1) != y) < 0.15
    t, mle = fit_temperature(z, y), fit_temperature(z, y, prior_sigma=None)
    # the prior pulls towards 1 by a few per cent on 200 videos; the NLL barely notices
    assert t == pytest.approx(mle, rel=0.1) and (t - mle) * (1 - mle) >= 0
    assert nll(served_probs(z, t), y) <= nll(served_probs(z, mle), y) * 1.01
    assert (t > 1.4) if case == "label noise" else (t < 0.55)


def test_one_video_moves_t_smoothly_not_across_a_cliff():
    """One validation video's margin slides from right (+3.5) to wrong (-1): the likelihood-only T
    jumped from the floor (0.058) to 0.44 as it crossed 0; the MAP T moves a few per cent per step."""
    z, y = separated()
    ts = []
    for m in np.arange(3.5, -1.01, -0.25):
        zz = z.copy()
        zz[0, y[0]] = m
        ts.append(fit_temperature(zz, y))
    ratios = np.exp(np.abs(np.diff(np.log(ts))))
    assert ratios.max() < 1.05, ts
    assert min(ts) > 4 * T_BOUNDS[0]


def test_the_map_fit_never_raises_the_nll_above_t_one():
    rng = np.random.default_rng(4)
    for seed in range(4):
        z = rng.normal(0, 1 + seed, (60, 2, 2, 3))
        y = rng.integers(0, 3, 60)
        t = fit_temperature(z, y)
        assert nll(served_probs(z, t), y) <= nll(served_probs(z, 1.0), y) + 1e-12
