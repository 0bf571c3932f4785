"""Temperature scaling, calibration error and the out-of-distribution verdict: pure functions against
hand computation, then calibration.json at the end of a tiny train, `vidcls calibrate` and the report."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from vidcls.cli import main
from vidcls.engine.scores import calibration_score, energy_score, max_softmax_score
from vidcls.errors import ConfigError
from vidcls.evaluation.calibrate import (
    as_4d,
    expected_calibration_error,
    fit_temperature,
    nll,
    ood_score,
    ood_threshold,
    served_probs,
)
from vidcls.predict.verdict import NOT_CALIBRATED, trust_verdict
from vidcls.run.calibration import load_calibration

TINY = (
    "--epochs 3 --model bilstm_attn --min-steps 1 --hidden-dim 8 --layers 1 --heads 2 --workers 0 "
    "--device cpu --no-plots --model mean_mlp"
).split()
KEYS = {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "ood"}
OOD_KEYS = {"score", "threshold", "val_pass_rate", "direction"}


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sampled(n: int, c: int, true_t: float, seed: int = 0, scale: float = 3.0):
    """Logits and labels drawn from softmax(logits / true_t): calibrated at exactly ``true_t``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, (n, c))
    p = softmax(z / true_t)
    labels = (rng.random((n, 1)) > p.cumsum(1)).sum(1)
    return z, np.minimum(labels, c - 1)


# ------------------------------------------------------------------------- served probabilities


def test_served_probs_is_the_mean_softmax_over_members_and_views():
    z = np.array([[[[1.0, 0.0], [0.0, 2.0]], [[3.0, 1.0], [0.0, 0.0]]]])  # (N=1, M=2, V=2, C=2)
    want = np.mean([softmax(np.array(v) / 2.0) for v in ([1, 0], [0, 2], [3, 1], [0, 0])], axis=0)
    np.testing.assert_allclose(served_probs(z, 2.0), [want], rtol=1e-12)
    # (N, C) is one member and one view; (N, M, C) one view per member
    assert as_4d(np.zeros((5, 3))).shape == (5, 1, 1, 3)
    assert as_4d(np.zeros((5, 2, 3))).shape == (5, 2, 1, 3)
    with pytest.raises(ValueError):
        as_4d(np.zeros(3))


def test_nll_by_hand():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    assert nll(probs, [0, 0, 1]) == pytest.approx(-(math.log(0.5) + math.log(0.9) + math.log(0.8)) / 3)


# ------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("true_t", [0.5, 2.0, 4.0])
def test_fit_temperature_recovers_the_generating_temperature(true_t):
    z, y = sampled(6000, 5, true_t, seed=int(true_t * 10))
    t = fit_temperature(z, y)
    assert t == pytest.approx(true_t, rel=0.12)
    assert nll(served_probs(z, t), y) <= nll(served_probs(z, 1.0), y)


def test_fit_temperature_keeps_about_one_when_already_calibrated():
    z, y = sampled(6000, 4, 1.0, seed=7)
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.1)


def test_fit_temperature_on_an_ensemble_never_raises_the_nll():
    rng = np.random.default_rng(1)
    for seed in range(5):
        z = rng.normal(0, 1 + seed, (200, 3, 2, 4))  # 3 members, 2 views
        y = rng.integers(0, 4, 200)
        t = fit_temperature(z, y)
        assert 0.05 <= t <= 20
        assert nll(served_probs(z, t), y) <= nll(served_probs(z, 1.0), y) + 1e-12


def test_fit_temperature_refuses_mismatched_labels():
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((2, 2)), [0, 2])


# ------------------------------------------------------------------------- ECE


def test_ece_by_hand():
    # confidences .6 (right), .7 (wrong), .9 (right), .55 (right)
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 1])
    # bins of width 0.5: every confidence (.6, .7, .9, .55) lies in (0.5, 1.0]
    # accuracy 3/4, mean confidence (.6 + .7 + .9 + .55) / 4 = .6875 -> ECE = |.75 - .6875|
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.0625)
    # 10 bins: (.5,.6]: {.6 right, .55 right} acc 1, conf .575; (.6,.7]: {.7 wrong}; (.8,.9]: {.9 right}
    want = 2 / 4 * abs(1 - 0.575) + 1 / 4 * abs(0 - 0.7) + 1 / 4 * abs(1 - 0.9)
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(want)


def test_ece_of_a_perfectly_confident_right_model_is_zero():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(probs, [0, 1, 2, 1]) == 0.0


# ------------------------------------------------------------------------- OOD score and verdict


def test_energy_score_by_hand():
    z = np.array([[[[1.0, 2.0]], [[0.0, 0.0]]]])  # one video, two members, one view
    t = 2.0
    want = np.mean([t * math.log(math.exp(0.5) + math.exp(1.0)), t * math.log(2.0)])
    np.testing.assert_allclose(energy_score(z, t), [want], rtol=1e-12)
    np.testing.assert_allclose(ood_score(z, t), [want], rtol=1e-12)
    np.testing.assert_allclose(max_softmax_score(z, t), served_probs(z, t).max(1))
    # large logits do not overflow
    assert np.isfinite(energy_score(np.array([[1e4, 0.0]]), 1.0)).all()


def test_non_finite_logits_score_nan_and_are_not_trusted():
    z = np.array([[np.nan, 1.0], [1.0, 0.0]])
    s = ood_score(z, 1.0)
    assert math.isnan(s[0]) and math.isfinite(s[1])
    cal = {"temperature": 1.0, "ood": {"score": "energy", "threshold": 0.0, "val_pass_rate": 0.95}}
    assert trust_verdict(s[0], cal)[0] is False


def test_threshold_passes_95_percent_of_validation():
    scores = np.arange(100, dtype=float)  # 0..99
    threshold, rate = ood_threshold(scores)
    assert threshold == 4.0 and rate == 0.96  # the 5th percentile, lower neighbour: 0..3 fall below
    threshold, rate = ood_threshold(np.arange(20, dtype=float))
    assert threshold == 0.0 and rate == 1.0


def test_trust_verdict():
    cal = {
        "temperature": 1.5,
        "ood": {
            "score": "energy",
            "threshold": 2.34,
            "val_pass_rate": 0.95,
            "direction": "higher is more in-distribution",
        },
    }
    trusted, reason = trust_verdict(1.23, cal)
    assert trusted is False
    assert "1.230" in reason and "2.340" in reason and "95 % of validation videos pass" in reason
    assert trust_verdict(2.34, cal) == (True, "within the validation range")
    assert trust_verdict(5.0, cal) == (True, "within the validation range")
    assert trust_verdict(-100.0, None) == (None, NOT_CALIBRATED)  # unknown: nothing was checked
    assert calibration_score(np.zeros((2, 3)), None) is None
    np.testing.assert_allclose(calibration_score(np.zeros((2, 3)), cal), 1.5 * math.log(3))


# ------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def feats(small_features) -> Path:
    return small_features


@pytest.fixture(scope="module")
def run(feats, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", str(feats), str(out), "--members", "2", "--tta", "on", *TINY]) == 0
    return out


def check_record(cal: dict) -> None:
    assert KEYS <= set(cal) and OOD_KEYS <= set(cal["ood"])
    assert cal["temperature"] > 0
    assert cal["nll_after"] <= cal["nll_before"] + 1e-12
    assert 0 <= cal["ece_before"] <= 1 and 0 <= cal["ece_after"] <= 1
    assert cal["ood"]["score"] == "energy" and cal["ood"]["direction"] == "higher is more in-distribution"
    assert 0.95 <= cal["ood"]["val_pass_rate"] <= 1.0


def test_train_writes_calibration(run):
    cal = json.loads((run / "calibration.json").read_text())
    check_record(cal)
    assert load_calibration(run) == cal
    final = json.loads((run / "final.json").read_text())
    assert cal["members"] == final["members"] and cal["tta_used"] is final["tta_used"]
    assert len(cal["views"]) == (len(final["tta_modes"]) if final["tta_used"] else 1)
    assert json.loads((run / "summary.json").read_text())["calibration"] == cal


def test_calibrate_command_rewrites_calibration(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "calibration.json").write_text("{}")
    summary = json.loads((copy / "summary.json").read_text())
    summary.pop("calibration")
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="vidcls calibrate"):
        load_calibration(copy)  # a damaged file is named, with how to redo it
    assert main(["calibrate", str(copy), "--device", "cpu"]) == 0
    assert "calibration: temperature" in capsys.readouterr().out
    cal = load_calibration(copy)
    check_record(cal)
    # same members, same features, same checkpoints: the same numbers as at the end of training
    want = json.loads((run / "calibration.json").read_text())
    assert cal["temperature"] == pytest.approx(want["temperature"])
    assert cal["ood"]["threshold"] == pytest.approx(want["ood"]["threshold"])
    assert json.loads((copy / "summary.json").read_text())["calibration"] == cal


def test_calibrate_without_a_run_is_one_line_error(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert load_calibration(tmp_path) is None


def test_report_shows_ece_before_and_after(run, tmp_path):
    from vidcls.reporting.report import write_report

    cal = json.loads((run / "calibration.json").read_text())
    text = write_report(run).read_text()
    section = text.split('<section id="calibration">', 1)[1].split("</section>", 1)[0]
    assert f"{cal['ece_before']:.4f}" in section and f"{cal['ece_after']:.4f}" in section
    assert f"{cal['ood']['threshold']:.3f}" in section and "calibration-table" in section


def test_calibration_logits_are_the_served_ones(run):
    """The logits calibration is fitted on are exactly what the loaded run serves for those videos."""
    import vidcls
    from vidcls.config import load_config
    from vidcls.data.dataset import load_splits
    from vidcls.evaluation.calibrate import calibration_record, served_outputs
    from vidcls.run.final import load_final_choice
    from vidcls.utils.device import resolve_device

    cfg = load_config(run / "config.yaml")
    val = load_splits(
        cfg.features_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        augment=False,
        max_frames=cfg.max_frames,
    ).val
    out = served_outputs(run, load_final_choice(run), val, cfg=cfg, device=resolve_device("cpu"))
    logits, labels = out.logits, out.labels
    np.testing.assert_array_equal(labels, val.labels)
    predictor = vidcls.load(run, device="cpu")
    served = predictor.logits_features([val.store.read(int(i)) for i in val.indices])
    np.testing.assert_allclose(served, logits, rtol=1e-5, atol=1e-5)
    cal = load_calibration(run)
    assert cal["temperature"] == pytest.approx(calibration_record(logits, labels)["temperature"])
    records = predictor.predict_records([val.store.read(int(i)) for i in val.indices])
    passed = np.mean([r["trusted"] for r in records])
    # the video at the threshold may flip on the last bit of a float
    assert passed == pytest.approx(cal["ood"]["val_pass_rate"], abs=1.01 / len(records))


def test_calibrate_reuses_the_validation_outputs_it_is_given(run, tmp_path, monkeypatch):
    """``fit`` hands calibration the validation outputs its evaluation computed: with them no model is
    loaded or run again, and the record is the one a fresh pass gives; outputs of other videos are refused."""
    import torch

    from vidcls.config import load_config
    from vidcls.data.dataset import load_splits
    from vidcls.evaluation import calibrate
    from vidcls.evaluation.evaluate import model_outputs

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = load_config(copy / "config.yaml")
    val = load_splits(
        cfg.features_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        augment=False,
        max_frames=cfg.max_frames,
    ).val
    every = model_outputs(cfg, copy, {"val": val}, device=torch.device("cpu"), modes=cfg.tta_modes)["val"]
    fresh = calibrate.calibrate_run(copy, device="cpu")

    def no_forward(*args, **kwargs):
        raise AssertionError("calibration ran the models again")

    monkeypatch.setattr(calibrate, "forward", no_forward)
    monkeypatch.setattr(calibrate, "load_members", no_forward)
    reused = calibrate.calibrate_run(copy, device="cpu", outputs=every)
    assert reused == fresh == json.loads((copy / "calibration.json").read_text())
    other = dataclasses.replace(every, labels=(every.labels + 1) % len(val.store.class_names))
    with pytest.raises(ValueError, match="not those of the run's validation split"):
        calibrate.calibrate_run(copy, device="cpu", outputs=other)


# ------------------------------------------------------------------------- feature-space typicality


def typical_videos(n: int, rng, d: int = 6, classes: int = 2):
    """Hand-made classes: frames around a class centre (+-3 per dimension apart), 8..20 frames."""
    centres = np.stack([np.full(d, 3.0 * c) for c in range(classes)]) + 1.0
    labels = np.arange(n) % classes
    videos = [centres[y] + rng.normal(0, 1.0, (int(rng.integers(8, 21)), d)) for y in labels]
    return videos, labels


def test_typicality_flags_constant_zero_and_shifted_sequences():
    from vidcls.engine.typicality import fit_typicality, typicality_score

    rng = np.random.default_rng(0)
    train, labels = typical_videos(200, rng)
    stats = fit_typicality(train, labels)
    assert all(v.dtype == np.float32 for v in stats.values()) and stats["prototypes"].shape == (2, 12)
    val, _ = typical_videos(200, rng)
    threshold, _ = ood_threshold(typicality_score(val, stats), 0.99)
    fresh, _ = typical_videos(100, rng)
    assert np.mean(typicality_score(fresh, stats) >= threshold) >= 0.9  # typical videos pass
    mean_frame = np.concatenate(train).mean(0)
    odd = [
        np.tile(mean_frame, (12, 1)),
        np.tile(train[0][0], (12, 1)),
        np.zeros((12, 6)),
        train[0] + 6.0,
        train[1] + 6.0 * np.array([1, -1, 1, -1, 1, -1]),
    ]
    scores = typicality_score(odd, stats)
    assert (scores < threshold).all(), scores  # constant (even a real frame), zero, shifted
    assert np.isnan(typicality_score([np.full((3, 6), np.nan), np.zeros((3, 5))], stats)).all()


def test_joint_thresholds_pass_95_percent_of_validation():
    from vidcls.evaluation.calibrate import joint_thresholds

    rng = np.random.default_rng(1)
    a = rng.normal(size=400)
    scores = {"energy": a, "typicality": 0.3 * a + rng.normal(size=400)}  # correlated, not the same
    thresholds, passed, rates = joint_thresholds(scores)
    both = (scores["energy"] >= thresholds["energy"]) & (scores["typicality"] >= thresholds["typicality"])
    assert passed == both.mean() and 0.95 <= passed <= 0.96
    assert all(0.95 <= r <= 1.0 for r in rates.values())
    cal = {
        "temperature": 1.0,
        "ood": {
            "score": "energy",
            "threshold": thresholds["energy"],
            "val_pass_rate": passed,
            "scores": ["energy", "typicality"],
            "thresholds": thresholds,
        },
    }
    verdicts = [trust_verdict({"energy": e, "typicality": t}, cal)[0] for e, t in zip(*scores.values())]
    assert np.mean(verdicts) == passed
    trusted, reason = trust_verdict({"energy": 10.0, "typicality": -99.0}, cal)
    assert (
        not trusted and "typicality score -99.000" in reason and f"{thresholds['typicality']:.3f}" in reason
    )
    assert "energy score" not in reason and "energy and typicality" in reason
    trusted, reason = trust_verdict({"energy": -99.0, "typicality": -99.0}, cal)
    assert "energy score -99.000" in reason and "typicality score -99.000" in reason
    assert trust_verdict(10.0, cal)[0] is False  # one number cannot answer for the typicality


def test_old_calibration_without_typicality_still_works(run, tmp_path):
    import vidcls
    from vidcls.engine.scores import calibration_scores
    from vidcls.run.calibration import typicality_stats

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cal = json.loads((copy / "calibration.json").read_text())
    old = {**cal, "version": 1, "ood": {k: cal["ood"][k] for k in OOD_KEYS}}
    (copy / "calibration.json").write_text(json.dumps(old))
    (copy / "typicality.npz").unlink()
    loaded = load_calibration(copy)
    assert typicality_stats(copy, loaded) is None
    assert list(calibration_scores(np.zeros((2, 3)), loaded)) == ["energy"]
    p = vidcls.load(copy, device="cpu")
    zeros = np.zeros((10, 8), np.float32)
    rec = p.predict_records([zeros])[0]
    assert set(rec["ood_scores"]) == {"energy"} and rec["ood_score"] == rec["ood_scores"]["energy"]
    assert (rec["trusted"], rec["trust_reason"]) == trust_verdict(rec["ood_score"], old)


def test_calibration_has_typicality_and_a_missing_file_is_named(run, tmp_path):
    import vidcls

    cal = load_calibration(run)
    assert cal["ood"]["scores"] == ["energy", "typicality"] and (run / "typicality.npz").is_file()
    assert cal["ood"]["thresholds"]["energy"] == cal["ood"]["threshold"]
    assert set(cal["ood"]["pass_rates"]) == {"energy", "typicality"}
    records = vidcls.load(run, device="cpu").predict_records([np.zeros((10, 8), np.float32)])
    assert records[0]["trusted"] is False and "typicality score" in records[0]["trust_reason"]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "typicality.npz").unlink()
    with pytest.raises(ConfigError, match="typicality.npz.*vidcls calibrate"):
        vidcls.load(copy, device="cpu")
