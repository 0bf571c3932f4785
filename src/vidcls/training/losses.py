"""Focal losses with label smoothing and per-class weights, for imbalanced video classes: ``FocalLoss``
(one class per video, softmax) and ``BinaryFocalLoss`` (a label set per video, one sigmoid per class)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BinaryFocalLoss", "FocalLoss"]


def _check_options(alpha: Tensor | None, gamma: float, smoothing: float) -> Tensor | None:
    """``alpha`` as a float32 copy, after checking the three options (see ``FocalLoss``)."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if alpha is not None:
        alpha = torch.as_tensor(alpha, dtype=torch.float32).detach().clone()
        if alpha.dim() != 1 or alpha.numel() < 1:
            raise ValueError(f"alpha must be a 1-D (C,) tensor, got shape {tuple(alpha.shape)}")
        if not torch.isfinite(alpha).all() or (alpha < 0).any():
            raise ValueError(f"alpha must be finite and >= 0, got {alpha.tolist()}")
    return alpha


class _Focal(nn.Module):
    """What both focal losses hold: the checked ``alpha`` buffer, ``gamma`` and ``smoothing``."""

    alpha: Tensor | None  # a buffer (register_buffer in __init__)

    def __init__(self, alpha: Tensor | None = None, gamma: float = 2.0, smoothing: float = 0.1) -> None:
        super().__init__()
        alpha = _check_options(alpha, gamma, smoothing)
        self.gamma = float(gamma)
        self.smoothing = float(smoothing)
        # A None buffer is legal: it stays out of state_dict and .to() leaves it None.
        self.register_buffer("alpha", alpha)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, smoothing={self.smoothing}"


class FocalLoss(_Focal):
    """Class-weighted focal loss on label-smoothed targets.

    Per sample with true class y over C classes::

        q_c  = 1 - s on y, s / (C - 1) elsewhere      (smoothed target)
        ce   = -sum_c q_c * log_softmax(logits)_c
        pt   = exp(-ce)
        loss = alpha_y * (1 - pt) ** gamma * ce

    and the result is the plain batch mean (sum / B). With gamma=0, smoothing=0 and no alpha
    this is exactly ``F.cross_entropy``.

    Args:
        alpha: (C,) non-negative per-class weights, or None for all ones. Stored as a buffer so
            ``.to(device)`` and ``state_dict`` carry it.
        gamma: focusing exponent, >= 0; larger down-weights easy samples more.
        smoothing: label smoothing s in [0, 1).

    Raises:
        ValueError: gamma < 0, smoothing outside [0, 1), or alpha not a finite, non-negative
            1-D tensor.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Args: logits (B, C), target (B,) int64 class ids. Returns: scalar mean loss.

        Raises:
            ValueError: bad shapes, C < 2, or alpha's length != C.
        """
        if logits.dim() != 2:
            raise ValueError(f"logits must be (B, C), got {tuple(logits.shape)}")
        B, C = logits.shape
        if target.shape != (B,):
            raise ValueError(f"target must be ({B},), got {tuple(target.shape)}")
        if C < 2:
            raise ValueError(f"need at least 2 classes, got logits with C={C}")
        if self.alpha is not None and self.alpha.shape != (C,):
            raise ValueError(
                f"alpha has shape {tuple(self.alpha.shape)} but logits have "
                f"C={C} classes; alpha must be ({C},)"
            )

        # float32 even under autocast: (1 - pt) near 0 is where half precision loses it all.
        logp = F.log_softmax(logits.float(), dim=-1)  # (B, C)
        target = target.long()
        q = torch.full_like(logp, self.smoothing / (C - 1))  # (B, C)
        q.scatter_(1, target[:, None], 1.0 - self.smoothing)
        ce = -(q * logp).sum(dim=-1)  # (B,)
        pt = torch.exp(-ce)  # (B,)
        # The floor keeps d/dx x**gamma finite at x = 0 for 0 < gamma < 1 (else NaN grads when a
        # sample is predicted with probability exactly 1); its effect on the value is < 1e-12.
        focal = (1.0 - pt).clamp_min(1e-12) ** self.gamma  # (B,)
        loss = focal * ce  # (B,)
        if self.alpha is not None:
            loss = self.alpha[target] * loss
        return loss.mean()


class BinaryFocalLoss(_Focal):
    """The spec's recipe for label sets: a focal binary loss per class, label smoothing, and per-class
    weights on the positives.

    Per video with 0/1 labels y over C classes and logits z::

        q_c    = y_c (1 - s) + s / 2                          (smoothed binary target)
        bce_c  = -(q_c log sigmoid(z_c) + (1 - q_c) log sigmoid(-z_c))
        pt_c   = exp(-bce_c)
        w_c    = alpha_c on a positive (y_c = 1), 1 on a negative
        loss   = sum_c w_c (1 - pt_c) ** gamma * bce_c

    and the result is the mean over videos (the YouTube-8M starter code's reduction: summed over classes,
    so a video's loss does not shrink as the vocabulary grows). With gamma=0, smoothing=0 and no alpha this
    is exactly ``F.binary_cross_entropy_with_logits(z, y, reduction="sum") / B``. Weighting only the
    positives is what inverse frequency means here: a rare label's few positives count more; its many
    negatives are common to every class.

    Args:
        alpha: (C,) non-negative weights of each class's positives, or None for all ones (a buffer).
        gamma: focusing exponent, >= 0. smoothing: s in [0, 1).
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Args: logits (B, C), target (B, C) 0/1. Returns: scalar mean loss over the B videos.

        Raises:
            ValueError: bad shapes or alpha's length != C.
        """
        if logits.dim() != 2 or target.shape != logits.shape:
            raise ValueError(
                f"logits and target must both be (B, C); got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        C = logits.shape[1]
        if self.alpha is not None and self.alpha.shape != (C,):
            raise ValueError(f"alpha has shape {tuple(self.alpha.shape)} but logits have C={C} classes")
        z, y = logits.float(), target.float()  # float32 even under autocast, as FocalLoss
        q = y * (1.0 - self.smoothing) + self.smoothing / 2
        bce = F.binary_cross_entropy_with_logits(z, q, reduction="none")  # (B, C)
        loss = bce
        if self.gamma != 0:
            pt = torch.exp(-bce)
            loss = (1.0 - pt).clamp_min(1e-12) ** self.gamma * bce  # floor: see FocalLoss
        if self.alpha is not None:
            loss = loss * (1.0 + (self.alpha[None, :] - 1.0) * y)
        return loss.sum(dim=1).mean()
