"""InceptionTime over per-frame features (Ismail Fawaz et al. 2020, "InceptionTime: Finding
AlexNet for time series classification"), made padding-safe.

Rule that keeps padding out of the output: every padded step is 0 on entry and is set back to 0
after every inception module and every residual add, all convolutions are bias-free with 'same'
zero padding, and the max-pool branch sees padded steps as -inf. A valid step then reads exactly
what it would read if its batch were cut at the row's length (where the convolutions' own zero
padding and the pool's own -inf padding begin), so in eval mode a video's logits do not depend on
how much padding its batch has.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .layers import SPEC, check_input, check_sizes, length_mask

# The paper's kernel sizes 10, 20, 40 made odd, so 'same' padding is symmetric (k // 2 each side).
KERNEL_SIZES = (9, 19, 39)
BRANCHES = len(KERNEL_SIZES) + 1  # + the max-pool -> 1x1 conv branch
RESIDUAL_EVERY = 3  # the paper's shortcut period


def check_width(hidden_dim: int) -> None:
    """Raise ConfigError unless hidden_dim splits evenly over the four branches."""
    if hidden_dim % BRANCHES != 0:
        raise ConfigError(
            f"hidden_dim ({hidden_dim}) must be divisible by {BRANCHES}: inception_time "
            f"concatenates {BRANCHES} branches of hidden_dim // {BRANCHES} filters; "
            f"change hidden_dim"
        )


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each time step, on channels-first (B, C, T) tensors.

    Replaces the paper's BatchNorm: BatchNorm's statistics average over time, padded steps
    included, so a batch's padding would shift every video's activations (and train/eval would
    differ through running statistics). Per-step LayerNorm never mixes time steps or videos.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, h: Tensor) -> Tensor:
        return self.norm(h.transpose(1, 2)).transpose(1, 2)  # (B, C, T)


class InceptionModule(nn.Module):
    """[1x1 bottleneck] -> convs k=9/19/39, plus max-pool(3) -> 1x1 conv; concat -> norm -> ReLU.

    The bottleneck (nf filters, as the paper's 32 = nf) is skipped for a 1-channel input, as in
    the paper. Output width 4 * nf; padded output steps are 0.
    """

    def __init__(self, in_channels: int, nf: int):
        super().__init__()
        # Bias-free, as in the paper: a bias would turn the zero padded steps into non-zero
        # values that the wide convolutions would then read.
        self.bottleneck = nn.Conv1d(in_channels, nf, 1, bias=False) if in_channels > 1 else nn.Identity()
        mid = nf if in_channels > 1 else in_channels
        self.convs = nn.ModuleList(nn.Conv1d(mid, nf, k, padding=k // 2, bias=False) for k in KERNEL_SIZES)
        self.pool_conv = nn.Conv1d(in_channels, nf, 1, bias=False)
        self.norm = ChannelNorm(BRANCHES * nf)

    def forward(self, h: Tensor, pad: Tensor) -> Tensor:
        """Args: h (B, C_in, T) with padded steps 0; pad (B, 1, T) True on padding."""
        z = self.bottleneck(h)
        # The pool pads with -inf at the tensor's end; giving padded steps -inf too makes a row's
        # last frames see the same window in any batch. Padded outputs (maybe -inf) are zeroed
        # before the conv so no inf reaches a product.
        pooled = F.max_pool1d(h.masked_fill(pad, float("-inf")), 3, stride=1, padding=1)
        pooled = pooled.masked_fill(pad, 0.0)
        out = torch.cat([conv(z) for conv in self.convs] + [self.pool_conv(pooled)], dim=1)
        return F.relu(self.norm(out)).masked_fill(pad, 0.0)  # (B, 4 nf, T)


class Shortcut(nn.Module):
    """Residual path of one block: identity, or 1x1 conv + norm when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = (
            nn.Sequential(nn.Conv1d(in_channels, out_channels, 1, bias=False), ChannelNorm(out_channels))
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, block_in: Tensor, block_out: Tensor, pad: Tensor) -> Tensor:
        return F.relu(block_out + self.proj(block_in)).masked_fill(pad, 0.0)


class InceptionTime(nn.Module):
    """InceptionTime: ``layers`` inception modules (residual shortcut around every 3) -> masked
    global average pooling -> Dropout -> Linear.

    Size mapping onto the shared constructor:

    - ``hidden_dim`` is each module's output width, 4 branches x ``nf = hidden_dim // 4`` filters
      (paper: nf = 32, width 128), so it must be divisible by 4; the bottleneck also has nf filters.
    - ``layers`` is the number of inception modules (paper: 6). A shortcut closes after modules
      3, 6, ...; modules after the last multiple of 3 have none, as in the paper.
    - ``heads`` is accepted for a uniform constructor and ignored (there is no attention).
    - ``dropout`` is applied to the pooled vector before the linear classifier; the paper has
      no dropout and only a linear layer after the pooling.

    BatchNorm is replaced by per-step LayerNorm over channels (``ChannelNorm``) so padding never
    enters a statistic. The pooling weights (``attn``) are uniform over the valid frames.
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
        check_sizes(
            feature_dim=feature_dim,
            n_classes=n_classes,
            hidden_dim=hidden_dim,
            dropout=dropout,
            layers=layers,
        )
        check_width(hidden_dim)
        self.feature_dim = feature_dim
        nf = hidden_dim // BRANCHES
        widths = [feature_dim] + [hidden_dim] * layers  # input width of module i
        self.inception = nn.ModuleList(InceptionModule(widths[i], nf) for i in range(layers))
        # shortcuts[j] spans modules 3j .. 3j+2, from the input of module 3j.
        self.shortcuts = nn.ModuleList(
            Shortcut(widths[i - RESIDUAL_EVERY + 1], hidden_dim)
            for i in range(layers)
            if i % RESIDUAL_EVERY == RESIDUAL_EVERY - 1
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, n_classes)

    def forward(
        self, x: Tensor, lengths: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_input(x, lengths, self.feature_dim)
        T = x.shape[1]
        mask = length_mask(lengths, T)  # (B, T)
        pad = ~mask[:, None, :]  # (B, 1, T)
        # Channels-first for Conv1d; masked_fill (not * mask) so inf/NaN junk in padding is dropped.
        h = x.transpose(1, 2).masked_fill(pad, 0.0)  # (B, D, T)
        block_in = h
        for i, module in enumerate(self.inception):
            h = module(h, pad)  # (B, H, T)
            if i % RESIDUAL_EVERY == RESIDUAL_EVERY - 1:
                h = self.shortcuts[i // RESIDUAL_EVERY](block_in, h, pad)
                block_in = h
        # Global average pooling over valid steps, written as the shared pooling contract:
        # attn rows sum to 1 and are 0 on padding (padded h is already 0).
        attn = mask.to(h.dtype) / lengths.to(h.dtype)[:, None]  # (B, T)
        pooled = torch.bmm(h, attn.unsqueeze(2)).squeeze(2)  # (B, H)
        logits = self.head(self.dropout(pooled))  # (B, C)
        return (logits, attn) if return_attention else logits
