"""Fixtures shared by the whole suite. Tests run on CPU with tiny configs and fixed seeds.

``tests/videos.py`` (clip generators for extraction tests) is a helper module, not a test; this
directory is on ``sys.path`` because it holds this conftest.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidcls.cli import main
from vidcls.store.synth import make_synthetic


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory) -> Path:
    """A small synthetic store (80 videos, 4 classes, D=16, 6-24 frames): train/val/test.h5. Read-only."""
    out = tmp_path_factory.mktemp("tiny_features")
    make_synthetic(out, videos=80, dim=16, min_frames=6, max_frames=24, seed=3)
    return out


@pytest.fixture
def run_cli():
    """``run_cli("train", ...)`` -> exit status of ``vidcls ...`` run in-process."""
    def run(*args) -> int:
        return main([str(a) for a in args])
    return run


# A CPU-sized model for CLI runs: every option of the spec's recipe, only smaller and on CPU.
TINY_ARGS = ["--hidden-dim", "16", "--layers", "1", "--heads", "2", "--workers", "0", "--device", "cpu"]


@pytest.fixture
def tiny_args() -> list[str]:
    return list(TINY_ARGS)


def _spawn(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vidcls", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def spawn_cli():
    """``spawn_cli("train", ...)`` -> a ``subprocess.Popen`` of ``python -m vidcls ...`` (stdout+stderr piped)."""
    return _spawn


def _summary_core(run_dir: Path) -> dict:
    s = json.loads((Path(run_dir) / "summary.json").read_text())
    s.pop("resources")
    s.pop("wall_seconds")
    return s


@pytest.fixture
def summary_core():
    """``summary_core(run_dir)`` -> summary.json without the fields that measure time or the machine."""
    return _summary_core
