"""The forward engine's members: models rebuilt from a run's checkpoints, checked against the features
they are to score.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import build_from_spec
from ..run.checkpoint import load_checkpoint
from ..run.final import checkpoint_path


def _names(names) -> str:
    return "[" + ", ".join(str(n) for n in names) + "]"


def check_checkpoint_matches(ckpt: dict, path: Path, store) -> None:
    """Refuse to score a checkpoint on features it was not trained on.

    Args:
        ckpt: a loaded checkpoint (``class_names``, ``feature_dim``, ``extractor``); path: its file.
        store: the FeatureStore to be scored (``class_names``, ``feature_dim``, ``extractor``, ``path``).
    Raises:
        CheckpointError: other class names (order included), another feature dimension, or another
            extractor backbone when both record one; the message names both sides and both files.
    """
    hint = "evaluate with the features the run was trained on"
    if list(ckpt.get("class_names") or []) != list(store.class_names):
        raise CheckpointError(f"{path} was trained on classes {_names(ckpt.get('class_names') or [])} but "
                              f"{store.path} has {_names(store.class_names)}; {hint}")
    if ckpt.get("feature_dim") != store.feature_dim:
        raise CheckpointError(f"{path} was trained on {ckpt.get('feature_dim')}-dimensional features but "
                              f"{store.path} holds {store.feature_dim}-dimensional ones; {hint}")
    trained = (ckpt.get("extractor") or {}).get("backbone")
    given = (store.extractor or {}).get("backbone")
    if trained and given and trained != given:
        raise CheckpointError(f"{path} was trained on {trained} features but {store.path} holds {given} "
                              f"features; {hint}")


def load_member(run_dir: Path, member: int, device: torch.device, stores=(), checkpoints=()) -> nn.Module:
    """Rebuild model ``member`` from its checkpoint (``checkpoint_path`` over ``checkpoints``: a
    ``FinalChoice`` or a list; empty: ``best.pt``), in eval mode on ``device``.

    Raises:
        CheckpointError: missing or damaged, or not trained on the features of ``stores``.
    """
    path = checkpoint_path(run_dir, checkpoints, member)
    ckpt = load_checkpoint(path, device)
    for store in stores:
        check_checkpoint_matches(ckpt, path, store)
    model = build_from_spec(ckpt["model"])
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval()


def _check_same(first: dict, other: dict, first_path: Path, path: Path) -> None:
    """Members served together must have been trained on the same features the same way."""
    for key in ("class_names", "feature_dim", "extractor", "max_frames"):
        if first.get(key) != other.get(key):
            raise CheckpointError(f"{path} has {key} {other.get(key)!r} but {first_path} has {first.get(key)!r}; "
                                  f"the members of one run must share their features; retrain the run")
