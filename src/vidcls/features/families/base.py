"""What every encoder family module shares: the ``Built`` encoder and the seeded random init."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..preprocess import Preprocess

RANDOM_INIT_SEED = 0  # --weights none: every process builds the same random network


@dataclass
class Built:
    """A family's encoder: ``model`` (normalised (N, 3, S, S) -> (N, D)), ``preprocess``, ``info``
    (the weights and family part of the extractor record), ``weights_module`` (the part of ``model``
    whose state-dict names are those of a weights file, for messages; None: ``model`` itself)."""

    model: nn.Module
    preprocess: Preprocess
    info: dict = field(default_factory=dict)
    weights_module: nn.Module | None = None


@contextmanager
def seeded_init() -> Iterator[None]:
    """Initialise a network from RANDOM_INIT_SEED without touching the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield
