"""The forward engine's members: models rebuilt from a run's checkpoints, checked against the features
they are to score.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import build_from_spec
from ..run.checkpoint import load_checkpoint
from ..run.final import FinalChoice
from ..run.rundir import RunDir

if TYPE_CHECKING:  # the store (h5py) is not imported here at runtime
    from ..store.directory import SplitStore


def _names(names: Iterable[object]) -> str:
    return "[" + ", ".join(str(n) for n in names) + "]"


def check_checkpoint_matches(ckpt: dict, path: Path, store: SplitStore) -> None:
    """Refuse to score a checkpoint on features it was not trained on.

    A multi-label checkpoint (``task`` "multilabel") may score a single-label store: each video's
    label is then a one-element set (as training one-vs-rest on such a store does).

    Args:
        ckpt: a loaded checkpoint (``class_names``, ``feature_dim``, ``extractor``, ``task``: absent is
            "single"); path: its file.
        store: the FeatureStore to be scored (``class_names``, ``feature_dim``, ``extractor``, ``path``,
            ``multilabel``, ``label_sets``).
    Raises:
        CheckpointError: other class names (order included), another feature dimension, another
            extractor backbone when both record one, or a single-label checkpoint on a store whose
            videos carry several labels; the message names both sides and both files.
    """
    hint = "evaluate with the features the run was trained on"
    if list(ckpt.get("class_names") or []) != list(store.class_names):
        raise CheckpointError(
            f"{path} was trained on classes {_names(ckpt.get('class_names') or [])} but "
            f"{store.path} has {_names(store.class_names)}; {hint}"
        )
    if ckpt.get("feature_dim") != store.feature_dim:
        raise CheckpointError(
            f"{path} was trained on {ckpt.get('feature_dim')}-dimensional features but "
            f"{store.path} holds {store.feature_dim}-dimensional ones; {hint}"
        )
    trained = (ckpt.get("extractor") or {}).get("backbone")
    given = (store.extractor or {}).get("backbone")
    if trained and given and trained != given:
        raise CheckpointError(
            f"{path} was trained on {trained} features but {store.path} holds {given} features; {hint}"
        )
    if ckpt.get("task", "single") == "single" and getattr(store, "multilabel", False):
        many = [i for i, labels in enumerate(store.label_sets) if len(labels) > 1]
        if many:
            raise CheckpointError(
                f"{path} is a single-label model (one class per video) but {store.path} holds label sets "
                f"({len(many)} videos with several labels, e.g. {store.video_ids[many[0]]!r}); {hint}, "
                f"or train a multi-label run on these (--task multilabel)"
            )


REQUIRED = ("model", "model_state", "class_names", "feature_dim")  # what a finished member checkpoint holds


def load_members(
    run: RunDir | str | os.PathLike,
    checkpoints: FinalChoice | list,
    model_indices: Iterable[int],
    device: str | torch.device,
    stores: Sequence[SplitStore] = (),
) -> tuple[list[nn.Module], list[dict]]:
    """Rebuild the models ``model_indices`` of a run, each from the file its index means
    (``RunDir.model_checkpoint`` over ``checkpoints``: a ``FinalChoice`` or its list of recorded
    checkpoint paths; empty: member m's ``best.pt``), in eval mode on ``device``.

    Args:
        run: the run directory (a ``RunDir`` or a path).
        stores: FeatureStores the models are to score: every checkpoint is checked against each, in
            that order (``check_checkpoint_matches``).
    Returns:
        ``(models, metadata)``: per model its checkpoint without ``model_state`` (config, class names,
        feature dimension, extractor, max_frames, ...).
    Raises:
        CheckpointError: a file missing, damaged or not a finished member checkpoint; members trained
            on other features than each other (``_check_same``) or than ``stores``.
    """
    run = RunDir(run)
    models: list[nn.Module] = []
    metadata: list[dict] = []
    paths: list[Path] = []
    for m in model_indices:
        path = run.model_checkpoint(checkpoints, int(m))
        ckpt = load_checkpoint(path, device)
        missing = [key for key in REQUIRED if key not in ckpt]
        if missing:
            raise CheckpointError(f"{path} has no {missing[0]!r}; it is not a finished member checkpoint")
        if metadata:
            _check_same(metadata[0], ckpt, paths[0], path)
        for store in stores:
            check_checkpoint_matches(ckpt, path, store)
        model = build_from_spec(ckpt["model"])
        model.load_state_dict(ckpt["model_state"])
        models.append(model.to(device).eval())
        metadata.append({k: v for k, v in ckpt.items() if k != "model_state"})
        paths.append(path)
    return models, metadata


def _check_same(first: dict, other: dict, first_path: Path, path: Path) -> None:
    """Members served together must have been trained on the same features the same way."""
    for key in ("class_names", "feature_dim", "extractor", "max_frames", "task"):
        # a checkpoint without "task" (older than multi-label runs) is single-label
        mine, theirs = (c.get(key, "single" if key == "task" else None) for c in (other, first))
        if mine != theirs:
            raise CheckpointError(
                f"{path} has {key} {mine!r} but {first_path} has {theirs!r}; "
                f"the members of one run must share their features; retrain the run"
            )
