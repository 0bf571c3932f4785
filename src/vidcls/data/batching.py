"""From an epoch's draw to batches: the frame budget, length bucketing, and each rank's share.

The sampler (``data.EpochSampler``) draws the epoch's videos -- class-balanced, the same on every rank
because it depends only on ``(seed, epoch)``. ``FrameBudgetBatches`` then cuts that draw into *global*
batches (at most ``batch_size`` videos, at most ``batch_frames`` padded frames per process), optionally
groups videos of similar length first (``bucket``), and under torchrun hands each rank its share of
every global batch. Which videos an epoch sees, and each video's augmentation seed, never depend on
bucketing or on the number of ranks; only the grouping into batches does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from torch.utils.data import Sampler

# Bucketing sorts the draw by length within windows of this many batches' worth of videos. A window
# keeps batches local to a stretch of the draw (the whole epoch sorted would give the model the same
# neighbours every epoch); 32 batches of 16-96 frames still leave almost no padding (benchmarks/train_step.py).
BUCKET_WINDOW_BATCHES = 32

# A rank whose share of a global batch would be empty (the epoch's last batch smaller than the number
# of ranks) still has to step with the others: it gets the batch's first video as a filler, which the
# loss weighs 0. The dataset returns a filler's position as -(position + 1).
FILLER = "filler"

# A key the batches carry: a dataset position, ``(position, seed)``, or a filler ``(position, seed, FILLER)``.
BatchKey: TypeAlias = "int | np.integer | tuple"


def key_position(key: BatchKey) -> int:
    """The dataset position of a batch key: an int, ``(position, seed)`` or a filler."""
    return int(key if isinstance(key, (int, np.integer)) else key[0])


class FrameBudgetBatches(Sampler):
    """Cuts the keys ``sampler`` draws into batches of dataset keys.

    A new batch starts when adding the next video would give more than ``batch_size`` videos or more
    than ``batch_frames`` padded frames per process (a rank's share of videos x the longest of the
    batch; None: no frame bound). A video longer than ``batch_frames`` on its own forms a batch of
    one. Augmentation only ever drops frames, so the bound holds for the tensors the collate builds too.

    Args:
        bucket: before cutting, sort the draw by length within windows of ``BUCKET_WINDOW_BATCHES``
            batches; the batches then come in an order shuffled by ``(sampler.seed, sampler.epoch)``.
            The epoch's videos (and so its class balance) are exactly the draw's.
        rank, world: under torchrun, this rank takes videos ``rank::world`` of every global batch.

    The batches follow from the sampler's draw, which depends only on ``(seed, epoch)``: ``len()``
    re-draws the epoch chosen by ``set_epoch``, so the loader's length is known before the epoch runs.
    """

    def __init__(
        self,
        sampler: Iterable[Any],
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        batch_frames: int | None = None,
        *,
        bucket: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        self.sampler, self.lengths = sampler, np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.batch_frames = batch_size, batch_frames
        self.bucket, self.rank, self.world = bucket, rank, world

    def global_batches(self) -> list[list]:
        """The epoch's batches over all ranks, in training order."""
        keys = list(self.sampler)
        if not self.bucket:
            return self._cut(keys)
        window = BUCKET_WINDOW_BATCHES * self.batch_size
        batches: list[list] = []
        for start in range(0, len(keys), window):
            chunk = keys[start : start + window]
            chunk.sort(key=lambda k: int(self.lengths[key_position(k)]))  # stable: ties keep the draw's order
            batches += self._cut(chunk)
        seed = (getattr(self.sampler, "seed", 0) * 1_000_033 + getattr(self.sampler, "epoch", 0)) % (
            2**63 - 1
        )
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed)).tolist()
        return [batches[i] for i in order]

    def _cut(self, keys: list) -> list[list]:
        batches: list[list] = []
        batch: list = []
        longest = 0
        for key in keys:
            n = int(self.lengths[key_position(key)])
            grown = max(longest, n)
            per_rank = -(-(len(batch) + 1) // self.world)  # videos on the busiest rank
            too_many = len(batch) + 1 > self.batch_size
            too_long = self.batch_frames is not None and per_rank * grown > self.batch_frames
            if batch and (too_many or too_long):
                batches.append(batch)
                batch, grown = [], n
            batch.append(key)
            longest = grown
        if batch:
            batches.append(batch)
        return batches

    def _batches(self) -> list[list]:
        batches = self.global_batches()
        if self.world == 1:
            return batches
        return [batch[self.rank :: self.world] or [filler(batch[0])] for batch in batches]

    def __iter__(self) -> Iterator[list]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self.global_batches())


def filler(key: BatchKey) -> tuple:
    """A stand-in for ``key`` that the loss ignores (see ``FILLER``)."""
    pos, seed = (key, 0) if isinstance(key, (int, np.integer)) else key[:2]
    return int(pos), int(seed), FILLER


def padded_frames(batches: list[list], lengths: Sequence[int] | np.ndarray) -> int:
    """Frames the batches occupy once padded to their longest video (sum of videos x longest)."""
    lengths = np.asarray(lengths)
    return int(sum(len(b) * max(int(lengths[key_position(k)]) for k in b) for b in batches))
