"""The three trust states (trusted / not trusted / unknown) and both OOD scores against their thresholds,
through every consumer: the verdict, the JSON records of ``vidcls.load(...)``, the table and CSV of
``vidcls predict``, its summary line and warning, the timeline title. Expectations are hand-made."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidcls.cli import main
from vidcls.predict.batch import run_predict
from vidcls.predict.outputs import format_records
from vidcls.predict.verdict import trust_verdict

CAL = {
    "temperature": 1.0,
    "ood": {
        "score": "energy",
        "threshold": 2.0,
        "val_pass_rate": 0.95,
        "scores": ["energy", "typicality"],
        "thresholds": {"energy": 2.0, "typicality": -4.0},
    },
}


def record(name: str, trusted, ood=None, reason: str = "") -> dict:
    return {
        "input": name,
        "label": "cat",
        "top_k": [{"class": "cat", "probability": 0.8125}],
        "probabilities": {"cat": 0.8125, "dog": 0.1875},
        "trusted": trusted,
        "trust_reason": reason,
        "ood_score": None,
        "ood_scores": {},
        "ood": ood,
        "frames": [],
        "timings": {},
        "error": None,
    }


BOTH_PASS = {
    "energy": {"score": 2.5, "threshold": 2.0, "pass": True},
    "typicality": {"score": -1.25, "threshold": -4.0, "pass": True},
}
TYP_FAILS = {
    "energy": {"score": 2.21, "threshold": 2.0, "pass": True},
    "typicality": {"score": -9.1, "threshold": -4.0, "pass": False},
}
RECORDS = [
    record("a.mp4", True, BOTH_PASS, "within the validation range"),
    record("b.mp4", False, TYP_FAILS, "out-of-distribution: typicality score -9.100 is below ..."),
    record(
        "c.mp4",
        None,
        None,
        "not calibrated (no calibration.json): the verdict is unknown; run `vidcls calibrate runs/x`",
    ),
]


# ---- the verdict and the "ood" field ---------------------------------------------------------
def test_without_a_calibration_the_verdict_is_unknown_not_trusted():
    trusted, reason = trust_verdict({"energy": -100.0}, None)
    assert trusted is None and "vidcls calibrate" in reason
    assert trust_verdict(-100.0, {})[0] is None
    assert trust_verdict({"energy": 2.5, "typicality": -1.0}, CAL)[0] is True
    assert trust_verdict({"energy": 2.5, "typicality": -9.0}, CAL)[0] is False
    from vidcls.predict import verdict

    assert [verdict.state(t) for t in (True, False, None)] == ["trusted", "not trusted", "unknown"]


def test_ood_checks_give_both_scores_against_both_thresholds():
    from vidcls.predict import verdict

    thresholds = {"energy": 2.0, "typicality": -4.0}
    assert verdict.ood_checks({"energy": 2.21, "typicality": -9.1}, thresholds) == TYP_FAILS
    assert verdict.ood_checks({"energy": 2.0, "typicality": float("nan")}, thresholds) == {
        "energy": {"score": 2.0, "threshold": 2.0, "pass": True},  # at the threshold passes, as the verdict
        "typicality": {"score": None, "threshold": -4.0, "pass": False},
    }
    assert verdict.ood_checks({}, {}) is None  # not calibrated: nothing checked


# ---- table, CSV, JSON ------------------------------------------------------------------------
def test_table_shows_yes_no_unknown_and_every_score_against_its_threshold():
    lines = format_records(RECORDS, "table").splitlines()
    assert lines[0].split() == ["input", "label", "prob", "trusted", "note"]
    a, b, c = lines[1:]
    assert a.split()[:4] == ["a.mp4", "cat", "0.812", "yes"]
    assert "energy 2.500 >= 2.000 pass, typicality -1.250 >= -4.000 pass" in a
    assert b.split()[3] == "no" and "energy 2.210 >= 2.000 pass, typicality -9.100 < -4.000 FAIL" in b
    assert c.split()[3] == "unknown" and "vidcls calibrate runs/x" in c


def test_csv_leaves_the_trusted_cell_empty_when_unknown():
    rows = list(csv.DictReader(io.StringIO(format_records(RECORDS, "csv"))))
    assert [r["trusted"] for r in rows] == ["true", "false", ""]
    assert "vidcls calibrate" in rows[2]["trust_reason"]


def test_json_keeps_null_for_unknown():
    out = [json.loads(line) for line in format_records(RECORDS, "jsonl").splitlines()]
    assert [r["trusted"] for r in out] == [True, False, None]
    assert out[1]["ood"]["typicality"] == {"score": -9.1, "threshold": -4.0, "pass": False}
    assert out[2]["ood"] is None


# ---- the summary of vidcls predict -------------------------------------------------------------
class Fixed:
    """A predictor answering the hand-made RECORDS for the inputs, in order."""

    classes_ = ("cat", "dog")
    feature_dim_ = 2

    def __init__(self):
        self.n = 0

    def predict_records(self, x, top_k=3):
        out = []
        for _ in x:
            out.append(dict(RECORDS[self.n % 3]))
            self.n += 1
        return out


def test_predict_summary_counts_unknown_apart_from_not_trusted(tmp_path):
    inputs = []
    for i in range(5):  # a, b, c, a, b
        inputs.append(tmp_path / f"{i}.npy")
        np.save(inputs[-1], np.zeros((3, 2), np.float32))
    summary = run_predict(Fixed(), inputs, fmt="jsonl", output=tmp_path / "p.jsonl", progress=False)
    assert summary.untrusted == 2  # before: 3, the unknown one counted as not trusted
    assert summary.unknown == 1
    assert "2 not trusted" in summary.line() and "1 of unknown trust" in summary.line()
    from vidcls.predict import verdict

    assert verdict.counts(RECORDS + [{"error": "x", "trusted": False}]) == {
        "trusted": 1,
        "not trusted": 1,
        "unknown": 1,
    }


def test_timeline_title_says_unknown():
    from vidcls.predict.timeline import _title

    assert "trust unknown" in _title(RECORDS[2]) and "not trusted" not in _title(RECORDS[2])
    assert _title(RECORDS[0]).endswith("trusted") and "not trusted: out-of-distribution" in _title(RECORDS[1])


# ---- a real run: vidcls.load and vidcls predict ----------------------------------------------
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_features) -> Path:
    """A finished 1-member, 1-epoch run (train calibrates it). Read-only."""
    run = tmp_path_factory.mktemp("states") / "run"
    assert (
        main(
            [
                "train",
                str(tiny_features),
                str(run),
                "--epochs",
                "1",
                "--members",
                "1",
                "--no-plots",
                "--hidden-dim",
                "16",
                "--layers",
                "1",
                "--heads",
                "2",
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return run


def _arrays(tiny_features, n=4):
    from vidcls.store.reader import FeatureStore

    store = FeatureStore(tiny_features / "test.h5")
    out = [store.read(i) for i in range(n)]
    store.close()
    return out + [np.zeros((10, out[0].shape[1]), np.float32)]  # the typicality rejects all-zero


def test_load_without_calibration_gives_null_and_warns_once(calibrated, tiny_features, tmp_path, caplog):
    import vidcls

    run = tmp_path / "run"
    shutil.copytree(calibrated, run)
    (run / "calibration.json").unlink()
    with caplog.at_level("WARNING", logger="vidcls"):
        p = vidcls.load(run, device="cpu")
        recs = p.predict_records(_arrays(tiny_features))
    warned = [r for r in caplog.records if "vidcls calibrate" in r.getMessage()]
    assert len(warned) == 1 and str(run) in warned[0].getMessage()
    assert all(r["trusted"] is None and r["ood"] is None for r in recs)
    assert all(f"vidcls calibrate {run}" in r["trust_reason"] for r in recs)


def test_calibrated_records_carry_both_checks(calibrated, tiny_features):
    import vidcls
    from vidcls.run.calibration import load_calibration

    cal = load_calibration(calibrated)
    recs = vidcls.load(calibrated, device="cpu").predict_records(_arrays(tiny_features))
    for r in recs:
        assert set(r["ood"]) == {"energy", "typicality"}
        for name, c in r["ood"].items():
            assert c["threshold"] == cal["ood"]["thresholds"][name]
            assert c["score"] == pytest.approx(r["ood_scores"][name], abs=1e-12)
            assert c["pass"] == (c["score"] is not None and c["score"] >= c["threshold"])
        assert r["trusted"] is all(c["pass"] for c in r["ood"].values())
    assert recs[-1]["trusted"] is False and recs[-1]["ood"]["typicality"]["pass"] is False


def test_cli_predict_uncalibrated_prints_null_and_one_warning(calibrated, tiny_features, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(calibrated, run)
    (run / "calibration.json").unlink()
    inputs = []
    for i, a in enumerate(_arrays(tiny_features, 2)):
        inputs.append(str(tmp_path / f"v{i}.npy"))
        np.save(inputs[-1], a)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidcls",
            "predict",
            str(run),
            *inputs,
            "--format",
            "jsonl",
            "--device",
            "cpu",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    recs = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(recs) == 3 and all(r["trusted"] is None for r in recs)
    assert done.stderr.count(f"run `vidcls calibrate {run}`") == 1  # the warning, once
    assert "3 of unknown trust" in done.stderr and "not trusted" not in done.stderr
