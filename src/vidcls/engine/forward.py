"""One forward pass of some models over some views of some feature sequences: raw logits ``(N, M, V, C)``.

Every consumer goes through :func:`forward`: ``vidcls evaluate`` and ``fit``'s evaluation (every model
x every view the policy needs), calibration (the served members and views on validation) and the
predictor (the served ones on new inputs). The sequences are cut into frame-budget batches
(``data.batching.FrameBudgetBatches``: at most ``batch_size`` videos and ``batch_frames`` padded frames)
in input order; each batch is read, padded and moved to the device once, then every model sees every
view of it (``engine.views.tta_batch``). Only one batch of features is in memory at a time.

The result is an :class:`Outputs`: raw logits, never probabilities; the softmax (with a temperature)
is ``engine.probs.served_probs``, reached through :meth:`Outputs.probs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ..data.batching import FrameBudgetBatches
from ..data.dataset import FeatureDataset, by_length
from .probs import served_probs
from .views import tta_batch

ORIGINAL = "original"


@dataclass(frozen=True, eq=False)  # arrays inside: no field-wise ==
class Outputs:
    """What :func:`forward` computed for N videos.

    Attributes:
        logits: ``(N, M, V, C)`` float64 raw logits.
        members: the model index of each M (the run's numbering, as in ``final.json``).
        views: the view name of each V (``config.TTA_MODES``).
        labels: ``(N,)`` int64 class indices (``task`` "single"), ``(N, C)`` int64 0/1 label sets
            ("multilabel"), or None (inputs without labels).
        attention: per video, the mean over the M models of the original view's attention on the
            frames seen (``(T_i,)`` float64), or None (not asked for, or dropped by ``select``).
        task: "single" (softmax outputs) or "multilabel" (one sigmoid per class).
    """

    logits: np.ndarray
    members: tuple
    views: tuple
    labels: np.ndarray | None = None
    attention: list | None = None
    task: str = "single"

    def __post_init__(self) -> None:
        z = np.asarray(self.logits, dtype=np.float64)
        object.__setattr__(self, "logits", z)
        object.__setattr__(self, "members", tuple(int(m) for m in self.members))
        object.__setattr__(self, "views", tuple(str(v) for v in self.views))
        if self.labels is not None:
            object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))
        if z.ndim != 4 or z.shape[1:3] != (len(self.members), len(self.views)):
            raise ValueError(
                f"logits {z.shape} do not match {len(self.members)} members x "
                f"{len(self.views)} views as (N, M, V, C)"
            )
        if self.labels is not None and len(self.labels) != len(z):
            raise ValueError(f"{len(self.labels)} labels for {len(z)} videos")
        if self.task not in ("single", "multilabel"):
            raise ValueError(f"task must be 'single' or 'multilabel', got {self.task!r}")
        want = 2 if self.task == "multilabel" else 1
        if self.labels is not None and self.labels.ndim != want:
            raise ValueError(
                f"{self.task} labels must be {'(N, C) label sets' if want == 2 else '(N,) class indices'}; "
                f"got shape {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.logits)

    def select(self, members: Iterable[int] | None = None, views: Iterable[str] | None = None) -> Outputs:
        """The same videos with only ``members`` (model indices) and ``views`` (names), in the order
        given (None: all, as they are). The attention, a mean over every member, is kept only when
        the members are the same (in any order).

        Raises:
            KeyError: a member or view that was not computed.
        """
        m = (
            list(range(len(self.members)))
            if members is None
            else [self._index(self.members, int(i), "model") for i in members]
        )
        v = (
            list(range(len(self.views)))
            if views is None
            else [self._index(self.views, str(n), "view") for n in views]
        )
        same_members = sorted(self.members[i] for i in m) == sorted(self.members)
        return dataclasses.replace(
            self,
            logits=self.logits[:, m][:, :, v],
            members=tuple(self.members[i] for i in m),
            views=tuple(self.views[i] for i in v),
            attention=self.attention if same_members else None,
        )

    @staticmethod
    def _index(names: tuple, name: object, what: str) -> int:
        if name not in names:
            raise KeyError(f"{what} {name!r} was not computed (have {list(names)})")
        return names.index(name)

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """``(N, C)``: the mean over members and views of ``softmax(logits / temperature)``, or of the
        sigmoid for a multi-label task (``engine.probs.served_probs``)."""
        return served_probs(self.logits, temperature, self.task)


class Sequences(Protocol):
    """What :func:`forward` reads: ``len``, a ``(T, D)`` array or tensor per index, and ``lengths``."""

    @property
    def lengths(self) -> npt.ArrayLike: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> np.ndarray | torch.Tensor: ...


class ArraySequences:
    """``(T, D)`` arrays (numpy or torch) as :func:`forward`'s input, used as given: no labels."""

    labels = None

    def __init__(self, arrays: Sequence) -> None:
        self.arrays = list(arrays)
        self.lengths = np.array([len(a) for a in self.arrays], np.int64)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> np.ndarray | torch.Tensor:
        return self.arrays[i]


class DatasetSequences:
    """A ``data.dataset.FeatureDataset`` as :func:`forward`'s input: its videos read one batch at a
    time (stored precision, thinned to its ``max_frames``, never augmented), with its labels."""

    def __init__(self, dataset: FeatureDataset) -> None:
        self.dataset = dataset
        self.lengths = np.asarray(dataset.lengths, np.int64)
        targets = getattr(dataset, "targets", None)  # (N, C) label sets of a multi-label dataset
        self.labels = np.asarray(dataset.labels if targets is None else targets, np.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset[int(i)][0]


def as_sequences(x: Any) -> Sequences:
    """``x`` as something :func:`forward` reads: a ``FeatureDataset`` (it has a ``store``) through
    ``DatasetSequences``; anything with ``lengths`` and ``__getitem__`` as it is; else a list of arrays."""
    if hasattr(x, "store") and hasattr(x, "indices"):
        return DatasetSequences(x)
    if hasattr(x, "lengths") and hasattr(x, "__getitem__"):
        return x
    return ArraySequences(x)


def _as_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))


def _padded(seqs: Sequences, batch: list[int], lengths: np.ndarray) -> torch.Tensor:
    """The batch's videos, float32, zero-padded to its longest: ``(B, T, D)``."""
    items = [_as_tensor(seqs[i]) for i in batch]
    x = torch.zeros(len(batch), int(lengths[batch].max()), items[0].shape[1])
    for b, (i, item) in enumerate(zip(batch, items, strict=True)):
        if len(item) != lengths[i]:
            raise ValueError(f"sequence {i} has {len(item)} frames but its length says {lengths[i]}")
        x[b, : lengths[i]] = item
    return x


def _run_batch(
    models: list[nn.Module], views: tuple, x: torch.Tensor, lens: torch.Tensor, *, attention: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(B, M, V, C)`` logits of one batch, and ``(B, T)`` the sum over models of the original
    view's attention (None without ``attention``)."""
    device = x.device
    run = list(views) + ([ORIGINAL] if attention and ORIGINAL not in views else [])
    out: list[list[Any]] = [[None] * len(views) for _ in models]
    weights = None
    for m, model in enumerate(models):
        for mode in run:
            xm, lm = tta_batch(x, lens, mode)
            if attention and mode == ORIGINAL:
                z, a = model(xm, lm.to(device), return_attention=True)
                a = a.float().double().cpu()
                weights = a if weights is None else weights + a
            else:
                z = model(xm, lm.to(device))
            if mode in views:
                out[m][views.index(mode)] = z.float().double().cpu()
    logits = torch.stack([torch.stack(per_view, dim=1) for per_view in out], dim=1)
    return logits.numpy(), None if weights is None else weights.numpy()


@torch.inference_mode()
def forward(
    models: Sequence[nn.Module],
    views: Iterable[str],
    sequences: Any,
    *,
    batch_size: int,
    batch_frames: int | None,
    device: str | torch.device,
    attention: bool = False,
    members: Iterable[int] | None = None,
    n_classes: int | None = None,
    shortest_first: bool = False,
    task: str = "single",
) -> Outputs:
    """Raw logits of every model in ``models`` (put in eval mode) on every view of ``views`` of every
    sequence, in input order.

    Args:
        models: the models; ``members`` their model indices (default ``0 .. M - 1``).
        views: view names (``engine.views.tta_indices``); ``original`` is the sequence as given.
        sequences: a ``FeatureDataset``, a list of ``(T, D)`` arrays, or anything with ``__len__``,
            ``__getitem__`` (a ``(T, D)`` array or tensor) and ``lengths`` (``as_sequences``); read
            one batch at a time.
        batch_size, batch_frames: the frame budget of a batch (``FrameBudgetBatches``).
        attention: also the per-video attention of the original view (``Outputs.attention``).
        n_classes: C when there may be no sequence at all (else read from the models' output).
        shortest_first: batch the sequences shortest first (a batch then pads to videos of about its
            own length: a whole split's evaluation); the outputs are in input order either way.
        task: the run's task ("single" | "multilabel"), kept in the ``Outputs`` (how ``probs`` reads them).
    """
    seqs = as_sequences(sequences)
    views = tuple(views)
    members = tuple(range(len(models)) if members is None else members)
    lengths = np.asarray(seqs.lengths, np.int64)
    labels = getattr(seqs, "labels", None)
    for model in models:
        model.eval()
    shape = (len(seqs), len(models), len(views))
    logits = None if n_classes is None else np.zeros((*shape, int(n_classes)), np.float64)
    attn: list | None = [None] * len(seqs) if attention else None
    order = by_length(lengths) if shortest_first else list(range(len(seqs)))
    for batch in FrameBudgetBatches(order, lengths, batch_size, batch_frames):
        x = _padded(seqs, batch, lengths).to(device)
        z, weights = _run_batch(list(models), views, x, torch.from_numpy(lengths[batch]), attention=attention)
        if logits is None:  # C from the first batch
            logits = np.zeros((*shape, z.shape[-1]), np.float64)
        logits[batch] = z
        if attn is not None:
            assert weights is not None  # attention asked for
            for b, i in enumerate(batch):
                attn[i] = weights[b, : lengths[i]] / len(models)
    if logits is None:  # no sequence, C not given
        logits = np.zeros((*shape, 0), np.float64)
    return Outputs(logits, members, views, labels, attn, task)
