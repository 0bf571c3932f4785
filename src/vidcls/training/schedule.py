"""Where the learning-rate schedule stands within training, as small pure functions.

The optimiser's LR comes from ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``, stepped once
per batch with ``fractional_epoch``; ``lr_at`` is the same schedule in closed form, the reference it is
checked against and what a report can quote without building an optimiser.
"""
from __future__ import annotations

import math

__all__ = ["fractional_epoch", "lr_at"]


def fractional_epoch(epoch: int, batch_index: int, n_batches: int) -> float:
    """Schedule position after batch ``batch_index`` (0-based) of epoch ``epoch`` (0-based).

    Stepping with ``epoch + (i + 1) / n`` ends every epoch exactly on the next whole epoch, so the
    warm restarts fall on whole epochs whatever the number of batches.

    Args:
        epoch: epochs completed before this one.
        batch_index: index of the batch just trained, in ``[0, n_batches)``.
        n_batches: batches per epoch, >= 1.
    Returns:
        ``epoch + (batch_index + 1) / n_batches``: the position the LR of the next batch is set for.
    Raises:
        ValueError: ``n_batches < 1`` or ``batch_index`` outside ``[0, n_batches)``.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    if not 0 <= batch_index < n_batches:
        raise ValueError(f"batch_index must be in [0, {n_batches}), got {batch_index}")
    return epoch + (batch_index + 1) / n_batches


def lr_at(t: float, base_lr: float, eta_min: float, t0: int, t_mult: int) -> float:
    """Cosine annealing with warm restarts at (fractional) epoch ``t``, in closed form.

    Cycle k lasts ``t0 * t_mult**k`` epochs; within a cycle, at ``t_cur`` epochs from its start,
    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t_cur / length)) / 2``. So the LR is
    ``base_lr`` at every restart (t = 0, t0, t0 + t0 t_mult, ...) and falls towards ``eta_min``.

    Args:
        t: epochs into training, >= 0.
        base_lr, eta_min: the LR at each restart and its floor.
        t0: length of the first cycle in epochs, >= 1; t_mult: growth of each next cycle, >= 1.
    Returns:
        The learning rate.
    Raises:
        ValueError: ``t < 0``, ``t0 < 1`` or ``t_mult < 1``.
    """
    if t < 0:
        raise ValueError(f"t must be >= 0, got {t}")
    if t0 < 1 or t_mult < 1:
        raise ValueError(f"t0 and t_mult must be >= 1, got t0={t0}, t_mult={t_mult}")
    # Walk whole cycles rather than invert the geometric sum with a log: exact at the restarts.
    start, length = 0, t0
    while t >= start + length:
        start, length = start + length, length * t_mult
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * (t - start) / length)) / 2
