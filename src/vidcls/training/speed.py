"""What the training step needs to run on several processes and fast on CUDA: the model as it trains
(DDP, ``torch.compile``), mixed precision (``--amp``), and the loss each rank back-propagates.

Nothing here changes what is learned on one process without ``--amp``: the plain model, float32, the
criterion's batch mean.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as tdist
from torch import nn

from ..errors import ConfigError
from ..utils.dist import SINGLE, Dist

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``--amp bf16|fp16``; nothing for ``none``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """The gradient scaler fp16 needs (its 5 exponent bits underflow small gradients); a pass-through
    (``enabled=False``) otherwise, so the training step is written once."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def check_amp(amp: str, device: torch.device) -> None:
    """fp16 autocast is a CUDA feature; on CPU it is slower than float32 (bf16 works there)."""
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"--amp fp16 needs a CUDA device (this run uses {device}); use --amp bf16 or none")


def wrap_model(
    model: nn.Module, device: torch.device, dist: Dist = SINGLE, *, compile: bool = False
) -> nn.Module:
    """The module the training step calls: ``model`` itself, DistributedDataParallel under torchrun
    (gradients averaged over ranks after every backward), then ``torch.compile`` with ``compile``
    (``--compile``). Checkpoints always hold ``model``'s own state dict (no ``module.`` / ``_orig_mod.``
    prefixes)."""
    net = model
    if dist.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile:
        # lengths vary from batch to batch: dynamic shapes avoid one recompilation per new length
        # torch's stub types the result as a plain callable; given a module it returns an OptimizedModule
        net = torch.compile(net, dynamic=True)  # type: ignore[assignment]
    return net


def rank_loss(
    criterion: nn.Module, logits: torch.Tensor, y: torch.Tensor, real: torch.Tensor, dist: Dist = SINGLE
) -> tuple[torch.Tensor, float, int]:
    """The loss this rank back-propagates, the criterion's mean over its real videos, and their number.

    One process: the criterion's batch mean. Under DDP the gradients are averaged over the ranks, so a
    rank back-propagates (its share's mean) x (its videos) x world / (videos in the global batch): the
    average is then exactly the global batch's mean, however unevenly the batch divides, and a filler
    (``real`` False) counts nothing.
    """
    if not dist.active:
        loss = criterion(logits, y)
        return loss, float(loss.detach()), len(y)
    n_local = int(real.sum())
    n_global = int(sum_over_ranks([n_local], dist, logits.device)[0])
    if n_local == 0:  # only a filler: the step still runs (DDP needs every rank), with zero gradient
        return logits.sum() * 0.0, 0.0, 0
    mean = criterion(logits[real], y[real])
    return mean * (n_local * dist.world / n_global), float(mean.detach()), n_local


def sum_over_ranks(values: list, dist: Dist, device: torch.device) -> list:
    """``values`` (numbers) summed over all ranks (unchanged on one process)."""
    if not dist.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return [type(v)(x) for v, x in zip(values, t.tolist())]
