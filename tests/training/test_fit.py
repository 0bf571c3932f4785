"""Training loop, run directory, resume, and the CLI's handling of bad input."""

from __future__ import annotations

import csv
import json
import math
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from vidcls.cli import main
from vidcls.config import TrainConfig
from vidcls.data.dataset import collate
from vidcls.evaluation.metrics import classification_metrics
from vidcls.models import build_from_spec, build_model
from vidcls.run.checkpoint import load_checkpoint, save_checkpoint
from vidcls.store import write_store
from vidcls.training.loop import train_one_epoch

TINY = (
    "--model bilstm_attn --min-steps 1 --hidden-dim 16 --layers 1 --heads 2 --workers 0 --device cpu"
).split()
NAMES = ["animation", "gaming", "natural", "flat"]


@pytest.fixture
def feats(tiny_features) -> Path:
    return tiny_features


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def summary_core(run_dir: Path) -> dict:
    """summary.json without the fields that measure time or the machine."""
    s = json.loads((run_dir / "summary.json").read_text())
    s.pop("resources")
    s.pop("wall_seconds")
    return s


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "members/0/metrics.csv") as fh:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(fh)]


# ---------------------------------------------------------------- learning-rate schedule


def expected_lr(t: float, base=1e-3, eta_min=1e-6, t0=20, t_mult=2) -> float:
    """Closed form of cosine annealing with warm restarts at fractional epoch ``t``."""
    start, length = 0, t0
    while t >= start + length:
        start, length = start + length, length * t_mult
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * (t - start) / length)) / 2


def test_lr_follows_closed_form_at_fractional_epochs():
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=150)
    model = build_model("mean_mlp", feature_dim=4, n_classes=2, hidden_dim=8)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=cfg.t0, T_mult=cfg.t_mult, eta_min=cfg.eta_min
    )
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    batch = collate([(torch.randn(5, 4), 0, 0), (torch.randn(3, 4), 1, 1)])
    iters = 3
    loss = torch.nn.CrossEntropyLoss()
    for epoch in range(150):
        train_one_epoch(
            model,
            [batch] * iters,
            loss,
            opt,
            sched,
            epoch,
            device=torch.device("cpu"),
            epochs=cfg.epochs,
            grad_clip=cfg.grad_clip,
        )
    want = [expected_lr(e + i / iters) for e in range(150) for i in range(iters)]
    np.testing.assert_allclose(seen, want, rtol=1e-9, atol=1e-15)
    # restarts: back to the base LR at epochs 20, 60 and 140 (cycles of 20, 40, 80 epochs), not every 20 batches
    for e in (0, 20, 60, 140):
        assert seen[e * iters] == pytest.approx(1e-3, rel=1e-12)
    assert seen[19 * iters + 2] < 1e-5 and seen[59 * iters + 2] < 1e-5
    assert seen[40 * iters] == pytest.approx(expected_lr(40)) and seen[40 * iters] < 6e-4


# ---------------------------------------------------------------- a whole run


def test_train_writes_the_run_directory(feats, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("checkpoint_every: 2\nkeep_checkpoints: 3\nlr: 0.003\n")
    assert run_cli("train", feats, run, "--config", cfg, "--epochs", 10, "--patience-cycles", 0, *TINY) == 0
    member = run / "members/0"
    saved = (run / "config.yaml").read_text()
    assert "lr: 0.003" in saved and "checkpoint_every: 2" in saved and "epochs: 10" in saved
    with open(member / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10
    for col in [
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "val_f1_weighted",
        "val_f1_macro",
        "val_f1_worst",
        "epoch_seconds",
    ] + [f"val_f1_{n}" for n in NAMES]:
        assert col in rows[0]
    assert float(rows[0]["lr"]) == pytest.approx(0.003)
    assert all(0 <= float(r["val_acc"]) <= 1 for r in rows)
    assert len(json.loads((member / "history.json").read_text())) == 10
    ckpts = sorted(p.name for p in (member / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "epoch_006.pt", "epoch_008.pt", "epoch_010.pt", "last.pt"]
    plots = {p.name for p in (member / "plots").iterdir()}
    assert {"current.png", "epoch_001.png", "epoch_010.png"} <= plots
    log = json.loads((run / "results/resource_utilization_log.json").read_text())
    assert log[0]["tag"] == "start" and log[-1]["tag"] == "end"

    s = json.loads((run / "summary.json").read_text())
    assert s["classes"] == NAMES
    m = s["members"][0]
    assert m["seed"] == 42 and 1 <= m["best_epoch"] <= 10 and m["stopped_early"] is False
    best_row = rows[m["best_epoch"] - 1]
    assert max(float(r["val_acc"]) for r in rows) == pytest.approx(float(best_row["val_acc"]))
    assert m["val"]["accuracy"] == pytest.approx(float(best_row["val_acc"]))
    for key in ("accuracy", "f1_weighted", "f1_macro", "f1_per_class", "worst_class_f1"):
        assert key in s["test"]
    assert {"cpu_percent", "ram_used_gb"} <= set(s["resources"])

    # best.pt alone rebuilds the model and reproduces the reported test accuracy
    best = load_checkpoint(member / "checkpoints/best.pt")
    assert best["class_names"] == NAMES and best["feature_dim"] == 16
    model = build_from_spec(best["model"])
    model.load_state_dict(best["model_state"])
    model.eval()
    with h5py.File(feats / "test.h5") as f:
        offsets, x, labels = f["offsets"][:], f["features"][:], f["labels"][:]
    probs = []
    with torch.no_grad():
        for i in range(len(labels)):
            v = torch.from_numpy(x[offsets[i] : offsets[i + 1]].astype(np.float32))[None]
            probs.append(torch.softmax(model(v, torch.tensor([len(v[0])])), 1)[0].numpy())
    assert classification_metrics(labels, np.array(probs), NAMES)["accuracy"] == pytest.approx(
        m["test"]["accuracy"]
    )


def test_early_stopping_and_select(feats, tmp_path):
    run = tmp_path / "run"
    # lr 1e-12: every update rounds away in float32, so score and val loss never change after epoch 1.
    # Cycles of 2 epochs end at 2, 4, 6, ...: at 2 the best (epoch 1) lies in the cycle just ended; at 4
    # the last whole cycle (3-4) brought nothing better, so the run stops there, at a cycle end.
    assert (
        run_cli("train", feats, run, "--epochs", 20, "--patience-cycles", 3, "--lr", 0, "--no-plots", *TINY)
        == 2
    )
    assert (
        run_cli(
            "train",
            feats,
            run,
            "--epochs",
            20,
            "--t0",
            2,
            "--t-mult",
            1,
            "--patience-cycles",
            1,
            "--lr",
            1e-12,
            "--no-plots",
            "--select",
            "val_f1_macro",
            *TINY,
        )
        == 0
    )
    s = json.loads((run / "summary.json").read_text())["members"][0]
    assert s["stopped_early"] is True and s["epochs_run"] == 4 and s["best_epoch"] == 1
    assert s["select"] == "val_f1_macro"


def test_test_split_never_influences_training(feats, tmp_path):
    """Scrambling the test labels changes the test score only, never the epochs or the chosen model."""
    scrambled = tmp_path / "feats"
    scrambled.mkdir()
    for split in ("train", "val", "test"):
        (scrambled / f"{split}.h5").write_bytes((feats / f"{split}.h5").read_bytes())
    with h5py.File(scrambled / "test.h5", "r+") as f:
        f["labels"][...] = (f["labels"][:] + 1) % 4
    for src, run in ((feats, tmp_path / "a"), (scrambled, tmp_path / "b")):
        assert run_cli("train", src, run, "--epochs", 4, "--no-plots", *TINY) == 0
    a, b = summary_core(tmp_path / "a"), summary_core(tmp_path / "b")
    assert a["members"][0]["val"] == b["members"][0]["val"]
    assert a["members"][0]["best_epoch"] == b["members"][0]["best_epoch"]
    assert metrics_rows(tmp_path / "a") == metrics_rows(tmp_path / "b")
    assert a["test"]["support_per_class"] != b["test"]["support_per_class"]  # it did read the new labels


# ---------------------------------------------------------------- resume


def epochs_done(run: Path) -> int:
    path = run / "members/0/history.json"
    try:
        return len(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.parametrize("kill_after,delay", [(1, 0.0), (3, 0.15), (5, 0.05)])
def test_resume_after_sigkill_gives_the_same_summary(feats, tmp_path, kill_after, delay, spawn_cli):
    common = ["--epochs", 7, "--patience-cycles", 0, "--seed", 5, *TINY]
    ref = tmp_path / "ref"
    assert run_cli("train", feats, ref, *common) == 0

    run = tmp_path / "killed"
    proc = spawn_cli("train", feats, run, *common)
    deadline = time.time() + 120
    while epochs_done(run) < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = epochs_done(run)
    assert done < 7, "the run finished before it could be killed; make it longer"
    # a resumed run may use another number of workers: augmentation is seeded per item, not per worker
    resumed = [a if a != "0" or common[i - 1] != "--workers" else "2" for i, a in enumerate(map(str, common))]
    assert run_cli("train", feats, run, *resumed, "--resume") == 0
    assert summary_core(run) == summary_core(ref)
    assert metrics_rows(run) == metrics_rows(ref)


def test_resume_refuses_a_different_config_and_new_run_refuses_old_dir(feats, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", feats, run, "--epochs", 2, "--no-plots", *TINY) == 0
    before = (run / "members/0/checkpoints/last.pt").read_bytes()
    assert run_cli("train", feats, run, "--epochs", 2, *TINY) == 2
    assert "--resume" in capsys.readouterr().err
    assert run_cli("train", feats, run, "--resume", "--lr", "0.5", "--dropout", "0.1") == 2
    err = capsys.readouterr().err
    assert "lr: 0.001 -> 0.5" in err and "dropout" in err
    assert (run / "members/0/checkpoints/last.pt").read_bytes() == before
    # more epochs is allowed, and only the flags given change: the rest comes from the saved config
    assert run_cli("train", feats, run, "--resume", "--epochs", 3) == 0
    assert len(metrics_rows(run)) == 3


def test_a_run_stopped_before_its_first_checkpoint_may_be_started_again(feats, tmp_path, capsys):
    """A config.yaml without any member checkpoint (a run stopped in its first epoch, or one whose loss
    diverged there) holds no trained member: a new run, with other options, may take the directory.
    One checkpoint later the directory is refused to a new run."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("lr: 0.5\n")
    assert run_cli("train", feats, run, "--epochs", 1, "--no-plots", *TINY) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 0.001
    assert run_cli("train", feats, run, "--epochs", 1, "--no-plots", *TINY) == 2
    assert "already holds a training run; pass --resume" in capsys.readouterr().err


def test_resume_accepts_the_features_dir_spelled_another_way(feats, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert run_cli("train", feats, run, "--epochs", 1, "--no-plots", *TINY) == 0
    monkeypatch.chdir(Path(feats).parent)
    assert run_cli("train", Path(feats).name, run, "--resume", "--epochs", 2) == 0  # relative: same dir
    assert len(metrics_rows(run)) == 2
    other = tmp_path / "other"
    other.mkdir()
    assert run_cli("train", other, run, "--resume", "--epochs", 3) == 2  # another dir: refused
    assert "features_dir" in capsys.readouterr().err


def test_resume_of_an_incompatible_optimiser_state_is_one_clear_line(feats, tmp_path, capsys):
    """A last.pt whose AdamW state has one parameter group (no decay-free group) cannot be continued."""
    run = tmp_path / "run"
    assert run_cli("train", feats, run, "--epochs", 1, "--no-plots", *TINY) == 0
    path = run / "members/0/checkpoints/last.pt"
    ckpt = load_checkpoint(path)
    opt = ckpt["optimizer_state"]
    merged = dict(opt["param_groups"][0], params=[i for g in opt["param_groups"] for i in g["params"]])
    opt["param_groups"] = [merged]
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    capsys.readouterr()
    assert run_cli("train", feats, run, "--resume", "--epochs", 2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt" in err[0] and "start a new run" in err[0]


def test_corrupt_last_falls_back_to_periodic(feats, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("checkpoint_every: 2\n")
    assert (
        run_cli(
            "train", feats, run, "--config", cfg, "--epochs", 5, "--patience-cycles", 0, "--no-plots", *TINY
        )
        == 0
    )
    (run / "members/0/checkpoints/last.pt").write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="epoch_004.pt"):
        assert run_cli("train", feats, run, "--resume", "--epochs", 6) == 0
    hist = json.loads((run / "members/0/history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5, 6]


def test_sigint_saves_and_tells_how_to_resume(feats, tmp_path, spawn_cli):
    run = tmp_path / "run"
    # far more epochs than can run before the signal, however fast or slow the machine is
    proc = spawn_cli("train", feats, run, "--epochs", 100_000, "--patience-cycles", 0, "--no-plots", *TINY)
    deadline = time.time() + 120
    while epochs_done(run) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    seen = epochs_done(run)
    assert proc.poll() is None and seen >= 2, proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in out and "Traceback" not in out
    # every epoch the history shows is in last.pt: Ctrl-C never splits the end-of-epoch writes
    assert load_checkpoint(run / "members/0/checkpoints/last.pt")["epoch"] >= seen >= 2


# ---------------------------------------------------------------- bad input


def write(path, videos, names=NAMES, dim=16):
    return write_store(path, videos, names, dim)


def vids(n, dim=16, labels=(0, 1, 2, 3), frames=10, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"v{i}", rng.random((frames, dim), dtype=np.float32), labels[i % len(labels)]) for i in range(n)]


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "train.h5"),
        ("dim_mismatch", "feature_dim"),
        ("class_mismatch", "class"),
        ("nan", "v3"),
        ("empty_split", "val.h5"),
        ("absent_class", "flat"),
        ("single_class", "one class"),
    ],
)
def test_bad_features_give_clear_errors(tmp_path, capsys, case, needle):
    d = tmp_path / "f"
    d.mkdir()
    if case == "single_class":
        write(d / "train.h5", vids(24, labels=(0,)), names=["only"])
    elif case != "missing":
        write(d / "train.h5", vids(24, labels=(0, 1, 2) if case == "absent_class" else (0, 1, 2, 3)))
    if case == "dim_mismatch":
        write(d / "val.h5", vids(8, dim=8), dim=8)
    if case == "class_mismatch":
        write(d / "val.h5", vids(8), names=["a", "b", "c", "d"])
    if case == "nan":  # the writer refuses NaN, so damage the file afterwards
        write(d / "val.h5", vids(8))
        with h5py.File(d / "val.h5", "r+") as f:
            f["features"][int(f["offsets"][3]) + 2, 5] = np.nan
    if case == "empty_split":
        write(d / "val.h5", [])
    run = tmp_path / "run"
    assert run_cli("train", d, run, "--epochs", 1, *TINY) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (run / "members").exists()


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--batch-size", "0"], "--batch-size"),
        (
            ["--model", "lstm9000"],
            "valid names: auto, bilstm_attn, inception_time, mean_mlp, netvlad, nextvlad, transformer",
        ),
        (["--select", "loss"], "--select"),
        (["--heads", "5"], "heads"),
    ],
)
def test_bad_options_give_clear_errors(feats, tmp_path, capsys, flags, needle):
    assert run_cli("train", feats, tmp_path / "run", "--epochs", 1, *TINY, *flags) == 2
    assert needle in capsys.readouterr().err


def test_unknown_config_key_is_an_error(feats, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nlearning_rate: 0.1\n")
    assert run_cli("train", feats, tmp_path / "run", "--config", cfg) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and str(cfg) in err and "lr" in err


def test_synth_and_info_cli(tmp_path, capsys):
    assert run_cli("synth", tmp_path / "s", "--videos", 60, "--dim", 8) == 0
    assert run_cli("info", tmp_path / "s" / "train.h5") == 0
    out = capsys.readouterr().out
    assert "animation" in out and "feature dim" in out


def test_unusable_checkpoints_are_a_clear_error(feats, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", feats, run, "--epochs", 2, "--no-plots", *TINY) == 0
    for p in (run / "members/0/checkpoints").glob("*.pt"):
        p.write_bytes(b"PK\x03\x04 truncated")
    assert run_cli("train", feats, run, "--resume", "--epochs", 3) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "corrupt" in err and "Traceback" not in err
    assert run_cli("evaluate", run, "--device", "cpu") == 2
    assert "best.pt" in capsys.readouterr().err
    assert run_cli("evaluate", tmp_path / "nothing") == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_import_cli_round_trip(tmp_path, capsys):
    npy = tmp_path / "npy"
    npy.mkdir()
    rng = np.random.default_rng(0)
    rows = ["video_id,label,split"]
    for i in range(12):
        np.save(npy / f"clip{i}.npy", rng.random((5 + i, 8), dtype=np.float32))
        rows.append(f"clip{i},{'cat' if i % 2 else 'dog'},{'train' if i < 8 else 'test'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert run_cli("import", "npy", npy, tmp_path / "labels.csv", tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.h5")) == ["test.h5", "train.h5"]
    assert run_cli("info", tmp_path / "out/train.h5") == 0
    out = capsys.readouterr().out
    assert "cat: 4" in out and "dog: 4" in out
    with h5py.File(tmp_path / "padded.h5", "w") as f:
        f["features"] = np.zeros((3, 6, 4), np.float32) + np.arange(6)[None, :, None]
        f["labels"] = [0, 1, 0]
        f["num_frames"] = [6, 2, 4]
        f.attrs["category_mapping"] = json.dumps({"x": 0, "y": 1})
    assert run_cli("import", "padded-h5", tmp_path / "padded.h5", tmp_path / "conv.h5") == 0
    with h5py.File(tmp_path / "conv.h5") as f:
        assert f["offsets"][:].tolist() == [0, 6, 8, 12]
        assert f["features"][6:8, 0].tolist() == [0, 1]


def test_auto_model_is_resolved_and_recorded_before_training(feats, tmp_path, capsys):
    """feats holds 16-value frames: auto trains inception_time, and config.yaml, the checkpoint and the
    summary name the model trained, not "auto"."""
    run = tmp_path / "run"
    args = [a for a in TINY if a not in ("--model", "bilstm_attn")]
    assert run_cli("train", feats, run, "--epochs", 1, "--no-plots", *args) == 0
    assert "--model auto: inception_time for 16-dimensional frames" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == "inception_time"
    assert (
        torch.load(run / "members/0/checkpoints/best.pt", weights_only=False)["model"]["name"]
        == "inception_time"
    )
    assert json.loads((run / "summary.json").read_text())["model"] == "inception_time"


def test_checkpoints_carry_the_train_split_statistics(feats, tmp_path):
    """--standardize feature (default): the mean/std buffers of every checkpoint are the per-feature
    statistics of train.h5's frames alone (val.h5 and test.h5 differ and must not count)."""
    from vidcls.store import FeatureStore

    run = tmp_path / "run"
    assert run_cli("train", feats, run, "--epochs", 1, "--no-plots", *TINY) == 0
    store = FeatureStore(Path(feats) / "train.h5")
    frames = np.concatenate([store.read(i).astype(np.float64) for i in range(len(store))])
    store.close()
    state = torch.load(run / "members/0/checkpoints/best.pt", weights_only=False)["model_state"]
    np.testing.assert_allclose(state["mean"].numpy(), frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["std"].numpy(), frames.std(0), rtol=1e-5)
    assert (
        run_cli("train", feats, tmp_path / "raw", "--epochs", 1, "--no-plots", "--standardize", "none", *TINY)
        == 0
    )
    raw = torch.load(tmp_path / "raw/members/0/checkpoints/best.pt", weights_only=False)["model_state"]
    assert "mean" not in raw and "std" not in raw
