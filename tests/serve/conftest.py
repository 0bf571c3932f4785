"""Fixtures of the HTTP service tests: a fake predictor, a real uvicorn on a loopback port, a tiny
real run made from generated clips."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn

import videos as V
from vidcls.features.video import open_video


class FakePredictor:
    """The Predictor contract (``classes_``, ``predict_records``) without a model: probabilities from
    the input's length, one frame per 100 ms of video. ``gate``: a threading.Event every call waits
    for (a slow predictor); ``fail``: raise this exception from every call."""

    def __init__(self, classes=("slides", "animation", "camera"), feature_dim=4, gate=None, fail=None):
        self.classes_ = list(classes)
        self.feature_dim_ = feature_dim
        self.members_ = [0]
        self.extractor_ = {"backbone": "fake"}
        self.tta_used_, self.tta_modes_, self.max_frames_, self.calibration_ = False, ["original"], 64, None
        self.gate, self.fail = gate, fail
        self.calls = 0

    def predict_records(self, x, top_k=3):
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(60), "the test never released the fake predictor"
        if self.fail is not None:
            raise self.fail
        return [self._record(item, i, top_k) for i, item in enumerate(x)]

    def _record(self, item, i, top_k):
        if isinstance(item, (str, Path)):
            container, stream = open_video(item)
            n = max(1, int(stream.frames or 1) // 2)
            container.close()
            name, stamps = str(item), [100.0 * j for j in range(n)]
        else:
            name, n = f"features[{i}]", len(item)
            stamps = [None] * n
        p = np.full(len(self.classes_), 0.5 / (len(self.classes_) - 1))
        p[n % len(self.classes_)] = 0.5
        order = np.argsort(-p, kind="stable")[:top_k]
        att = np.full(n, 1.0 / n)
        return {
            "input": name,
            "label": self.classes_[order[0]],
            "top_k": [{"class": self.classes_[c], "probability": float(p[c])} for c in order],
            "probabilities": {c: float(v) for c, v in zip(self.classes_, p)},
            "trusted": True,
            "trust_reason": "not calibrated",
            "ood_score": None,
            "frames": [{"index": j, "timestamp_ms": stamps[j], "attention": float(att[j])} for j in range(n)],
            "timings": {"decode_s": 0.0, "features_s": 0.0, "model_s": 0.0},
            "error": None,
        }


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def serve_app():
    """``with serve_app(app) as url:`` a real uvicorn serving ``app``."""
    return running


@pytest.fixture
def fake():
    return FakePredictor


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """A 2 s, 10 fps test clip (64x48 mp4)."""
    return V.write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", V.shapes_frames(20))


EXTRACT = (
    "--backbone resnet18 --weights none --image-size 64 --frames 4 --decode-workers 0 --device cpu"
).split()


@pytest.fixture(scope="session")
def video_run(clip_run) -> Path:
    """The shared finished run on generated clips (tests/conftest.py ``clip_run``). Read-only."""
    return clip_run[2]


@pytest.fixture(scope="session")
def rate_run(rate_clips_run) -> Path:
    """The run of ``rate_clips_run`` (features at 5 frames per second: windows in seconds, streams)."""
    return rate_clips_run[1]


def two_colours(n: int) -> np.ndarray:
    """(n, 48, 64, 3): red shapes, then blue ones (half each)."""
    half = n // 2
    return np.concatenate(
        [V.shapes_frames(half, color=(220, 40, 40), seed=1), V.shapes_frames(n - half, color=(40, 60, 220))]
    )
