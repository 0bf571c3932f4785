"""The epoch loop: what it writes and in which order, plots as optional output, and runs on stores
with very long videos (bounded batches end to end)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from vidcls.run.checkpoint import load_checkpoint
from vidcls.store import write_store
from vidcls.training import loop


def checkpoint_epoch(path: Path) -> int | None:
    return load_checkpoint(path)["epoch"] if path.exists() else None


def csv_rows(path: Path) -> int:
    with open(path, newline="") as fh:
        return len(list(csv.DictReader(fh)))


def test_failing_plots_are_a_warning_after_the_checkpoints(
    tiny_features, tmp_path, run_cli, tiny_args, monkeypatch
):
    """A plot that raises (matplotlib's mathtext on a class name, a full disk ...) must not end the run,
    and by the time plots are drawn the epoch's last.pt and metrics are already on disk."""
    calls = []

    def failing_plots(history, class_names, plots_dir):
        member_dir = Path(plots_dir).parent
        epoch = history[-1]["epoch"]
        calls.append(
            {
                "epoch": epoch,
                "last": checkpoint_epoch(member_dir / "checkpoints/last.pt"),
                "metrics_rows": csv_rows(member_dir / "metrics.csv"),
                "history": len(json.loads((member_dir / "history.json").read_text())),
            }
        )
        raise ValueError("ParseFatalException: Expected end of text, found '$'")

    monkeypatch.setattr(loop, "save_epoch_plots", failing_plots)
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            run_cli(
                "train", tiny_features, run, "--epochs", 2, "--members", 2, "--patience-cycles", 0, *tiny_args
            )
            == 0
        )
    # plotting was tried every epoch of both members, each time after last.pt and metrics.csv were written
    assert [(c["epoch"], c["last"], c["metrics_rows"], c["history"]) for c in calls] == [
        (1, 1, 1, 1),
        (2, 2, 2, 2),
    ] * 2
    for member in (0, 1):
        assert checkpoint_epoch(run / f"members/{member}/checkpoints/last.pt") == 2
        assert (run / f"members/{member}/checkpoints/best.pt").exists()
    assert json.loads((run / "summary.json").read_text())["members"][1]["epochs_run"] == 2
    plot_warnings = [w for w in caught if "epoch plots" in str(w.message)]
    assert len(plot_warnings) == 2  # once per member, not once per epoch
    assert all(issubclass(w.category, RuntimeWarning) for w in plot_warnings)
    assert "members/0/plots" in str(plot_warnings[0].message)
    assert "members/1/plots" in str(plot_warnings[1].message)
    assert "ParseFatalException" in str(plot_warnings[0].message)


def test_dollar_class_names_train_with_plots(tmp_path, run_cli, tiny_args):
    names = ["$5_to_$10", "a_$x$_b"]
    rng = np.random.default_rng(0)
    feats = tmp_path / "feats"
    feats.mkdir()
    for split, n in (("train", 16), ("val", 6), ("test", 6)):
        videos = [
            (f"{split}{i}", rng.normal(size=(int(rng.integers(4, 12)), 8)).astype(np.float32), i % 2)
            for i in range(n)
        ]
        write_store(feats / f"{split}.h5", videos, names, 8)
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_cli("train", feats, run, "--epochs", 2, "--patience-cycles", 0, *tiny_args) == 0
    assert checkpoint_epoch(run / "members/0/checkpoints/last.pt") == 2
    assert (run / "summary.json").exists()
    plots = {p.name for p in (run / "members/0/plots").iterdir()}
    assert {"current.png", "epoch_001.png", "epoch_002.png"} <= plots
    assert not [w for w in caught if "epoch plots" in str(w.message)]
    # and the run can be resumed for more epochs
    assert run_cli("train", feats, run, "--resume", "--epochs", 3) == 0
    assert checkpoint_epoch(run / "members/0/checkpoints/last.pt") == 3


def long_video_features(d: Path) -> Path:
    """Short videos (5-40 frames, D=4), one 30,000-frame video in val and in test, a 3,000-frame one in train."""
    rng = np.random.default_rng(1)
    d.mkdir()

    def video(vid, n, label):
        return vid, (rng.normal(size=(n, 4)) + label).astype(np.float16), label

    for split, n, long_frames in (("train", 30, 3_000), ("val", 9, 30_000), ("test", 9, 30_000)):
        videos = [video(f"{split}{i}", int(rng.integers(5, 41)), i % 3) for i in range(n)]
        videos.insert(n // 2, video(f"{split}_long", long_frames, 1))
        write_store(d / f"{split}.h5", videos, ["a", "b", "c"], 4, dtype="float16")
    return d


def test_a_30000_frame_video_trains_and_evaluates_in_bounded_batches(tmp_path, run_cli, tiny_args):
    """Padded to its longest video, a batch with the 30,000-frame video would ask the attention for
    B x heads x 30000^2 floats; thinned to max_frames and cut at batch_frames, it never sees more."""
    feats = long_video_features(tmp_path / "feats")
    seen = []

    def record(module, args):
        if isinstance(module, nn.MultiheadAttention):
            seen.append(tuple(args[0].shape))  # (B, T, hidden): the attention is B x heads x T x T

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        assert (
            run_cli(
                "train",
                feats,
                tmp_path / "run",
                "--epochs",
                2,
                "--patience-cycles",
                0,
                "--no-plots",
                "--tta-modes",
                "original,reverse",
                *tiny_args,
            )
            == 0
        )
    finally:
        handle.remove()
    cfg = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    max_frames, batch_frames = cfg["max_frames"], cfg["batch_frames"]
    assert (max_frames, batch_frames) == (512, 8192)  # the defaults, recorded with the run
    assert seen and max(T for _, T, _ in seen) == max_frames  # the long videos did go through, thinned
    assert max(B * T for B, T, _ in seen) <= batch_frames
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(tmp_path / f"run/members/0/checkpoints/{name}")
        assert ckpt["max_frames"] == 512 and ckpt["config"]["max_frames"] == 512
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert sum(summary["class_counts"]["test"].values()) == 10  # every test video scored, the long one too


# ---------------------------------------------------------------- best checkpoint and stopping


def _row(epoch, acc, loss):
    return {"epoch": epoch, "val_acc": acc, "val_loss": loss, "val_f1_macro": acc}


def test_a_saturated_score_is_tied_by_validation_loss():
    """On a small val split accuracy hits 1.0 early; the lower val loss then decides, not the first epoch."""
    cfg = loop.TrainConfig(patience_cycles=0)
    state = loop.TrainState()
    picks = [
        loop._record_epoch(cfg, state, _row(e, acc, loss))
        for e, acc, loss in [
            (1, 0.8, 0.9),
            (2, 1.0, 0.50),
            (3, 1.0, 0.40),
            (4, 1.0, 0.45),
            (5, 0.9, 0.10),
            (6, 1.0, 0.40),
            (7, 1.0, 0.40 * (1 - 0.5e-4)),
        ]
    ]
    # 2: higher score; 3: same score, lower loss; 4: same score, higher loss; 5: lower score, however low
    # its loss; 6: same score and same loss as the best: not better (the earlier one stays); 7: lower by
    # 0.005 %, inside the 0.01 % margin: noise, not better
    assert picks == [True, True, True, False, False, False, False]
    assert (state.best, state.best_loss, state.best_epoch) == (1.0, 0.40, 3)


def test_stopping_waits_for_the_end_of_the_cycle():
    """Best at epoch 2, cycles of 4 epochs (ends 4, 8): no stop mid-cycle at 5-7 however long without
    a gain; the stop comes at 8, the end of the cycle that brought nothing."""
    cfg = loop.TrainConfig(t0=4, t_mult=1, patience_cycles=1)
    state = loop.TrainState()
    stops = []
    for e in range(1, 9):
        loop._record_epoch(cfg, state, _row(e, 1.0 if e == 2 else 0.5, 0.3))
        stops.append(state.stopped_early)
    assert stops == [False] * 7 + [True] and state.best_epoch == 2
