"""Tests for vidcls.training.optim: which parameters AdamW decays."""

from __future__ import annotations

import torch

from vidcls.models import build_model
from vidcls.training.optim import param_groups


def test_bilstm_attn_groups():
    model = build_model(
        "bilstm_attn", feature_dim=8, n_classes=3, hidden_dim=8, layers=2, heads=2, dropout=0.1
    )
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for p in decay["params"]]
    undecayed = [names[id(p)] for p in no_decay["params"]]
    # every parameter in exactly one group
    assert sorted(decayed + undecayed) == sorted(names.values())
    assert not set(decayed) & set(undecayed)
    # hand-listed: the LSTM matrices of both layers and directions, attention in/out projections, Linears
    lstm = {f"lstm.weight_{k}_l{i}{r}" for k in ("ih", "hh") for i in (0, 1) for r in ("", "_reverse")}
    assert lstm <= set(decayed)
    assert {
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "proj.net.0.weight",
        "pool.score.0.weight",
        "head.net.0.weight",
        "head.net.4.weight",
    } <= set(decayed)
    # every bias and every LayerNorm weight is undecayed
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert norms == {"proj.net.1", "attn_norm", "head.net.1"}
    biases = {n for n in names.values() if "bias" in n}  # Linear, LayerNorm, LSTM bias_ih/hh, in_proj_bias
    assert set(undecayed) == biases | {f"{m}.weight" for m in norms}


def test_optimizer_applies_decay_only_to_matrices():
    """One AdamW step with zero gradients: only the decay moves a parameter."""
    model = build_model("mean_mlp", feature_dim=4, n_classes=2, hidden_dim=4, dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, 0.5), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if p.ndim >= 2:  # decoupled decay: p <- p * (1 - lr * wd)
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.5))
        else:
            torch.testing.assert_close(p.detach(), before[n])
