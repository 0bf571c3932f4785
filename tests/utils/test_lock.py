"""Tests for vidcls.utils.lock: one command per run directory, no stale locks, re-entrant in a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vidcls.cli import main
from vidcls.errors import RunLockedError
from vidcls.utils.lock import LOCK_NAME, run_lock

# Holds the lock of argv[1] as `vidcls <argv[2]>` until its stdin closes. With argv[3] == "fork" it
# first forks a child that outlives it (like a DataLoader worker of a killed trainer).
HOLDER = """
import os, sys, time
from vidcls.utils.lock import run_lock
with run_lock(sys.argv[1], sys.argv[2], create=True):
    child = os.fork() if sys.argv[3] == "fork" else None
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print("locked", child, flush=True)
    sys.stdin.read()
"""

PROBE = """
import sys
from vidcls.errors import RunLockedError
from vidcls.utils.lock import run_lock
try:
    with run_lock(sys.argv[1], "probe"):
        print("acquired")
except RunLockedError as exc:
    print(exc)
"""


def hold(directory: Path, command: str = "train", fork: bool = False) -> tuple[subprocess.Popen, int | None]:
    """Start a holder; returns it once it holds the lock (and its forked child's pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), command, "fork" if fork else "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split()
    assert line and line[0] == "locked", line
    return proc, (int(line[1]) if fork else None)


def probe(directory: Path) -> str:
    """What another process gets when it tries the lock."""
    return subprocess.run(
        [sys.executable, "-c", PROBE, str(directory)], capture_output=True, text=True, check=True
    ).stdout.strip()


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=60)


def test_lock_records_holder_and_refuses_others(tmp_path):
    run = tmp_path / "run"
    holder, _ = hold(run, "evaluate")
    try:
        assert (run / LOCK_NAME).read_text() == f"{holder.pid} vidcls evaluate\n"
        assert probe(run) == (
            f"{run} is in use by pid {holder.pid} (vidcls evaluate); wait for it to finish "
            f"or use another RUN_DIR"
        )
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with run_lock(run, "report"):
                pass
    finally:
        release(holder)
    assert probe(run) == "acquired"
    assert (run / LOCK_NAME).read_text() == ""  # released: no holder recorded


def test_lock_is_reentrant_within_a_process(tmp_path):
    with run_lock(tmp_path, "train") as d:
        assert d == tmp_path
        with run_lock(tmp_path / ".", "report"):  # another spelling of the same directory
            assert "in use by pid" in probe(tmp_path)
        assert f"in use by pid {os.getpid()} (vidcls train)" in probe(tmp_path)  # outer hold still there
    assert probe(tmp_path) == "acquired"


def test_missing_directory_is_not_created_without_create(tmp_path):
    with pytest.raises(FileNotFoundError):
        with run_lock(tmp_path / "nothing", "evaluate"):
            pass
    assert not (tmp_path / "nothing").exists()


def test_sigkilled_holder_leaves_no_stale_lock(tiny_features, tmp_path, tiny_args):
    run = tmp_path / "run"
    holder, child = hold(run, "train", fork=True)
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
        os.kill(child, 0)  # the holder's forked child is still alive, and must not keep the lock
        assert main(["train", str(tiny_features), str(run), "--epochs", "1", "--no-plots", *tiny_args]) == 0
        assert (run / "summary.json").is_file()
    finally:
        os.kill(child, signal.SIGKILL)
        holder.stdin.close()


def test_evaluate_and_report_refused_while_a_train_holds_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    holder, _ = hold(run, "train")
    try:
        (run / "config.yaml").write_text("epochs: 1\n")
        for command in ("evaluate", "report"):
            assert main([command, str(run)]) == 2
            err = capsys.readouterr().err
            assert err == (
                f"vidcls {command}: error: {run} is in use by pid {holder.pid} (vidcls train); "
                f"wait for it to finish or use another RUN_DIR\n"
            )
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "config.yaml"]  # nothing written
    finally:
        release(holder)


def test_two_trains_into_one_run_dir(tiny_features, tmp_path, spawn_cli, tiny_args):
    """Started together: the first to lock trains; the other is refused, naming it."""
    run = tmp_path / "run"
    procs = {
        p.pid: p
        for p in (
            spawn_cli("train", tiny_features, run, "--epochs", 2, "--no-plots", *tiny_args) for _ in range(2)
        )
    }
    winner = None
    try:
        deadline = time.monotonic() + 120
        while winner is None and time.monotonic() < deadline:
            text = (run / LOCK_NAME).read_text() if (run / LOCK_NAME).exists() else ""
            pid = int(text.split()[0]) if text.split() else None
            winner = procs.get(pid)
            time.sleep(0.01)
        assert winner is not None, "neither train took the lock"
        # Pause the winner while it holds the lock, so the other one meets it however late it starts.
        os.kill(winner.pid, signal.SIGSTOP)
        (loser,) = [p for p in procs.values() if p is not winner]
        out = loser.communicate(timeout=120)[0]
    finally:
        if winner is not None:
            os.kill(winner.pid, signal.SIGCONT)
    winner_out = winner.communicate(timeout=300)[0]
    assert winner.returncode == 0, winner_out
    assert loser.returncode == 2, out
    assert f"vidcls train: error: {run} is in use by pid {winner.pid} (vidcls train)" in out
    assert (run / "summary.json").is_file()
