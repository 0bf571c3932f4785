"""``vidcls serve RUN_DIR`` as users start it (a subprocess on a loopback port) on a real tiny run
whose features come from generated clips: the endpoints answer what the Python predictor answers,
videos go through the run's extractor, a bounded load leaves no 5xx and no temporary file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import vidcls
import videos as V


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(video_run, tmp_path_factory):
    """(base URL, upload temp dir): ``python -m vidcls serve`` with TMPDIR pointed at an empty folder."""
    tmp = tmp_path_factory.mktemp("serve_tmp")
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    env.pop("VIDCLS_API_KEY", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vidcls",
                "serve",
                str(video_run),
                "--port",
                str(port),
                "--device",
                "cpu",
                "--max-queue",
                "8",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield url, tmp
    proc.terminate()
    proc.wait(30)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_served_run_answers_like_the_predictor(server, video_run, tmp_path):
    url, tmp = server
    predictor = vidcls.load(video_run, device="cpu")
    clip = V.write_clip(tmp_path / "blue.mp4", V.shapes_frames(23, color=(40, 60, 220), seed=4))
    with httpx.Client(base_url=url, timeout=120) as c:
        model = c.get("/v1/model").json()
        summary = json.loads((video_run / "summary.json").read_text())
        assert model["classes"] == predictor.classes_ == ["blue", "red"]
        assert model["members"] == predictor.members_ and model["feature_dim"] == predictor.feature_dim_
        assert model["extractor"]["backbone"] == "resnet18"
        assert model["metrics"] == {"val": summary["val"], "test": summary["test"]}
        calibration = video_run / "calibration.json"
        assert model["calibration"] == (json.loads(calibration.read_text()) if calibration.exists() else None)

        with open(clip, "rb") as f:
            rec = c.post("/v1/predict", params={"thumbnails": 1}, files={"file": ("blue.mp4", f)}).json()
        want = predictor.predict_records([str(clip)])[0]
        assert rec["input"] == "blue.mp4" and rec["label"] == want["label"]
        assert rec["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert [f["timestamp_ms"] for f in rec["frames"]] == [f["timestamp_ms"] for f in want["frames"]]
        assert len(rec["thumbnails"]) == 4 and all(t.startswith("data:image/jpeg") for t in rec["thumbnails"])

        x = np.random.default_rng(0).normal(size=(7, predictor.feature_dim_)).astype(np.float32)
        r = c.post("/v1/predict/features", json={"features": x.tolist()})
        assert r.status_code == 200
        assert r.json()["probabilities"] == pytest.approx(
            predictor.predict_records([x])[0]["probabilities"], abs=1e-6
        )
        r = c.post("/v1/predict/features", json={"features": x[:, :16].tolist()})
        assert r.status_code == 422 and f"D = {predictor.feature_dim_}" in r.json()["error"]

        # a clip cut in the middle of its frames (index at the front): it opens, but decodes badly
        whole = V.write_clip(tmp_path / "whole.mp4", V.shapes_frames(40), faststart=True).read_bytes()
        for name, data in (
            ("cut.mp4", whole[: len(whole) // 2]),
            ("notes.txt", b"hello\n" * 100),
            ("empty.mp4", b""),
        ):
            r = c.post("/v1/predict", files={"file": (name, data)})
            assert r.status_code in (415, 422) and r.json()["error"], (name, r.text)
            assert str(tmp) not in r.text
    assert not os.listdir(tmp)


def test_load_of_200_feature_requests_and_uploads(server, video_run):
    url, tmp = server
    d = vidcls.load(video_run, device="cpu").feature_dim_
    rng = np.random.default_rng(1)
    bodies = [{"features": rng.normal(size=(1 + i % 9, d)).round(4).tolist()} for i in range(200)]
    data = next((video_run.parent / "videos" / "red").glob("*.mp4")).read_bytes()
    limits = httpx.Limits(max_connections=8)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as c, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda b: c.post("/v1/predict/features", json=b).status_code, bodies))
        codes += list(
            pool.map(
                lambda i: (
                    c.post(
                        "/v1/predict", files={"file": (f"v{i}.mp4", data if i % 2 else data[:300])}
                    ).status_code
                ),
                range(12),
            )
        )
    assert codes[:200] == [200] * 200
    assert all(code < 500 for code in codes) and 200 in codes[200:]
    assert not os.listdir(tmp)
