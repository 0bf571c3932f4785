"""Temporal models over per-frame CNN features: (B, T, D) frame features -> (B, C) logits.

Every model has the same call: ``model(x, lengths, return_attention=False)`` where ``x`` is
(B, T, D) zero-padded after each row's length and ``lengths`` (B,) counts the valid frames.
Padding never reaches the output: recurrences run over packed sequences, attention masks the
padded keys, pooling gives padded steps weight 0. So in eval mode a video's logits do not depend
on how much padding its batch has (tests/test_models.py checks this for every model).

Models are created by name, timm-style::

    model = build_model("bilstm_attn", feat_dim=1280, n_classes=4)
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    "MODELS",
    "AttentionPooling",
    "BiLSTMAttention",
    "ClassifierHead",
    "InputProjection",
    "MeanMLP",
    "TemporalTransformer",
    "build_model",
    "list_models",
    "length_mask",
]


# ----------------------------------------------------------------------------------------------
# helpers and shared building blocks


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
        raise ValueError(f"lengths must be a 1-D integer tensor, got {tuple(lengths.shape)} "
                         f"{lengths.dtype}")
    # One host sync per batch; a zero length would otherwise give NaN (softmax over no frames,
    # mean over no frames) far from its cause.
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths must be in [1, T={T}], got min {lo}, max {hi}")
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)


def _check_x(x: Tensor, lengths: Tensor, feat_dim: int) -> None:
    if x.dim() != 3 or x.shape[-1] != feat_dim:
        raise ValueError(f"x must be (B, T, {feat_dim}), got {tuple(x.shape)}")
    if lengths.shape[0] != x.shape[0]:
        raise ValueError(f"lengths has {lengths.shape[0]} rows but x has {x.shape[0]}")


def _validate(*, feat_dim: int, n_classes: int, hidden_dim: int, dropout: float,
              layers: int | None = None, heads: int | None = None, even_hidden: bool = False
              ) -> None:
    """Raise ValueError naming the option to change; ``None`` skips options a model lacks."""
    if feat_dim < 1:
        raise ValueError(f"feat_dim must be >= 1, got {feat_dim}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    # The heads halve hidden_dim, so 2 is the smallest width that leaves a unit.
    if hidden_dim < 2:
        raise ValueError(f"hidden_dim must be >= 2, got {hidden_dim}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if layers is not None and layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    if heads is not None:
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        if hidden_dim % heads != 0:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by heads ({heads}); "
                             f"change hidden_dim or heads")
    if even_hidden and hidden_dim % 2 != 0:
        raise ValueError(f"hidden_dim ({hidden_dim}) must be even: the BiLSTM gives each "
                         f"direction hidden_dim // 2 units; change hidden_dim")


class InputProjection(nn.Module):
    """Linear(D -> H) -> LayerNorm -> ReLU -> Dropout: maps CNN features to the model width."""

    def __init__(self, feat_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feat_dim, hidden_dim),
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
        scores = self.score(h).squeeze(-1)                    # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))     # every row has >= 1 valid step
        attn = torch.softmax(scores, dim=-1)                  # (B, T), 0 on padding
        # Zero padded features too: 0 * inf/NaN junk would still poison the sum.
        h = h.masked_fill(~mask[:, :, None], 0.0)
        pooled = torch.bmm(attn.unsqueeze(1), h).squeeze(1)   # (B, H)
        return pooled, attn


class ClassifierHead(nn.Module):
    """Linear(in -> mid) -> [LayerNorm] -> ReLU -> Dropout -> Linear(mid -> C)."""

    def __init__(self, in_dim: int, mid_dim: int, n_classes: int, dropout: float,
                 layer_norm: bool = True):
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


def sinusoidal_encoding(T: int, dim: int, device=None, dtype=None) -> Tensor:
    """Fixed sin/cos position table ("Attention Is All You Need"), any T, any dim.

    Returns:
        (T, dim) tensor.
    """
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]            # (T, 1)
    half = (dim + 1) // 2
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32)
                     * (-2.0 * math.log(10000.0) / dim))                          # (half,)
    angles = pos * freq[None, :]                                                  # (T, half)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]    # (T, dim)
    return pe.to(dtype) if dtype is not None else pe


# ----------------------------------------------------------------------------------------------
# models


class BiLSTMAttention(nn.Module):
    """Projection -> packed BiLSTM -> masked self-attention (+residual, LN) -> attention pooling
    -> classifier. The source architecture and the default model."""

    def __init__(self, feat_dim: int, n_classes: int, hidden_dim: int = 768, layers: int = 4,
                 heads: int = 12, dropout: float = 0.4):
        super().__init__()
        _validate(feat_dim=feat_dim, n_classes=n_classes, hidden_dim=hidden_dim,
                  dropout=dropout, layers=layers, heads=heads, even_hidden=True)
        self.feat_dim = feat_dim
        self.proj = InputProjection(feat_dim, hidden_dim, dropout / 2)
        self.lstm = nn.LSTM(
            hidden_dim, hidden_dim // 2, num_layers=layers, batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,  # nn.LSTM warns on dropout with 1 layer
        )
        self.attn = nn.MultiheadAttention(hidden_dim, heads, dropout=dropout, batch_first=True)
        self.attn_norm = nn.LayerNorm(hidden_dim)
        self.pool = AttentionPooling(hidden_dim)
        self.head = ClassifierHead(hidden_dim, hidden_dim // 2, n_classes, dropout)

    def forward(self, x: Tensor, lengths: Tensor, return_attention: bool = False):
        _check_x(x, lengths, self.feat_dim)
        B, T, _ = x.shape
        mask = length_mask(lengths, T)                                     # (B, T)
        h = self.proj(x)                                                   # (B, T, H)
        # Packing makes the backward direction start at each row's last valid frame, not at
        # the padding; that is what keeps logits independent of the padded length.
        packed = nn.utils.rnn.pack_padded_sequence(
            h, lengths.detach().cpu().long(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, H)
        a, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)     # (B, T, H)
        h = self.attn_norm(h + a)                                          # (B, T, H)
        pooled, attn = self.pool(h, mask)                                  # (B, H), (B, T)
        logits = self.head(pooled)                                         # (B, C)
        return (logits, attn) if return_attention else logits


class TemporalTransformer(nn.Module):
    """Projection + sinusoidal positions -> pre-LN Transformer encoder (padding masked) ->
    attention pooling -> classifier."""

    def __init__(self, feat_dim: int, n_classes: int, hidden_dim: int = 768, layers: int = 4,
                 heads: int = 12, dropout: float = 0.4):
        super().__init__()
        _validate(feat_dim=feat_dim, n_classes=n_classes, hidden_dim=hidden_dim,
                  dropout=dropout, layers=layers, heads=heads)
        self.feat_dim = feat_dim
        self.hidden_dim = hidden_dim
        self.proj = InputProjection(feat_dim, hidden_dim, dropout / 2)
        layer = nn.TransformerEncoderLayer(
            hidden_dim, heads, dim_feedforward=2 * hidden_dim, dropout=dropout,
            batch_first=True, norm_first=True)
        # Pre-LN leaves the residual stream un-normalised, hence the final norm. Nested tensors
        # are off so eval and train take the same, plainly masked, path.
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(hidden_dim),
                                             enable_nested_tensor=False)
        self.pool = AttentionPooling(hidden_dim)
        self.head = ClassifierHead(hidden_dim, hidden_dim // 2, n_classes, dropout)

    def forward(self, x: Tensor, lengths: Tensor, return_attention: bool = False):
        _check_x(x, lengths, self.feat_dim)
        B, T, _ = x.shape
        mask = length_mask(lengths, T)                                     # (B, T)
        h = self.proj(x)                                                   # (B, T, H)
        # Sinusoidal rather than learned: works for any T, including longer than seen in training.
        h = h + sinusoidal_encoding(T, self.hidden_dim, h.device, h.dtype)[None]  # (B, T, H)
        h = self.encoder(h, src_key_padding_mask=~mask)                    # (B, T, H)
        pooled, attn = self.pool(h, mask)                                  # (B, H), (B, T)
        logits = self.head(pooled)                                         # (B, C)
        return (logits, attn) if return_attention else logits


class MeanMLP(nn.Module):
    """Order-blind baseline: mean of the valid frames -> Linear -> ReLU -> Dropout -> Linear.

    ``layers`` and ``heads`` are accepted for a uniform constructor and ignored.
    """

    def __init__(self, feat_dim: int, n_classes: int, hidden_dim: int = 768, layers: int = 4,
                 heads: int = 12, dropout: float = 0.4):
        super().__init__()
        _validate(feat_dim=feat_dim, n_classes=n_classes, hidden_dim=hidden_dim,
                  dropout=dropout)
        self.feat_dim = feat_dim
        self.head = ClassifierHead(feat_dim, hidden_dim, n_classes, dropout, layer_norm=False)

    def forward(self, x: Tensor, lengths: Tensor, return_attention: bool = False):
        _check_x(x, lengths, self.feat_dim)
        B, T, _ = x.shape
        mask = length_mask(lengths, T)                                     # (B, T)
        # Uniform weights over valid frames make the mean an instance of the shared pooling
        # contract: attn rows sum to 1 and are 0 on padding.
        attn = mask.to(x.dtype) / lengths.to(x.dtype)[:, None]             # (B, T)
        x = x.masked_fill(~mask[:, :, None], 0.0)
        pooled = torch.bmm(attn.unsqueeze(1), x).squeeze(1)                # (B, D)
        logits = self.head(pooled)                                         # (B, C)
        return (logits, attn) if return_attention else logits


# ----------------------------------------------------------------------------------------------
# registry

MODELS: dict[str, type[nn.Module]] = {
    "bilstm_attn": BiLSTMAttention,
    "transformer": TemporalTransformer,
    "mean_mlp": MeanMLP,
}


def list_models() -> list[str]:
    """Returns: the registered model names, sorted."""
    return sorted(MODELS)


def build_model(name: str, *, feat_dim: int, n_classes: int,
                hidden_dim: int = 768, layers: int = 4, heads: int = 12,
                dropout: float = 0.4) -> nn.Module:
    """Create a registered model by name.

    Args:
        name: one of ``list_models()``; "bilstm_attn" is the default.
        feat_dim: per-frame feature size D.
        n_classes: number of classes C (>= 2).
        hidden_dim, layers, heads, dropout: model sizes (``mean_mlp`` ignores layers, heads).

    Returns:
        The model, in training mode.

    Raises:
        ValueError: unknown name (the message lists valid names), or an invalid option
            combination (the message names the option to change).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return MODELS[name](feat_dim=feat_dim, n_classes=n_classes, hidden_dim=hidden_dim,
                        layers=layers, heads=heads, dropout=dropout)
