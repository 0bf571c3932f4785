"""Fixtures shared by the whole suite. Tests run on CPU with tiny configs and fixed seeds.

``tests/videos.py`` (clip generators for extraction tests) is a helper module, not a test; this
directory is on ``sys.path`` because it holds this conftest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# No hub downloads in tests (this machine has no internet, CI neither): a test that tried one fails at
# once instead of retrying for a minute. huggingface_hub reads the variable when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"

from vidcls.cli import main  # noqa: E402
from vidcls.store.synth import make_synthetic  # noqa: E402


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory) -> Path:
    """A small synthetic store (80 videos, 4 classes, D=16, 6-24 frames): train/val/test.h5. Read-only."""
    out = tmp_path_factory.mktemp("tiny_features")
    make_synthetic(out, videos=80, dim=16, min_frames=6, max_frames=24, seed=3)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of many small encoder batches: with the other core busy (a
    parallel test run, a demo), two OpenMP threads spin at every barrier and such batches ran ~50x
    slower (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_cli():
    """``run_cli("train", ...)`` -> exit status of ``vidcls ...`` run in-process."""

    def run(*args) -> int:
        return main([str(a) for a in args])

    return run


# A CPU-sized model for CLI runs: every option of the spec's recipe, only smaller and on CPU. --min-steps 1
# keeps one pass per epoch on these 80-video stores (the default would draw 480 videos per epoch, 10x the
# work for tests of mechanics); tests/training/test_small_data.py checks the default's rule.
TINY_ARGS = (
    "--model bilstm_attn --min-steps 1 --hidden-dim 16 --layers 1 --heads 2 --workers 0 --device cpu"
).split()


@pytest.fixture
def tiny_args() -> list[str]:
    return list(TINY_ARGS)


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and a child inherits that, so Ctrl-C tests
    # would pass or fail with how the suite was launched: give each child the default action.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_vidcls(*args) -> subprocess.Popen:
    """``python -m vidcls ...`` in a child process (stdout+stderr piped, SIGINT at its default)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "vidcls", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_sigint,
    )


@pytest.fixture
def spawn_cli():
    """``spawn_cli("train", ...)`` -> a ``subprocess.Popen`` of ``python -m vidcls ...`` (stdout+stderr piped)."""
    return spawn_vidcls


def _summary_core(run_dir: Path) -> dict:
    s = json.loads((Path(run_dir) / "summary.json").read_text())
    s.pop("resources")
    s.pop("wall_seconds")
    return s


@pytest.fixture
def summary_core():
    """``summary_core(run_dir)`` -> summary.json without the fields that measure time or the machine."""
    return _summary_core


# The same CNN taking frames at a rate (5 per second): runs whose windows are in seconds, streams.
RATE_EXTRACT_ARGS = (
    "--backbone resnet18 --weights none --image-size 64 --fps 5 --decode-workers 0 --device cpu"
).split()
RATE_TRAIN_ARGS = (
    "--epochs 1 --batch-size 4 --hidden-dim 16 --layers 1 --heads 2 --workers 0 --no-plots --device cpu"
).split()


@pytest.fixture(scope="session")
def rate_clips_run(tmp_path_factory) -> tuple[Path, Path]:
    """(video root, run): 12 clips of two colours (20-25 frames at 10 fps) -> ``RATE_EXTRACT_ARGS``
    features -> a finished 1-member run. Read-only."""
    import videos as V

    root = tmp_path_factory.mktemp("rate_run")
    clips, feats, run = root / "videos", root / "feats", root / "run"
    for c, color in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        for i in range(6):
            V.write_clip(clips / c / f"v{i:02d}.mp4", V.shapes_frames(20 + i, color=color, seed=i))
    assert main(["extract", str(clips), str(feats), *RATE_EXTRACT_ARGS]) == 0
    assert main(["train", str(feats), str(run), *RATE_TRAIN_ARGS]) == 0
    return clips, run


# A frame CNN small enough for tests: resnet18 with random weights (fixed seed), 64 px, 4 frames a clip.
CLIP_EXTRACT_ARGS = (
    "--backbone resnet18 --weights none --image-size 64 --frames 4 --decode-workers 0 --device cpu"
).split()


@pytest.fixture(scope="session")
def clip_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(video root, features dir, run): 12 generated clips of two colours -> ``CLIP_EXTRACT_ARGS``
    features -> a finished 1-member run, so the real predictor can take videos. Read-only."""
    import videos as V

    root = tmp_path_factory.mktemp("clip_run")
    videos, feats, run = root / "videos", root / "feats", root / "run"
    for c, color in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        for i in range(6):
            V.write_clip(videos / c / f"v{i:02d}.mp4", V.shapes_frames(20 + i, color=color, seed=i))
    assert main(["extract", str(videos), str(feats), *CLIP_EXTRACT_ARGS]) == 0
    assert (
        main(
            [
                "train",
                str(feats),
                str(run),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--hidden-dim",
                "16",
                "--layers",
                "1",
                "--heads",
                "2",
                "--workers",
                "0",
                "--no-plots",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return videos, feats, run


@pytest.fixture(scope="session")
def small_features(tmp_path_factory) -> Path:
    """A synthetic store of 80 videos, 3 classes, D=8, 4-12 frames (train/val/test.h5). Read-only."""
    out = tmp_path_factory.mktemp("small_features")
    make_synthetic(out, videos=80, classes=3, dim=8, min_frames=4, max_frames=12, seed=0)
    return out
