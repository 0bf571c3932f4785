"""Test-time augmentation: views of a feature sequence (time reversed, faster, slower) and their softmax."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

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


def views_to_predict(modes) -> tuple:
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


@torch.inference_mode()
def predict_modes(model: nn.Module, loader, device: torch.device, modes=TTA_MODES) -> dict:
    """Softmax of ``model`` for every video of a sequential ``loader`` on the original sequence and
    under each TTA mode of ``modes``.

    Returns:
        ``{view: (N, C) float64}`` for ``original`` and every mode, in dataset order, plus
        ``"labels"``: (N,).
    """
    model.eval()
    probs = {m: [] for m in views_to_predict(modes)}
    labels, positions = [], []
    for x, lengths, y, pos in loader:
        x = x.to(device).float()
        for mode in probs:
            xm, lm = tta_batch(x, lengths, mode)
            probs[mode].append(torch.softmax(model(xm, lm.to(device)).float(), dim=1).double().cpu())
        labels.append(y)
        positions.append(pos)
    order = torch.cat(positions).argsort()
    out = {m: torch.cat(p)[order].numpy() for m, p in probs.items()}
    out["labels"] = torch.cat(labels)[order].numpy()
    return out


def tta_mean(mode_probs: dict, modes) -> np.ndarray:
    """Average (N, C) of the softmax over exactly ``modes`` (a ``predict_modes`` result holding them)."""
    return np.mean([mode_probs[m] for m in modes], axis=0)
