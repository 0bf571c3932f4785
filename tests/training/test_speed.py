"""--amp, --bucket and the rank loss of one process, as a user reaches them through ``vidcls train``."""

from __future__ import annotations

import json

import pytest
import torch

from vidcls.cli import main
from vidcls.errors import ConfigError
from vidcls.training.losses import FocalLoss
from vidcls.training.speed import autocast, check_amp, grad_scaler, rank_loss

TINY = (
    "--model bilstm_attn --min-steps 1 --hidden-dim 16 --layers 1 --heads 2 --workers 0 --device cpu "
    "--no-plots --epochs 2"
).split()


def test_fp16_on_cpu_is_refused_in_one_line(tiny_features, tmp_path, capsys):
    assert main(["train", str(tiny_features), str(tmp_path / "r"), *TINY, "--amp", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--amp fp16 needs a CUDA device" in err
    assert not (tmp_path / "r" / "config.yaml").exists()  # refused before anything is written
    with pytest.raises(ConfigError):
        check_amp("fp16", torch.device("cpu"))
    check_amp("bf16", torch.device("cpu"))  # bf16 autocast exists on CPU


def test_bf16_trains_and_keeps_float32_weights(tiny_features, tmp_path):
    run = tmp_path / "r"
    assert main(["train", str(tiny_features), str(run), *TINY, "--amp", "bf16", "--bucket"]) == 0
    history = json.loads((run / "members/0/history.json").read_text())
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    ckpt = torch.load(run / "members/0/checkpoints/last.pt", weights_only=False)
    assert all(t.dtype == torch.float32 for t in ckpt["model_state"].values() if t.is_floating_point())
    assert ckpt["config"]["amp"] == "bf16" and ckpt["config"]["bucket"] is True


def test_autocast_runs_matmuls_in_bf16_and_the_scaler_only_for_fp16():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "none"):
        assert (a @ a).dtype == torch.float32
    assert not grad_scaler(torch.device("cpu"), "bf16").is_enabled()
    assert not grad_scaler(torch.device("cpu"), "none").is_enabled()


def test_one_process_rank_loss_is_the_criterion_mean():
    logits, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    criterion = FocalLoss(alpha=torch.tensor([1.0, 2.0, 0.5]))
    loss, mean, n = rank_loss(criterion, logits, y, torch.ones(5, dtype=torch.bool))
    assert n == 5 and loss.item() == pytest.approx(mean) == pytest.approx(criterion(logits, y).item())
