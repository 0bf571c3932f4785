"""What a run's labels decide: the task (one class or a label set per video) and the class weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import StoreError
from ..store.directory import SplitStore


def class_weights(
    labels: np.ndarray,
    n_classes: int,
    clip: Sequence[float] = (0.5, 10.0),
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Inverse-frequency class weights ``N / (C * n_c)`` of single-label ``labels``, clipped to ``clip``
    (``label_weights`` of their class counts).

    Raises:
        ValueError: a class has no example (named): its weight would be undefined.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    return label_weights(counts, clip, class_names)


def label_weights(
    counts: np.ndarray, clip: Sequence[float] = (0.5, 10.0), class_names: Sequence[str] | None = None
) -> torch.Tensor:
    """Inverse-frequency weights ``P / (C * n_c)`` from ``counts`` (videos carrying each class), clipped
    to ``clip``: ``P`` is the sum of the counts, the number of labels given (the number of videos when each
    has one label), so a class of average frequency gets 1 in both tasks.

    Raises:
        ValueError: a class has no example (named): its weight would be undefined.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n_classes = len(counts)
    missing = [class_names[c] if class_names else str(c) for c in range(n_classes) if counts[c] == 0]
    if missing:
        raise ValueError(
            f"class(es) {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} have no training "
            f"example; add videos of those classes to the train split or remove them from class_names"
        )
    w = counts.sum() / (n_classes * counts.astype(np.float64))
    return torch.tensor(np.clip(w, clip[0], clip[1]), dtype=torch.float32)


def resolve_task(task: str, stores: Sequence[SplitStore]) -> str:
    """The task a run trains: ``auto`` is "multilabel" when the stores hold label sets, else "single".

    "multilabel" on single-label stores trains one sigmoid per class (one-vs-rest); "single" on label sets
    is refused when some video carries more than one label (its other labels would be dropped silently).

    Raises:
        StoreError: ``task`` "single" on videos with several labels (naming the file and a video).
    """
    if task == "auto":
        return "multilabel" if any(s.multilabel for s in stores) else "single"
    if task == "single":
        for s in stores:
            if not s.multilabel:
                continue
            many = [i for i, ls in enumerate(s.label_sets) if len(ls) > 1]
            if many:
                raise StoreError(
                    f"{s.path}: {len(many)} videos carry several labels (e.g. {s.video_ids[many[0]]!r}); "
                    f"--task single would keep one of them; train with --task multilabel (or auto)"
                )
    return task
