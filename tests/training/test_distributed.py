"""torchrun on CPU with gloo and 2 processes: the rank shares of an epoch, the DDP gradient of a global
batch, gathered validation, a whole training run, and a rank killed mid-run then resumed.

Expectations come from one process computing the same thing by the plain definitions: the sampler's
single-process draw, the criterion's mean over the whole batch, ``validate`` over every video.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from vidcls.data.batching import FILLER
from vidcls.data.dataset import FeatureDataset, collate, make_loader, train_sampler
from vidcls.evaluation.metrics import validate
from vidcls.models import build_from_spec, build_model
from vidcls.store.directory import open_splits
from vidcls.training.losses import FocalLoss

HERE = Path(__file__).parent
TINY = (
    "--model bilstm_attn --min-steps 1 --hidden-dim 16 --layers 1 --heads 2 --workers 0 --device cpu "
    "--batch-size 8 --no-plots --dist-timeout 60"
).split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_cmd(*args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        *map(str, args),
    ]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(_torchrun_cmd(*args), capture_output=True, text=True, timeout=timeout, env=_env())


@pytest.fixture(scope="module")
def checks(tiny_features, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp") / "checks.pt"
    done = _torchrun(HERE / "ddp_checks.py", tiny_features, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_the_ranks_shares_are_the_single_process_draw(checks, tiny_features):
    train = FeatureDataset(open_splits(tiny_features)["train"], augment=True)
    n_classes = len(train.store.class_names)
    sampler = train_sampler(train, torch.arange(1.0, n_classes + 1), seed=7)
    sampler.set_epoch(3)
    draw = list(sampler)  # one process: the weighted sample, each key (position, augmentation seed)
    r0, r1 = checks["shares"]
    assert len(r0) == len(r1) > 1  # every rank steps the same number of times
    union = []
    for b0, b1 in zip(r0, r1):
        real1 = [k for k in b1 if len(k) == 2]
        assert all(len(k) == 2 for k in b0) and all(k[2] == FILLER for k in b1 if len(k) == 3)
        batch = [None] * (len(b0) + len(real1))  # rank r holds videos r::2 of the global batch
        batch[0::2], batch[1::2] = b0, real1
        union += batch
    assert [tuple(k) for k in union] == [tuple(k) for k in draw]


def _model(tiny_features, state):
    store = open_splits(tiny_features)["train"]
    model = build_model(
        "bilstm_attn",
        feature_dim=store.feature_dim,
        n_classes=len(store.class_names),
        hidden_dim=16,
        layers=1,
        heads=2,
        dropout=0.0,
    )
    model.load_state_dict(state)
    return model


def test_ddp_gradient_is_the_global_batch_mean(checks, tiny_features):
    model = _model(tiny_features, checks["model_state"])
    train = FeatureDataset(open_splits(tiny_features)["train"], augment=True)
    criterion = FocalLoss(alpha=torch.arange(1.0, len(train.store.class_names) + 1), gamma=2.0, smoothing=0.1)

    def grads(keys):
        model.zero_grad(set_to_none=True)
        x, lengths, y, _ = collate([train[k] for k in keys])
        criterion(model(x.float(), lengths), y).backward()  # the plain batch mean over every video
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    torch.testing.assert_close(checks["grads_uneven"], grads(checks["keys5"]), rtol=1e-5, atol=1e-7)
    # a global batch of one video: rank 1's filler adds nothing
    torch.testing.assert_close(checks["grads_one"], grads([(4, 21)]), rtol=1e-5, atol=1e-7)


def test_gathered_validation_equals_one_process(checks, tiny_features):
    model = _model(tiny_features, checks["model_state"])
    stores = open_splits(tiny_features)
    val = FeatureDataset(stores["val"])
    criterion = FocalLoss(alpha=torch.arange(1.0, len(val.store.class_names) + 1), gamma=2.0, smoothing=0.1)
    single = validate(model, make_loader(val, 4), torch.device("cpu"), stores["val"].class_names, criterion)
    for gathered in checks["val"]:  # both ranks hold the same, all-videos metrics
        assert gathered["n"] == single["n"] == len(val)
        assert gathered["confusion_matrix"] == single["confusion_matrix"]
        assert gathered["accuracy"] == single["accuracy"] and gathered["f1_macro"] == single["f1_macro"]
        assert gathered["loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_torchrun_training_writes_complete_rank0_outputs(tiny_features, tmp_path):
    run = tmp_path / "run"
    done = _torchrun("-m", "vidcls", "train", tiny_features, run, *TINY, "--epochs", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (torchrun)" in done.stdout and done.stdout.count("epoch   3/3") == 1  # rank 0 speaks
    for name in (
        "config.yaml",
        "summary.json",
        "final.json",
        "calibration.json",
        "eval_val.json",
        "members/0/metrics.csv",
        "members/0/history.json",
        "members/0/checkpoints/best.pt",
        "members/0/checkpoints/last.pt",
    ):
        assert (run / name).is_file(), name
    log = json.loads((run / "results/resource_utilization_log.json").read_text())
    assert {r["rank"] for r in log} == {0, 1}
    assert sorted(p.name for p in (run / "results").iterdir()) == ["resource_utilization_log.json"]
    # the gathered validation of the best epoch is what one process measures with best.pt
    best = torch.load(run / "members/0/checkpoints/best.pt", weights_only=False)
    model = build_from_spec(best["model"])
    model.load_state_dict(best["model_state"])
    stores = open_splits(tiny_features)
    val = validate(
        model,
        make_loader(FeatureDataset(stores["val"], max_frames=512), 8),
        torch.device("cpu"),
        stores["val"].class_names,
    )
    row = json.loads((run / "members/0/history.json").read_text())[best["epoch"] - 1]
    assert row["val_acc"] == val["accuracy"] and row["val_f1_macro"] == val["f1_macro"]


def _wait_for(cond, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _rank_pid(launcher: psutil.Process, rank: int) -> int:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "vidcls" in " ".join(child.cmdline()):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no process of rank {rank}")


def test_a_killed_rank_ends_the_job_and_resume_completes_it(tiny_features, tmp_path):
    run = tmp_path / "run"
    last = run / "members/0/checkpoints/last.pt"
    job = subprocess.Popen(
        _torchrun_cmd("-m", "vidcls", "train", tiny_features, run, *TINY, "--epochs", "500"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    try:
        _wait_for(last.is_file, 120, "the first epoch")
        os.kill(_rank_pid(psutil.Process(job.pid), 1), signal.SIGKILL)
        t0 = time.time()
        output, _ = job.communicate(timeout=90)  # never a hang
    finally:
        job.kill()
    assert job.returncode != 0 and time.time() - t0 < 90
    assert re.search(r"Root Cause.*?rank\s*:\s*1 \(local_rank: 1\)", output, re.S), output[-2000:]
    done_epochs = torch.load(last, weights_only=False)["epoch"]
    assert 1 <= done_epochs < 500
    done = _torchrun(
        "-m", "vidcls", "train", tiny_features, run, *TINY, "--epochs", done_epochs + 2, "--resume"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    history = json.loads((run / "members/0/history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, done_epochs + 3))
    assert (run / "summary.json").is_file()


def test_a_global_batch_smaller_than_the_world_is_refused(tiny_features, tmp_path, monkeypatch, capsys):
    from vidcls.cli import main

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", str(tiny_features), str(tmp_path / "r"), *TINY, "--batch-size", "3"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 3 is the global batch" in err and "at least 4" in err
    assert not (tmp_path / "r").exists()  # refused before the process group or any file


def test_more_ranks_than_gpus_is_refused(monkeypatch):
    from vidcls.errors import ConfigError
    from vidcls.utils.dist import Dist, init

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--nproc_per_node=1"):
        init(Dist(rank=1, world=2, local_rank=1), torch.device("cuda"), 5)


def test_a_hung_rank_stops_the_others_after_the_timeout_with_one_line(tiny_features, tmp_path):
    run, log = tmp_path / "run", tmp_path / "job.log"
    with open(log, "w") as out:
        args = [*TINY[:-2], "--dist-timeout", "4", "--epochs", "500"]  # TINY ends with its own timeout
        job = subprocess.Popen(
            _torchrun_cmd("-m", "vidcls", "train", tiny_features, run, *args),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
    hung = None
    try:
        _wait_for((run / "members/0/checkpoints/last.pt").is_file, 120, "the first epoch")
        launcher = psutil.Process(job.pid)
        hung, rank0 = psutil.Process(_rank_pid(launcher, 1)), psutil.Process(_rank_pid(launcher, 0))
        hung.suspend()  # alive but silent: no torchrun agent notices, only the collective's timeout
        t0 = time.time()
        _wait_for(
            lambda: not rank0.is_running() or rank0.status() == psutil.STATUS_ZOMBIE, 60, "rank 0 to stop"
        )
        waited = time.time() - t0
        hung.resume()  # let torchrun's SIGTERM reach it
        job.wait(timeout=60)
    finally:
        if hung is not None and hung.is_running():
            hung.resume()
        job.kill()
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if "stopped answering" in ln]
    # rank 0 times out; rank 1, resumed, may find rank 0 gone and say so in the same one-line form
    assert all(ln.startswith("vidcls train: error: rank ") for ln in lines)
    lines = [
        ln for ln in lines if ln.startswith("vidcls train: error: rank 0: the other ranks stopped answering")
    ]
    assert len(lines) == 1
    assert "--resume" in lines[0] and "vidcls/training" not in text  # one line, no traceback of ours
    assert 3 <= waited < 30 and job.returncode != 0
