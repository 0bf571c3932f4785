"""``vidcls serve`` for a multi-label run: /v1/predict/features and /v1/predict answer the records
``vidcls predict`` writes (the label set in ``labels``), /v1/model gives the task and the thresholds
served, and the upload page shows the label set with each probability, ``(none)`` when empty (in a real
headless Chromium; skipped without chromium + chromedriver).

The runs are built by hand (tests/multilabel_runs.py) so that the expected sets are known exactly.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_page import browser, upload  # noqa: F401 (the browser fixture)

import vidcls
import videos as V
from multilabel_runs import (
    CLASSES,
    constant_weights,
    identity_weights,
    sigmoid,
    write_calibration,
    write_run,
)
from vidcls.cli import main
from vidcls.serve import ServeSettings, create_app

FINAL = [0.6, 0.6, 0.1, 0.8]  # outdoor, dog, music, car
Z1 = [2.0, 0.0, -2.0, 1.0]  # at T=1: .881 .5 .119 .731 -> outdoor, music
Z2 = [-3.0, -3.0, -3.0, -3.0]  # nothing reaches its threshold


def test_the_api_answers_the_records_of_vidcls_predict(tmp_path):
    run = write_run(tmp_path / "run", weights=identity_weights(4), feature_dim=4, final_thresholds=FINAL)
    write_calibration(run, temperature=2.0, per_class=[0.5] * 4, energy_threshold=3.0)
    x = np.tile(np.asarray(Z1, np.float32), (3, 1))
    np.save(tmp_path / "a.npy", x)
    assert main(["predict", str(run), str(tmp_path / "a.npy"), "--output", str(tmp_path / "out.json")]) == 0
    (want,) = json.loads((tmp_path / "out.json").read_text())
    app = create_app(vidcls.load(run, device="cpu"), ServeSettings(tmp_dir=str(tmp_path), run_dir=str(run)))
    with TestClient(app) as client:
        model = client.get("/v1/model").json()
        r = client.post("/v1/predict/features", json={"features": x.tolist()})
    assert model["task"] == "multilabel"
    assert model["thresholds"] == {
        "source": "calibration",
        "rule": "per_class",
        "per_class": dict(zip(CLASSES, [0.5] * 4)),
    }
    assert r.status_code == 200, r.text
    got = r.json()
    for record in (got, want):
        record.pop("timings"), record.pop("input")
    assert got == want
    # sigmoid(z / 2) = .731 .5 .269 .622 against calibration.json's 0.5
    assert [item["label"] for item in got["labels"]] == ["outdoor", "car", "dog"]
    assert got["thresholds_source"] == "calibration" and got["trusted"] is True


def test_a_single_label_run_is_described_as_one(fake, tmp_path):
    with TestClient(create_app(fake(), ServeSettings(tmp_dir=str(tmp_path)))) as client:
        model = client.get("/v1/model").json()
    assert model["task"] == "single" and model["thresholds"] is None


@pytest.fixture(scope="module")
def video_runs(video_run, tmp_path_factory):
    """Two multi-label runs on the shared clip run's extractor whose logits are fixed: ``Z1`` and ``Z2``."""
    served = vidcls.load(video_run, device="cpu")
    root = tmp_path_factory.mktemp("multilabel_video_runs")
    return {
        name: write_run(
            root / name,
            weights=constant_weights(served.feature_dim_, z),
            feature_dim=served.feature_dim_,
            final_thresholds=FINAL,
            extractor=served.extractor_,
            max_frames=served.max_frames_,
        )
        for name, z in (("z1", Z1), ("z2", Z2))
    }


def test_the_page_shows_the_label_set_with_each_probability(browser, video_runs, serve_app, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    clip = V.write_clip(tmp_path / "clip.mp4", V.shapes_frames(20, color=(220, 40, 40), seed=3))
    shown = {}
    for name, run in video_runs.items():
        app = create_app(
            vidcls.load(run, device="cpu"), ServeSettings(tmp_dir=str(tmp_path), run_dir=str(run))
        )
        with serve_app(app) as url:
            with open(clip, "rb") as f:
                record = httpx.post(url + "/v1/predict", files={"file": ("clip.mp4", f)}, timeout=120).json()
            upload(browser, url, clip)
            assert browser.find_element(By.ID, "status").text == "done"
            assert "multi-label" in browser.find_element(By.ID, "model").text
            shown[name] = {
                "record": record,
                "title": browser.find_element(By.ID, "label").text,
                "items": [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#labels li")],
                "head": browser.find_element(By.ID, "labels-head").text,
                "marked": [
                    e.text for e in browser.find_elements(By.CSS_SELECTOR, "#bars .bar-row.top .bar-name")
                ],
            }
    z1, z2 = shown["z1"], shown["z2"]
    p = dict(zip(CLASSES, sigmoid(Z1)))
    assert [item["label"] for item in z1["record"]["labels"]] == ["outdoor", "music"]
    assert z1["record"]["labels"][0]["probability"] == pytest.approx(p["outdoor"], abs=1e-9)
    assert z1["title"] == "outdoor | music"
    assert z1["items"] == [f"outdoor {100 * p['outdoor']:.1f} %", f"music {100 * p['music']:.1f} %"]
    assert z1["items"] == ["outdoor 88.1 %", "music 11.9 %"]
    assert "thresholds from final" in z1["head"]
    assert z1["marked"] == ["outdoor", "music"]  # the set's bars, not car (.731, below its .8)
    assert z2["record"]["labels"] == [] and z2["record"]["label"] == "outdoor"
    assert z2["title"] == "(none)" and z2["items"] == ["(none): no class reaches its threshold"]
    assert z2["marked"] == []
