"""Calibration of a multi-label run: one scalar temperature fitted on the summed binary cross-entropy
of the served sigmoids, the label-wise ECE, the joint-energy OOD score, the thresholds chosen again
on the calibrated probabilities, and calibration.json's reader; each against values computed by hand
or by an independent implementation in the test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vidcls.engine.scores import calibration_scores, energy_score, max_softmax_score, ood_score
from vidcls.errors import ConfigError
from vidcls.evaluation.calibrate import calibration_record
from vidcls.evaluation.multilabel import choose_thresholds
from vidcls.evaluation.temperature import (
    T_PRIOR_SIGMA,
    binary_nll,
    fit_temperature,
    labelwise_ece,
    temperature_objective,
)
from vidcls.run.calibration import load_calibration

ML = "multilabel"


def sig(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def hand_objective(z: np.ndarray, y: np.ndarray, t: float, sigma: float | None = T_PRIOR_SIGMA) -> float:
    """Mean over videos of the summed BCE of the mean over members/views of sigmoid(z / t), plus the prior."""
    p = sig(z / t).mean(axis=(1, 2))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(axis=1).mean()
    prior = 0.0 if sigma is None else math.log(t) ** 2 / (2 * sigma**2 * len(y))
    return float(bce + prior)


def test_binary_nll_is_the_summed_cross_entropy_per_video():
    probs = np.array([[0.8, 0.3], [0.4, 0.9]])
    targets = np.array([[1, 0], [0, 0]])
    want = -(math.log(0.8) + math.log(0.7) + math.log(0.6) + math.log(0.1)) / 2
    assert binary_nll(probs, targets) == pytest.approx(want, rel=1e-12)


def test_the_objective_is_the_bce_of_the_served_sigmoids_plus_the_log_normal_prior():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(7, 2, 3, 4))  # (N, M, V, C)
    y = (rng.random((7, 4)) < 0.4).astype(int)
    f = temperature_objective(z, y, task=ML)
    for t in (0.5, 1.0, 2.5):
        assert f(math.log(t)) == pytest.approx(hand_objective(z, y, t), rel=1e-10)


def test_one_temperature_is_fitted_for_all_classes_and_recovers_the_true_one():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, size=(3000, 5))
    y = (rng.random(z.shape) < sig(z / 3.0)).astype(int)  # the labels follow sigmoid(z / 3)
    t = fit_temperature(z, y, task=ML)
    assert t == pytest.approx(3.0, rel=0.08)
    # the minimiser of the hand-written objective on a fine grid agrees
    grid = np.exp(np.linspace(math.log(2.0), math.log(4.5), 401))
    best = grid[np.argmin([hand_objective(z[:, None, None, :], y, g) for g in grid])]
    assert t == pytest.approx(best, rel=5e-3)
    assert fit_temperature(z, y, prior_sigma=None, task=ML) == pytest.approx(best, rel=5e-3)


def test_multilabel_labels_must_be_label_sets_of_the_logits_width():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        fit_temperature(z, np.array([0, 1, 2]), task=ML)
    with pytest.raises(ValueError, match="0/1"):
        fit_temperature(z, np.full((3, 4), 2), task=ML)


def test_labelwise_ece_bins_every_video_class_probability():
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    targets = np.array([[1, 0], [0, 0]])
    # bin of 0.9: two forecasts, half come true: |0.5 - 0.9| * 2/4; bin of 0.1: none true: |0 - 0.1| * 2/4
    assert labelwise_ece(probs, targets) == pytest.approx(0.4 * 0.5 + 0.1 * 0.5)
    assert labelwise_ece(np.array([[1.0, 0.0]]), np.array([[1, 0]])) == 0.0


def test_joint_energy_and_largest_sigmoid_of_multilabel_logits():
    z = np.array([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # one video, two members, one view
    t = 2.0

    def softplus(x):
        return math.log1p(math.exp(x))

    want = np.mean([t * (softplus(0.5) + softplus(-1.0)), t * (softplus(1.5) + softplus(0.0))])
    assert energy_score(z, t, ML)[0] == pytest.approx(want, rel=1e-12)
    assert ood_score(z, t, "energy", ML)[0] == pytest.approx(want, rel=1e-12)
    top = max(np.mean([sig(0.5), sig(1.5)]), np.mean([sig(-1.0), sig(0.0)]))
    assert max_softmax_score(z, t, ML)[0] == pytest.approx(top, rel=1e-12)
    # softplus stays finite where exp overflows, and a huge logit is a large (confident) score
    assert energy_score(np.array([[800.0, -800.0]]), 1.0, ML)[0] == pytest.approx(800.0)
    # the single-label energy is the logsumexp, not the joint one
    assert energy_score(z, t)[0] != pytest.approx(want)


def test_calibration_scores_follow_the_calibration_task():
    z = np.array([[2.0, -1.0, 0.5]])
    cal = {"temperature": 1.5, "task": ML, "ood": {"score": "energy", "threshold": 0.0}}
    got = calibration_scores(z, cal)["energy"][0]
    assert got == pytest.approx(sum(1.5 * math.log1p(math.exp(v / 1.5)) for v in z[0]), rel=1e-12)
    single = calibration_scores(z, {**cal, "task": "single"})["energy"][0]
    assert single == pytest.approx(1.5 * math.log(np.exp(z[0] / 1.5).sum()), rel=1e-12)
    assert calibration_scores(z, cal, task="single")["energy"][0] == pytest.approx(single)


def _val(seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((400, 3)) < 0.3).astype(int)
    z = 6.0 * (2 * y - 1) + rng.normal(0, 4, size=y.shape)  # overconfident: true T is above 1
    return z, y


def test_calibration_record_of_a_multilabel_run():
    z, y = _val()
    rec = calibration_record(z, y, task=ML)
    assert rec["task"] == ML and rec["temperature"] > 1.0
    assert rec["nll_after"] < rec["nll_before"] and rec["ece_after"] < rec["ece_before"]
    p1 = sig(z)
    assert rec["nll_before"] == pytest.approx(binary_nll(p1, y)) and rec["ece_before"] == pytest.approx(
        labelwise_ece(p1, y)
    )
    # thresholds chosen again on the calibrated probabilities, not those at T = 1
    calibrated = sig(z / rec["temperature"])
    assert rec["thresholds"] == choose_thresholds(y, calibrated, rule="per_class")
    assert rec["thresholds"] != choose_thresholds(y, p1, rule="per_class")
    fixed = calibration_record(z, y, task=ML, rule="fixed", fixed=0.3)["thresholds"]
    assert fixed["rule"] == "fixed" and fixed["per_class"] == [0.3, 0.3, 0.3]
    # OOD threshold on validation: 95 % of the validation videos pass, as for single-label runs
    energy = ood_score(z, rec["temperature"], "energy", ML)
    assert np.mean(energy >= rec["ood"]["threshold"]) >= 0.95


def test_a_single_label_record_says_its_task_and_has_no_thresholds():
    rng = np.random.default_rng(3)
    rec = calibration_record(rng.normal(size=(50, 3)), rng.integers(0, 3, 50))
    assert rec["task"] == "single" and "thresholds" not in rec


def _write(tmp_path, **kw) -> None:
    cal = {
        "format": "vidcls-calibration",
        "version": 2,
        "temperature": 1.3,
        "ood": {"score": "energy", "threshold": 1.0, "scores": ["energy"], "thresholds": {"energy": 1.0}},
        **kw,
    }
    (tmp_path / "calibration.json").write_text(json.dumps(cal))


def test_load_calibration_checks_task_and_thresholds(tmp_path):
    th = {"rule": "global", "global": 0.4, "per_class": [0.4, 0.4], "support": [2, 5]}
    _write(tmp_path, task=ML, thresholds=th)
    assert load_calibration(tmp_path)["thresholds"] == th
    _write(tmp_path, task=ML)  # none re-chosen: prediction uses final.json's
    assert load_calibration(tmp_path)["task"] == ML
    _write(tmp_path)  # written before multi-label runs
    assert "task" not in load_calibration(tmp_path)
    for bad in (
        {"task": "multi"},
        {"task": ML, "thresholds": {**th, "per_class": [0.4, 0.0]}},
        {"task": ML, "thresholds": [0.4, 0.4]},
        {"task": "single", "thresholds": th},
    ):
        _write(tmp_path, **bad)
        with pytest.raises(ConfigError, match="task, thresholds"):
            load_calibration(tmp_path)
