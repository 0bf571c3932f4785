"""Test-time augmentation: views of a feature sequence (time reversed, faster, slower), one sequence or a
padded batch (``engine.forward`` runs the models over them)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import TTA_MODES
from ..errors import ConfigError


def tta_indices(n_frames: int, mode: str) -> torch.Tensor:
    """Frame indices that turn a video of ``n_frames`` into its ``mode`` view.

    ``reverse`` flips time; ``speed_up`` (only when > 10 frames) keeps ``linspace`` over the frames
    to ``n // 2`` indices; ``speed_down`` (only when > 5 frames) stretches to ``int(1.5 n)`` indices
    (``linspace`` truncated, frames repeated). Other lengths, and ``original``, keep the video as it is.

    Raises:
        ConfigError: an unknown mode.
    """
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown TTA mode {mode!r}; valid modes: {', '.join(TTA_MODES)}")
    if mode == "reverse":
        return torch.arange(n_frames - 1, -1, -1)
    if mode == "speed_up" and n_frames > 10:
        return torch.linspace(0, n_frames - 1, n_frames // 2).long()
    if mode == "speed_down" and n_frames > 5:
        # linspace ends exactly on n_frames - 1, so no index runs past the last frame
        return torch.linspace(0, n_frames - 1, int(1.5 * n_frames)).long()
    return torch.arange(n_frames)


def views_to_predict(modes: Iterable[str]) -> tuple:
    """The views a prediction needs for TTA ``modes``: ``original`` (the "without TTA" view, needed
    whether or not it is one of the modes) first, then the other modes in their order."""
    return ("original", *(m for m in modes if m != "original"))


def tta_batch(x: torch.Tensor, lengths: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``mode`` to every video of a padded batch.

    Args:
        x: (B, T, D) zero-padded; lengths: (B,) valid frames per row.
    Returns:
        x' (B, T', D) zero-padded, lengths' (B,).
    """
    if mode == "original":
        return x, lengths
    idx = [tta_indices(int(n), mode) for n in lengths]
    new_len = torch.tensor([len(i) for i in idx])  # int64
    out = x.new_zeros(x.shape[0], int(new_len.max()), x.shape[2])
    for b, i in enumerate(idx):
        out[b, : len(i)] = x[b, i.to(x.device)]
    return out, new_len
