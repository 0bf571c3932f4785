"""Length bucketing and rank shares of ``FrameBudgetBatches``, against hand-counted draws and bounds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from vidcls.data.batching import (
    BUCKET_WINDOW_BATCHES,
    FILLER,
    FrameBudgetBatches,
    filler,
    padded_frames,
)
from vidcls.data.dataset import EpochSampler, FeatureDataset, collate, make_loader
from vidcls.store.directory import open_splits
from vidcls.store.synth import make_synthetic


def _sampler(lengths, seed=5, epoch=2, n=None):
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 3.0, len(lengths))
    s = EpochSampler(len(lengths), weights, seed=seed, num_samples=n)
    s.set_epoch(epoch)
    return s


LENGTHS = np.random.default_rng(1).integers(16, 97, 600)  # the benchmark's 16-96 frames


def test_bucketing_keeps_the_epochs_draw_and_cuts_padding():
    sampler = _sampler(LENGTHS)
    draw = list(sampler)
    plain = list(FrameBudgetBatches(sampler, LENGTHS, 48, 8192))
    bucket = list(FrameBudgetBatches(sampler, LENGTHS, 48, 8192, bucket=True))
    # the same videos with the same augmentation seeds: class balance is the draw's
    assert Counter(k for b in bucket for k in b) == Counter(draw)
    real = int(sum(LENGTHS[p] for p, _ in draw))
    # 600 draws sorted in one window, 48 per batch: a batch spans ~7 frames of 16-96, so padding < 10 %;
    # the random order pads each batch to ~its max, ~1.5x the mean of 16-96
    assert padded_frames(bucket, LENGTHS) < 1.10 * real
    assert padded_frames(plain, LENGTHS) > 1.35 * real
    assert all(len(b) <= 48 for b in bucket)


def test_bucketed_batches_come_in_a_seeded_shuffled_order():
    sampler = _sampler(LENGTHS, n=48 * BUCKET_WINDOW_BATCHES * 2)  # two windows
    batches = FrameBudgetBatches(sampler, LENGTHS, 48, bucket=True)
    first = list(batches)
    assert Counter(k for b in first for k in b) == Counter(sampler)  # every window's batches are kept
    assert first == list(batches)  # depends only on (seed, epoch)
    longest = [max(LENGTHS[p] for p, _ in b) for b in first]
    assert longest != sorted(longest)  # not handed out shortest first
    sampler.set_epoch(3)
    assert list(batches) != first


def test_frame_budget_is_per_rank():
    lengths = np.array([10, 10, 10, 10, 40, 40])
    # one process: [4, 5, 0] would pad to 3 x 40 = 120 > 100; two ranks: the busier rank holds ceil(n/2)
    # videos, so [4, 5, 0, 1] pads to 2 x 40 = 80 per rank and adding 2 would make 3 x 40
    one = FrameBudgetBatches([4, 5, 0, 1, 2, 3], lengths, 8, 100).global_batches()
    two = FrameBudgetBatches([4, 5, 0, 1, 2, 3], lengths, 8, 100, world=2).global_batches()
    assert one == [[4, 5], [0, 1, 2, 3]]
    assert two == [[4, 5, 0, 1], [2, 3]]
    for batch in two:
        assert -(-len(batch) // 2) * max(lengths[batch]) <= 100


def test_rank_shares_and_fillers():
    lengths = np.full(7, 5)
    ranks = [list(FrameBudgetBatches(list(range(7)), lengths, 3, rank=r, world=3)) for r in range(3)]
    # global batches [0,1,2] [3,4,5] [6]: rank r takes r::3; the last batch leaves ranks 1, 2 a filler
    assert ranks[0] == [[0], [3], [6]]
    assert ranks[1] == [[1], [4], [(6, 0, FILLER)]]
    assert ranks[2] == [[2], [5], [(6, 0, FILLER)]]
    # two ranks, rank left to its default (0): the first of every pair
    assert list(FrameBudgetBatches(list(range(5)), lengths, 2, world=2)) == [[0], [2], [4]]
    assert filler(3) == (3, 0, FILLER) and filler((3, 7)) == (3, 7, FILLER)


def test_a_filler_comes_back_with_a_negative_position(tmp_path):
    make_synthetic(tmp_path, videos=40, dim=4, min_frames=3, max_frames=6, seed=0)
    ds = FeatureDataset(open_splits(tmp_path)["train"])
    _, _, _, pos = collate([ds[(2, 9)], ds[(5, 9, FILLER)]])
    assert pos.tolist() == [2, -6]
    torch.testing.assert_close(ds[(5, 9, FILLER)][0], ds[5][0])


def test_evaluation_shares_cover_every_video_once(tmp_path):
    make_synthetic(tmp_path, videos=40, dim=4, min_frames=3, max_frames=9, seed=0)
    ds = FeatureDataset(open_splits(tmp_path)["train"])
    seen = []
    for rank in range(3):
        seen += [int(p) for *_, pos in make_loader(ds, 4, rank=rank, world=3) for p in pos]
    assert sorted(seen) == list(range(len(ds)))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_batch_respects_both_bounds(world):
    sampler = _sampler(LENGTHS)
    for bucket in (False, True):
        for batch in FrameBudgetBatches(
            sampler, LENGTHS, 16, 400, bucket=bucket, world=world
        ).global_batches():
            assert len(batch) <= 16
            assert -(-len(batch) // world) * max(LENGTHS[p] for p, _ in batch) <= 400 or len(batch) == 1


class FixedDraw:
    """The same keys whatever the epoch: isolates the batch order's own dependence on (seed, epoch)."""

    def __init__(self, keys, seed, epoch):
        self.keys, self.seed, self.epoch = keys, seed, epoch

    def __iter__(self):
        return iter(self.keys)


def test_the_batch_order_is_seeded_by_seed_and_epoch():
    keys = list(range(400))

    def order(seed, epoch):
        return FrameBudgetBatches(FixedDraw(keys, seed, epoch), LENGTHS, 8, bucket=True).global_batches()

    base = order(5, 2)
    assert sorted(map(tuple, base)) == sorted(map(tuple, order(5, 3)))  # the same batches ...
    assert base != order(5, 3) and base != order(6, 2)  # ... in another order per epoch and per seed
    assert order(5, 3) != order(6, 2)  # seed and epoch do not simply add up
    assert base == order(5, 2)
