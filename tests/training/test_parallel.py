"""``--parallel-members``: members trained in several processes equal the sequential ones; a failing
member is named and the others' work is kept; Ctrl-C stops every process; torchrun is refused."""

from __future__ import annotations

import errno
import json
import pickle
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vidcls.cli import main
from vidcls.config import TrainConfig
from vidcls.errors import CheckpointError, ConfigError, StoreError
from vidcls.reporting.monitor import ResourceMonitor
from vidcls.run.checkpoint import load_checkpoint
from vidcls.run.rundir import RunDir
from vidcls.training import parallel
from vidcls.training.context import TrainContext
from vidcls.training.fit import load_data
from vidcls.training.parallel import (
    check_parallel,
    member_device,
    train_members,
    worker_threads,
)
from vidcls.utils.dist import SINGLE, Dist, env_dist

TINY = (
    "--model bilstm_attn --min-steps 1 --hidden-dim 16 --layers 1 --heads 2 --device cpu --no-plots"
).split()


@pytest.fixture
def one_thread():
    """Both paths on one intra-op thread: the parallel path gives each process min(threads of the parent,
    cores // K), and a matmul split over another number of threads may round its sums differently."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def history(run: Path, member: int) -> list[dict]:
    rows = json.loads((run / f"members/{member}/history.json").read_text())
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


def summary_core(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    for key in ("resources", "wall_seconds"):
        s.pop(key)
    return s


def test_parallel_members_equal_sequential_members(tiny_features, tmp_path, capsys, one_thread):
    seq, par = tmp_path / "seq", tmp_path / "par"
    # three members in two processes: one process trains two of them, one after the other
    common = ["--epochs", 2, "--members", 3, *TINY]
    assert main([str(a) for a in ("train", tiny_features, seq, *common, "--workers", 0)]) == 0
    # --workers 1 here: a pool process must be able to start its own DataLoader workers, and the batches
    # (seeded per item) do not depend on the number of workers
    assert (
        main(
            [str(a) for a in ("train", tiny_features, par, *common, "--workers", 1, "--parallel-members", 2)]
        )
        == 0
    )
    out = capsys.readouterr().out
    for i in (0, 1, 2):
        for name in ("best", "last"):
            a = load_checkpoint(seq / f"members/{i}/checkpoints/{name}.pt")["model_state"]
            b = load_checkpoint(par / f"members/{i}/checkpoints/{name}.pt")["model_state"]
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), f"member {i} {name}.pt differs"
        assert history(seq, i) == history(par, i)
        assert len(history(par, i)) == 2
        assert f"[member {i}] epoch   2/2" in out  # the members' lines reach the parent's log, named
    assert summary_core(seq) == summary_core(par)  # and so does everything evaluated from them
    tags = [r.get("tag") for r in json.loads((par / "results/resource_utilization_log.json").read_text())]
    for i in (0, 1, 2):
        assert tags.count(f"member {i} start") == tags.count(f"member {i} end") == 1
        assert tags.index(f"member {i} start") < tags.index(f"member {i} end")


def test_a_failing_member_is_named_the_running_one_finishes_the_rest_is_skipped(
    tiny_features, tmp_path, one_thread
):
    """Member 0's last.pt is damaged: its resume fails in its process at once. Member 1, already
    running in the other process, trains to the end; member 2 (queued) never starts."""
    run = tmp_path / "run"
    cfg = TrainConfig(
        features_dir=str(tiny_features),
        model="bilstm_attn",
        min_steps=1,
        hidden_dim=16,
        layers=1,
        heads=2,
        device="cpu",
        plots=False,
        workers=0,
        members=2,
        epochs=1,
    ).validate()
    cfg, splits, weights, stats = load_data(cfg, log=lambda line: None)
    device = torch.device("cpu")
    monitor = ResourceMonitor(tmp_path / "resources.json")
    train_members(
        TrainContext(cfg, splits, weights, stats, device, RunDir(run), log=lambda line: None, monitor=monitor)
    )
    (run / "members/0/checkpoints/last.pt").write_bytes(b"not a checkpoint")

    lines = []
    cfg2 = TrainConfig(**{**cfg.to_dict(), "epochs": 2, "members": 3, "parallel_members": 2})
    with pytest.raises(CheckpointError, match=r"^member 0: no usable checkpoint") as err:
        train_members(
            TrainContext(
                cfg2,
                splits,
                weights,
                stats,
                device,
                RunDir(run),
                resume=True,
                log=lines.append,
                monitor=monitor,
            )
        )
    assert "members/0/checkpoints/last.pt" in str(err.value)
    assert any(line.startswith("[member 0] failed: CheckpointError") for line in lines)
    assert [r["epoch"] for r in json.loads((run / "members/1/history.json").read_text())] == [1, 2]
    assert load_checkpoint(run / "members/1/checkpoints/last.pt")["epoch"] == 2
    assert not (run / "members/2").exists()
    assert not any(line.startswith("[member 2]") for line in lines)


def epochs_done(run: Path, member: int) -> int:
    try:
        return len(json.loads((run / f"members/{member}/history.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigint_stops_every_member_process(tiny_features, tmp_path, spawn_cli):
    """SIGINT to the parent alone (as `kill -INT`): it stops the member processes, each keeps whole epochs."""
    run = tmp_path / "run"
    proc = spawn_cli(
        "train",
        tiny_features,
        run,
        "--epochs",
        100_000,
        "--patience-cycles",
        0,
        "--members",
        2,
        "--parallel-members",
        2,
        "--workers",
        0,
        *TINY,
    )
    deadline = time.time() + 120
    while (
        min(epochs_done(run, 0), epochs_done(run, 1)) < 1 and time.time() < deadline and proc.poll() is None
    ):
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:]
    assert "--resume" in out and "Traceback" not in out
    for i in (0, 1):
        # every epoch the history shows is in last.pt: the member stopped between its end-of-epoch writes
        assert load_checkpoint(run / f"members/{i}/checkpoints/last.pt")["epoch"] == epochs_done(run, i) >= 1


def test_parallel_members_under_torchrun_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = TrainConfig(members=2, parallel_members=2)
    ctx = TrainContext(cfg, None, None, None, torch.device("cpu"), RunDir(tmp_path / "run"), dist=env_dist())
    with pytest.raises(ConfigError) as err:  # refused before any data or process is touched
        train_members(ctx)
    assert str(err.value) == "--parallel-members and torchrun are two ways to use several processes; pick one"
    assert not (tmp_path / "run").exists()
    check_parallel(2, 1)  # a plain run
    check_parallel(1, 4)  # torchrun alone


def test_what_a_member_process_gets_is_picklable(tiny_features, tmp_path):
    """The parent's context holds a closure for a log and a running monitor (a thread): neither can be
    pickled. ``for_process`` is what each pool task is sent: the data, config and run directory, on the
    member's device, as one process (no torchrun group); it pickles and arrives whole."""
    cfg = TrainConfig(features_dir=str(tiny_features), device="cpu", members=2, parallel_members=2).validate()
    cfg, splits, weights, stats = load_data(cfg, log=lambda line: None)
    seen = []
    with ResourceMonitor(tmp_path / "resources.json") as monitor:
        ctx = TrainContext(
            cfg,
            splits,
            weights,
            stats,
            torch.device("cpu"),
            tmp_path / "run",
            resume=True,
            log=seen.append,
            monitor=monitor,
            dist=Dist(rank=0, world=1),
        )
        with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
            pickle.dumps(ctx)
        sent = pickle.loads(pickle.dumps(ctx.for_process(torch.device("cpu", 0))))
    assert isinstance(ctx.run, RunDir) and sent.run.root == tmp_path / "run"  # a path becomes a RunDir
    assert sent.device == torch.device("cpu", 0) and sent.monitor is None and sent.dist == SINGLE
    assert sent.cfg == cfg and sent.resume is True and torch.equal(sent.weights, weights)
    assert all(np.array_equal(a, b) for a, b in zip(sent.stats, stats, strict=True))
    assert sent.splits.class_names == splits.class_names and len(sent.splits.train) == len(splits.train)
    assert torch.equal(sent.splits.train[0][0], splits.train[0][0])  # the store reopens its file there


def test_member_devices_and_threads():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [member_device(cuda, i, 2) for i in range(5)] == [torch.device("cuda", g) for g in (0, 1, 0, 1, 0)]
    assert member_device(cuda, 3, 4) == torch.device("cuda", 3)
    assert member_device(torch.device("cuda", 1), 0, 4) == torch.device("cuda", 1)  # the user named the GPU
    assert member_device(cpu, 3, 0) == cpu
    assert worker_threads(2, 16, 16) == 8
    assert worker_threads(3, 16, 16) == 5
    assert worker_threads(2, 16, 4) == 4  # the parent's cap (OMP_NUM_THREADS) holds
    assert worker_threads(4, 2, 2) == 1  # never 0


def test_member_error_keeps_its_type_and_names_the_member():
    with pytest.raises(StoreError, match=r"^member 3: train\.h5 is damaged$") as err:
        parallel._raise_member_error(3, StoreError("train.h5 is damaged"))
    assert isinstance(err.value.__cause__, StoreError)
    with pytest.raises(FloatingPointError, match=r"^member 0: training loss became nan"):
        parallel._raise_member_error(0, FloatingPointError("training loss became nan at epoch 3"))
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as err:  # errno kept (the CLI prints it as one line), member in a note
        parallel._raise_member_error(2, disk_full)
    assert err.value.errno == errno.ENOSPC and "member 2" in err.value.__notes__[0]
    with pytest.raises(KeyboardInterrupt):
        parallel._raise_member_error(1, KeyboardInterrupt())
