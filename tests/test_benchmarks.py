"""Every script in benchmarks/ runs in its --smoke mode (tiny data, seconds) and ends with the
``name=value`` line the README's figures are read from: a renamed option or a changed record breaks
this test, not the next measurement."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(
    p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh") and p.name != "smoke.py"
)
LAST = re.compile(r"^([a-z][a-z0-9_]*)=(\S+)$")
NO_PEERS = {"realdata.py"}  # the smoke set (a cut of ArrowHead, no aeon) has no published peers: nan


def test_every_benchmark_is_covered():
    assert {
        "extract.py",
        "loader.py",
        "ood.py",
        "realdata.py",
        "serve.py",
        "train_step.py",
        "cuda_figures.sh",
    } <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke_mode(script, tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SMOKE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "TMPDIR": str(tmp_path),
    }
    cmd = (
        ["bash", f"benchmarks/{script}", str(tmp_path / "out")]
        if script.endswith(".sh")
        else [sys.executable, f"benchmarks/{script}", "--smoke"]
    )
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    if script.endswith(".sh"):  # its figures are in the step logs; it fails when a step does
        assert "FAILED" not in out and (tmp_path / "out" / "train_parallel.log").is_file(), out[-4000:]
        return
    last = proc.stdout.strip().splitlines()[-1]
    m = LAST.match(last)
    assert m, f"the last line is not name=value: {last!r}"
    value = float(m.group(2))
    assert math.isfinite(value) or script in NO_PEERS, last
    # the smoke data lives in a temporary folder that the script removes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("vidcls-bench-")]
