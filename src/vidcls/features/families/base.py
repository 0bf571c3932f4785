"""What every encoder family module shares: the ``Built`` encoder, the seeded random init, and the
errors for a name or a ``--weights`` name a family does not know."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import BackboneError
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


def unknown_name(
    lead: str, name: str, known: Iterable[str], *, label: str, hint: str, n: int = 6, cutoff: float = 0.5
) -> BackboneError:
    """The error for a name a family does not have: ``lead``, the closest ``known`` names (under
    ``label``), and ``hint`` (how to list them)."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)
    return BackboneError(lead + (f"; {label}: {', '.join(close)}" if close else "") + hint)


def refuse_weight_name(weights: object, spec: str, download: str) -> BackboneError:
    """The error for ``--weights NAME`` (a torchvision enum name) given to a family that takes only
    DEFAULT, none or a file."""
    return BackboneError(
        f"--weights {weights!r} for {spec}: use DEFAULT ({download}), none, "
        f"or the path of a .pth / .pt / .safetensors state dict"
    )


@contextmanager
def seeded_init() -> Iterator[None]:
    """Initialise a network from RANDOM_INIT_SEED without touching the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield
