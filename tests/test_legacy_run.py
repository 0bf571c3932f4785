"""A run trained by vidcls 0.1.0 before the code was reorganised (tests/assets/legacy_run, see its README)
still evaluates, predicts and serves with the same numbers: the run directory's files and the checkpoint
format are a contract with users' existing runs, not an internal detail."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import vidcls
from vidcls.cli import main
from vidcls.serve.app import create_app

LEGACY = Path(__file__).parent / "assets" / "legacy_run"


@pytest.fixture
def legacy(tmp_path) -> Path:
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


def assert_close(got, want, path="") -> None:
    """Equal JSON trees, floats to 1e-6 (the saved numbers went through float32 on CPU)."""
    if isinstance(want, float):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6), path
    elif isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def test_legacy_run_evaluates_to_the_saved_figures(legacy):
    (legacy / "run" / "eval_test.json").unlink()
    assert (
        main(["evaluate", str(legacy / "run"), "--split", "test", "--features-dir", str(legacy / "feats")])
        == 0
    )
    got = json.loads((legacy / "run" / "eval_test.json").read_text())
    assert_close(got, json.loads((legacy / "expected_eval_test.json").read_text()))


def test_legacy_run_predicts_the_saved_probabilities(legacy, monkeypatch):
    monkeypatch.chdir(legacy)
    assert main(["predict", "run", "inputs", "--output", "got.json"]) == 0
    got = json.loads((legacy / "got.json").read_text())
    want = json.loads((legacy / "expected_predict.json").read_text())
    for record in got + want:
        record.pop("timings")
    assert_close(got, want)


def test_legacy_run_serves_the_saved_probabilities(legacy):
    want = json.loads((legacy / "expected_predict.json").read_text())[0]
    rows = np.load(legacy / "inputs" / "test0.npy").tolist()
    with TestClient(create_app(vidcls.load(legacy / "run", device="cpu"))) as client:
        r = client.post("/v1/predict/features", json={"features": rows})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["label"] == want["label"] and got["trusted"] == want["trusted"]
    assert_close(got["probabilities"], want["probabilities"])
