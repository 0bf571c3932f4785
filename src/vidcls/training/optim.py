"""Optimiser parameter groups: weight decay where AdamW users expect it.

Decay pulls weights towards 0. On weight matrices (Linear, LSTM ``weight_ih``/``weight_hh``, the
attention ``in_proj_weight``) that is the intended regulariser; on biases and normalisation gains it
only shifts or shrinks activations (a LayerNorm weight decayed towards 0 switches its unit off), so
every 1-D parameter is left undecayed, as in timm and the torchvision training references.
"""

from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed and an undecayed group.

    Args:
        model: any module.
        weight_decay: the decay of the weight matrices (tensors with 2 or more dimensions).

    Returns:
        Two AdamW groups, the matrices with ``weight_decay`` then the 1-D tensors with 0. Both are
        always present (the optimiser's state layout does not depend on the model); each parameter
        is in exactly one, in ``model.named_parameters()`` order.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
