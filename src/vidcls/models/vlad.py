"""Learnable VLAD pooling over per-frame features, made padding-safe.

- ``netvlad``: Gated NetVLAD (Miech et al. 2017, "Learnable pooling with Context Gating for video
  classification"): soft-assign every frame to K clusters, sum the residuals to each centre.
- ``nextvlad``: NeXtVLAD (Lin et al. 2018, "NeXtVLAD: An efficient neural network to aggregate
  frame-level features for large-scale video classification"): expand the frame, split it into G
  groups, VLAD over (frame, group) pairs weighted by a per-group gate, so the descriptor is
  K x (expansion * width / G) instead of K x width.

Both are order-blind (a VLAD is a sum over frames) and share the tail: dropout -> Linear to
``hidden_dim`` -> LayerNorm -> context gating (``y = x * sigmoid(W x + b)``) -> ``ClassifierHead``.

Padding: padded frames are zeroed on entry and after the projection, and their assignment weights
are multiplied by the mask, so they add exactly 0 to every sum; a video's logits in eval mode do not
depend on how much padding its batch has.

Normalisation: the papers put BatchNorm on the assignment logits and after the hidden Linear.
BatchNorm's statistics depend on the batch (padding included) and differ between train and eval, so
here there is none on the assignment logits (the input projection's LayerNorm already standardises
each frame) and a LayerNorm after the hidden Linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .layers import SPEC, ClassifierHead, InputProjection, check_input, check_sizes, length_mask


class ContextGating(nn.Module):
    """``y = x * sigmoid(W x + b)`` (Miech et al. 2017): each unit rescaled by a gate read from all."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.gate(x))  # (B, H)


class VladTail(nn.Module):
    """Flat VLAD descriptor -> Dropout -> Linear(-> hidden) -> LayerNorm -> ContextGating -> head."""

    def __init__(self, in_dim: int, hidden_dim: int, n_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)  # the papers' BatchNorm, made batch-independent
        self.gate = ContextGating(hidden_dim)
        self.head = ClassifierHead(hidden_dim, hidden_dim // 2, n_classes, dropout)

    def forward(self, v: Tensor) -> Tensor:
        return self.head(self.gate(self.norm(self.fc(self.dropout(v)))))  # (B, C)


def vlad(weights: Tensor, x: Tensor, centres: Tensor) -> Tensor:
    """Intra-normalised VLAD: ``v_k = sum_n w_nk (x_n - c_k)``, then each ``v_k`` scaled to unit L2 norm.

    Args:
        weights: (B, N, K) assignment weights, 0 on padded items.
        x: (B, N, F) items (frames, or frame groups), 0 on padding.
        centres: (K, F) cluster centres.

    Returns:
        (B, K, F).
    """
    agg = torch.bmm(weights.transpose(1, 2), x)  # (B, K, F): sum_n w_nk x_n
    agg = agg - weights.sum(1)[:, :, None] * centres[None]  # - (sum_n w_nk) c_k
    return F.normalize(agg, dim=-1)


def frame_weights(weights: Tensor) -> Tensor:
    """The share of the pooling each frame gets: its total weight in the VLAD sums, over the video.

    Args:
        weights: (B, T, ...) the frame's weights in the sums, 0 on padding.

    Returns:
        (B, T), rows summing to 1, 0 on padding.
    """
    w = weights.flatten(2).sum(-1)  # (B, T)
    return w / w.sum(1, keepdim=True)


def _centres(clusters: int, dim: int) -> nn.Parameter:
    # As the papers' code: N(0, 1/dim), centres near the origin of the (standardised) features.
    return nn.Parameter(torch.randn(clusters, dim) / math.sqrt(dim))


class NetVLAD(nn.Module):
    """Projection -> NetVLAD over the frames (K clusters) -> L2 -> gated tail -> classifier.

    Size mapping onto the shared constructor:

    - ``hidden_dim`` is the width every frame is projected to (the VLAD is ``clusters x hidden_dim``)
      and the output width of the tail, before the classifier head.
    - ``clusters`` is K (paper: 64 to 256).
    - ``layers`` and ``heads`` are accepted for a uniform constructor and ignored.

    ``attn`` is the pooling weight of each frame, ``sum_k a_k(x_t)`` over the video; as the soft
    assignment sums to 1 over the clusters, it is uniform over the valid frames.
    """

    def __init__(
        self,
        feature_dim: int,
        n_classes: int,
        hidden_dim: int = SPEC.hidden_dim,
        layers: int = SPEC.layers,
        heads: int = SPEC.heads,
        dropout: float = SPEC.dropout,
        *,
        clusters: int = SPEC.clusters,
    ):
        super().__init__()
        check_sizes(
            feature_dim=feature_dim,
            n_classes=n_classes,
            hidden_dim=hidden_dim,
            dropout=dropout,
            clusters=clusters,
        )
        self.feature_dim = feature_dim
        self.proj = InputProjection(feature_dim, hidden_dim, dropout / 2)
        self.assign = nn.Linear(hidden_dim, clusters)  # a_k(x) = softmax_k(w_k x + b_k)
        self.centres = _centres(clusters, hidden_dim)
        self.tail = VladTail(clusters * hidden_dim, hidden_dim, n_classes, dropout)

    def pool(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Args: h (B, T, H) projected frames, mask (B, T). Returns: descriptor (B, K H), attn (B, T)."""
        h = h.masked_fill(~mask[:, :, None], 0.0)
        a = torch.softmax(self.assign(h), dim=-1) * mask[:, :, None]  # (B, T, K), 0 on padding
        v = vlad(a, h, self.centres).flatten(1)  # (B, K H), each cluster's part of unit norm
        return F.normalize(v, dim=-1), frame_weights(a)

    def forward(
        self, x: Tensor, lengths: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_input(x, lengths, self.feature_dim)
        mask = length_mask(lengths, x.shape[1])  # (B, T)
        h = self.proj(x.masked_fill(~mask[:, :, None], 0.0))  # (B, T, H)
        v, attn = self.pool(h, mask)  # (B, K H), (B, T)
        logits = self.tail(v)  # (B, C)
        return (logits, attn) if return_attention else logits


class NeXtVLAD(nn.Module):
    """Projection -> expansion -> grouped, gated NetVLAD over (frame, group) -> gated tail -> classifier.

    Size mapping onto the shared constructor:

    - ``hidden_dim`` is the width every frame is projected to and the output width of the tail.
      The paper expands the raw frame; projecting it first keeps the expansion and the assignment
      (``expansion * hidden_dim`` wide) affordable for wide CNN features and lets a 1-value time
      series be grouped at all.
    - ``expansion`` (lambda) widens the projected frame to ``expansion * hidden_dim``, split into
      ``groups`` (G) parts of ``expansion * hidden_dim / groups`` values, so that width must divide.
    - ``clusters`` is K; the descriptor is ``clusters x expansion * hidden_dim / groups`` wide
      (paper: K 64-128, lambda 2, G 8-16).
    - ``layers`` and ``heads`` are accepted for a uniform constructor and ignored.

    ``attn`` is the pooling weight of each frame, ``mean_g alpha_g(t)`` (its group gates) over the video.
    """

    def __init__(
        self,
        feature_dim: int,
        n_classes: int,
        hidden_dim: int = SPEC.hidden_dim,
        layers: int = SPEC.layers,
        heads: int = SPEC.heads,
        dropout: float = SPEC.dropout,
        *,
        clusters: int = SPEC.clusters,
        groups: int = SPEC.groups,
        expansion: int = SPEC.expansion,
    ):
        super().__init__()
        check_sizes(
            feature_dim=feature_dim,
            n_classes=n_classes,
            hidden_dim=hidden_dim,
            dropout=dropout,
            clusters=clusters,
            groups=groups,
            expansion=expansion,
        )
        self.feature_dim = feature_dim
        self.groups, self.clusters = groups, clusters
        wide = expansion * hidden_dim
        self.group_dim = wide // groups
        self.proj = InputProjection(feature_dim, hidden_dim, dropout / 2)
        self.expand = nn.Linear(hidden_dim, wide)  # x_dot
        self.group_gate = nn.Linear(wide, groups)  # alpha_g = sigmoid(...)
        self.assign = nn.Linear(wide, groups * clusters)  # a_gk = softmax_k(...)
        self.centres = _centres(clusters, self.group_dim)
        self.tail = VladTail(clusters * self.group_dim, hidden_dim, n_classes, dropout)

    def pool(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Args: h (B, T, H) projected frames, mask (B, T). Returns: descriptor (B, K F_g), attn (B, T)."""
        B, T, _ = h.shape
        G, K = self.groups, self.clusters
        wide = self.expand(h.masked_fill(~mask[:, :, None], 0.0))  # (B, T, lambda H)
        wide = wide.masked_fill(~mask[:, :, None], 0.0)
        alpha = torch.sigmoid(self.group_gate(wide)) * mask[:, :, None]  # (B, T, G), 0 on padding
        a = torch.softmax(self.assign(wide).view(B, T, G, K), dim=-1)  # (B, T, G, K)
        w = a * alpha[:, :, :, None]  # (B, T, G, K): alpha_g(t) a_gk(t)
        parts = wide.view(B, T * G, self.group_dim)  # (B, T G, F_g): frame t's group g at t G + g
        v = vlad(w.view(B, T * G, K), parts, self.centres).flatten(1)  # (B, K F_g)
        return v, frame_weights(w)

    def forward(
        self, x: Tensor, lengths: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_input(x, lengths, self.feature_dim)
        mask = length_mask(lengths, x.shape[1])  # (B, T)
        h = self.proj(x.masked_fill(~mask[:, :, None], 0.0))  # (B, T, H)
        v, attn = self.pool(h, mask)  # (B, K F_g), (B, T)
        logits = self.tail(v)  # (B, C)
        return (logits, attn) if return_attention else logits
