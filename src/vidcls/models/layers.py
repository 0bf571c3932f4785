"""Building blocks shared by the temporal models: masks, input projection, pooling, head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class Sizes:
    """The spec's model sizes: the one copy of the defaults every temporal model is built with
    (``build_model`` passes on only the sizes it is given)."""

    hidden_dim: int = 768
    layers: int = 4
    heads: int = 12
    dropout: float = 0.4
    clusters: int = 64  # netvlad, nextvlad: cluster centres K
    groups: int = 8  # nextvlad: groups G of the expanded frame
    expansion: int = 2  # nextvlad: expansion factor lambda of the frame


SPEC = Sizes()


def length_mask(lengths: Tensor, T: int) -> Tensor:
    """Boolean validity mask from per-row lengths.

    Args:
        lengths: (B,) integer tensor, each in [1, T].
        T: padded sequence length.

    Returns:
        (B, T) bool tensor, True on valid frames.

    Raises:
        ValueError: lengths is not 1-D integer, or a length is outside [1, T].
    """
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor, got {tuple(lengths.shape)} {lengths.dtype}")
    # One host sync per batch; a zero length would otherwise give NaN (softmax over no frames,
    # mean over no frames) far from its cause.
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths must be in [1, T={T}], got min {lo}, max {hi}")
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)


def check_input(x: Tensor, lengths: Tensor, feature_dim: int) -> None:
    if x.dim() != 3 or x.shape[-1] != feature_dim:
        raise ValueError(f"x must be (B, T, {feature_dim}), got {tuple(x.shape)}")
    if lengths.shape[0] != x.shape[0]:
        raise ValueError(f"lengths has {lengths.shape[0]} rows but x has {x.shape[0]}")


def check_sizes(
    *,
    feature_dim: int,
    n_classes: int,
    hidden_dim: int,
    dropout: float,
    layers: int | None = None,
    heads: int | None = None,
    even_hidden: bool = False,
    clusters: int | None = None,
    groups: int | None = None,
    expansion: int | None = None,
) -> None:
    """Raise ConfigError naming the option to change; ``None`` skips options a model lacks.

    ``groups`` and ``expansion`` go together (nextvlad): the frame, projected to ``hidden_dim`` and
    expanded to ``expansion * hidden_dim``, is split into ``groups`` equal parts.
    """
    if feature_dim < 1:
        raise ConfigError(f"feature_dim must be >= 1, got {feature_dim}")
    if n_classes < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
    # The heads halve hidden_dim, so 2 is the smallest width that leaves a unit.
    if hidden_dim < 2:
        raise ConfigError(f"hidden_dim must be >= 2, got {hidden_dim}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if layers is not None and layers < 1:
        raise ConfigError(f"layers must be >= 1, got {layers}")
    if heads is not None:
        if heads < 1:
            raise ConfigError(f"heads must be >= 1, got {heads}")
        if hidden_dim % heads != 0:
            raise ConfigError(
                f"hidden_dim ({hidden_dim}) must be divisible by heads ({heads}); change hidden_dim or heads"
            )
    if even_hidden and hidden_dim % 2 != 0:
        raise ConfigError(
            f"hidden_dim ({hidden_dim}) must be even: the BiLSTM gives each "
            f"direction hidden_dim // 2 units; change hidden_dim"
        )
    for name, value in (("clusters", clusters), ("groups", groups), ("expansion", expansion)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if groups is not None and expansion is not None and (expansion * hidden_dim) % groups != 0:
        raise ConfigError(
            f"expansion x hidden_dim ({expansion} x {hidden_dim} = {expansion * hidden_dim}) must be "
            f"divisible by groups ({groups}): nextvlad splits the expanded frame into that many equal parts; "
            f"change groups, expansion or hidden_dim"
        )


class InputProjection(nn.Module):
    """Linear(D -> H) -> LayerNorm -> ReLU -> Dropout: maps CNN features to the model width."""

    def __init__(self, feature_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, T, D) -> (B, T, H)


class AttentionPooling(nn.Module):
    """Learned weighted average over time; padded steps get weight exactly 0."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim // 2),
            nn.Tanh(),
            nn.Linear(hidden_dim // 2, 1),
        )

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Args: h (B, T, H), mask (B, T) True = valid. Returns: pooled (B, H), attn (B, T)."""
        scores = self.score(h).squeeze(-1)  # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))  # every row has >= 1 valid step
        attn = torch.softmax(scores, dim=-1)  # (B, T), 0 on padding
        # Zero padded features too: 0 * inf/NaN junk would still poison the sum.
        h = h.masked_fill(~mask[:, :, None], 0.0)
        pooled = torch.bmm(attn.unsqueeze(1), h).squeeze(1)  # (B, H)
        return pooled, attn


class ClassifierHead(nn.Module):
    """Linear(in -> mid) -> [LayerNorm] -> ReLU -> Dropout -> Linear(mid -> C)."""

    def __init__(self, in_dim: int, mid_dim: int, n_classes: int, dropout: float, layer_norm: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, mid_dim),
            nn.LayerNorm(mid_dim) if layer_norm else nn.Identity(),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(mid_dim, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, in) -> (B, C)


def sinusoidal_encoding(
    T: int, dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Fixed sin/cos position table ("Attention Is All You Need"), any T, any dim.

    Returns:
        (T, dim) tensor.
    """
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]  # (T, 1)
    half = (dim + 1) // 2
    freq = torch.exp(
        torch.arange(half, device=device, dtype=torch.float32) * (-2.0 * math.log(10000.0) / dim)
    )  # (half,)
    angles = pos * freq[None, :]  # (T, half)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]  # (T, dim)
    return pe.to(dtype) if dtype is not None else pe


class Standardized(nn.Module):
    """``net`` on standardised input: ``(x - mean) / std`` per feature, padded steps left at 0.

    ``mean`` and ``std`` are buffers, so they travel in the checkpoint's weights and every path that
    rebuilds the model (evaluation, prediction, serving) applies exactly the statistics training used.
    They start as the identity (0, 1); training sets them from the train split (``set_stats``).
    """

    mean: Tensor  # buffers (register_buffer), typed for the checker
    std: Tensor

    def __init__(self, net: nn.Module, feature_dim: int):
        super().__init__()
        self.net = net
        self.feature_dim = feature_dim
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    def set_stats(self, mean: Tensor | np.ndarray, std: Tensor | np.ndarray) -> None:
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != (self.feature_dim,) or std.shape != (self.feature_dim,) or not bool((std > 0).all()):
            raise ValueError(f"input statistics must be two ({self.feature_dim},) vectors with std > 0")
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(
        self, x: Tensor, lengths: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_input(x, lengths, self.feature_dim)
        mask = length_mask(lengths, x.shape[1])[:, :, None]  # (B, T, 1)
        x = ((x - self.mean.to(x.dtype)) / self.std.to(x.dtype)).masked_fill(~mask, 0.0)
        return self.net(x, lengths, return_attention)
