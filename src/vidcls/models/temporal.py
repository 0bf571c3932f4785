"""Temporal models over per-frame CNN features: (B, T, D) frame features -> (B, C) logits.

Every model has the same call: ``model(x, lengths, return_attention=False)`` where ``x`` is
(B, T, D) zero-padded after each row's length and ``lengths`` (B,) counts the valid frames.
Padding never reaches the output: recurrences run over packed sequences, attention masks the
padded keys, pooling gives padded steps weight 0. So in eval mode a video's logits do not depend
on how much padding its batch has (tests/test_models.py checks this for every model).

Models are created by name, timm-style::

    model = build_model("bilstm_attn", feature_dim=1280, n_classes=4)
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .layers import (
    SPEC,
    AttentionPooling,
    ClassifierHead,
    InputProjection,
    check_input,
    check_sizes,
    length_mask,
    sinusoidal_encoding,
)


class BiLSTMAttention(nn.Module):
    """Projection -> packed BiLSTM -> masked self-attention (+residual, LN) -> attention pooling
    -> classifier. The source architecture and the default model."""

    def __init__(
        self,
        feature_dim: int,
        n_classes: int,
        hidden_dim: int = SPEC.hidden_dim,
        layers: int = SPEC.layers,
        heads: int = SPEC.heads,
        dropout: float = SPEC.dropout,
    ):
        super().__init__()
        check_sizes(
            feature_dim=feature_dim,
            n_classes=n_classes,
            hidden_dim=hidden_dim,
            dropout=dropout,
            layers=layers,
            heads=heads,
            even_hidden=True,
        )
        self.feature_dim = feature_dim
        self.proj = InputProjection(feature_dim, hidden_dim, dropout / 2)
        self.lstm = nn.LSTM(
            hidden_dim,
            hidden_dim // 2,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,  # nn.LSTM warns on dropout with 1 layer
        )
        self.attn = nn.MultiheadAttention(hidden_dim, heads, dropout=dropout, batch_first=True)
        self.attn_norm = nn.LayerNorm(hidden_dim)
        self.pool = AttentionPooling(hidden_dim)
        self.head = ClassifierHead(hidden_dim, hidden_dim // 2, n_classes, dropout)

    def forward(
        self, x: Tensor, lengths: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_input(x, lengths, self.feature_dim)
        B, T, _ = x.shape
        mask = length_mask(lengths, T)  # (B, T)
        h = self.proj(x)  # (B, T, H)
        # Packing makes the backward direction start at each row's last valid frame, not at
        # the padding; that is what keeps logits independent of the padded length.
        packed = nn.utils.rnn.pack_padded_sequence(
            h, lengths.detach().cpu().long(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, H)
        a, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)  # (B, T, H)
        h = self.attn_norm(h + a)  # (B, T, H)
        pooled, attn = self.pool(h, mask)  # (B, H), (B, T)
        logits = self.head(pooled)  # (B, C)
        return (logits, attn) if return_attention else logits


class TemporalTransformer(nn.Module):
    """Projection + sinusoidal positions -> pre-LN Transformer encoder (padding masked) ->
    attention pooling -> classifier."""

    def __init__(
        self,
        feature_dim: int,
        n_classes: int,
        hidden_dim: int = SPEC.hidden_dim,
        layers: int = SPEC.layers,
        heads: int = SPEC.heads,
        dropout: float = SPEC.dropout,
    ):
        super().__init__()
        check_sizes(
            feature_dim=feature_dim,
            n_classes=n_classes,
            hidden_dim=hidden_dim,
            dropout=dropout,
            layers=layers,
            heads=heads,
        )
        self.feature_dim = feature_dim
        self.hidden_dim = hidden_dim
        self.proj = InputProjection(feature_dim, hidden_dim, dropout / 2)
        layer = nn.TransformerEncoderLayer(
            hidden_dim,
            heads,
            dim_feedforward=2 * hidden_dim,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        # Pre-LN leaves the residual stream un-normalised, hence the final norm. Nested tensors
        # are off so eval and train take the same, plainly masked, path.
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(hidden_dim), enable_nested_tensor=False
        )
        self.pool = AttentionPooling(hidden_dim)
        self.head = ClassifierHead(hidden_dim, hidden_dim // 2, n_classes, dropout)

    def forward(
        self, x: Tensor, lengths: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_input(x, lengths, self.feature_dim)
        B, T, _ = x.shape
        mask = length_mask(lengths, T)  # (B, T)
        h = self.proj(x)  # (B, T, H)
        # Sinusoidal rather than learned: works for any T, including longer than seen in training.
        h = h + sinusoidal_encoding(T, self.hidden_dim, h.device, h.dtype)[None]  # (B, T, H)
        h = self.encoder(h, src_key_padding_mask=~mask)  # (B, T, H)
        pooled, attn = self.pool(h, mask)  # (B, H), (B, T)
        logits = self.head(pooled)  # (B, C)
        return (logits, attn) if return_attention else logits


class MeanMLP(nn.Module):
    """Order-blind baseline: mean of the valid frames -> Linear -> ReLU -> Dropout -> Linear.

    ``layers`` and ``heads`` are accepted for a uniform constructor and ignored.
    """

    def __init__(
        self,
        feature_dim: int,
        n_classes: int,
        hidden_dim: int = SPEC.hidden_dim,
        layers: int = SPEC.layers,
        heads: int = SPEC.heads,
        dropout: float = SPEC.dropout,
    ):
        super().__init__()
        check_sizes(feature_dim=feature_dim, n_classes=n_classes, hidden_dim=hidden_dim, dropout=dropout)
        self.feature_dim = feature_dim
        self.head = ClassifierHead(feature_dim, hidden_dim, n_classes, dropout, layer_norm=False)

    def forward(
        self, x: Tensor, lengths: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_input(x, lengths, self.feature_dim)
        B, T, _ = x.shape
        mask = length_mask(lengths, T)  # (B, T)
        # Uniform weights over valid frames make the mean an instance of the shared pooling
        # contract: attn rows sum to 1 and are 0 on padding.
        attn = mask.to(x.dtype) / lengths.to(x.dtype)[:, None]  # (B, T)
        x = x.masked_fill(~mask[:, :, None], 0.0)
        pooled = torch.bmm(attn.unsqueeze(1), x).squeeze(1)  # (B, D)
        logits = self.head(pooled)  # (B, C)
        return (logits, attn) if return_attention else logits
