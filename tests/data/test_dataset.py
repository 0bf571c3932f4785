"""Tests for vidcls.data.dataset: augmentation, dataset, collate, sampler, loaders, class weights, splits,
and the bounds on long videos (uniform thinning to max_frames, batches of at most batch_frames frames).

Expectations are independent of the code under test: hand-computed weights and shares, the spec's
augmentation probabilities checked statistically (tolerance ~4 standard errors), and bitwise round
trips through the HDF5 store and the DataLoader.

``augment_sequence`` takes a (T, D) float32 torch tensor and a ``torch.Generator``; ``aug`` below
is the one place that calls it with a seed.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vidcls.config import TrainConfig
from vidcls.data.dataset import (
    EpochSampler,
    FeatureDataset,
    FrameBudgetBatches,
    augment_sequence,
    by_length,
    class_weights,
    collate,
    feature_stats,
    load_splits,
    make_loader,
    train_sampler,
)
from vidcls.errors import ConfigError, StoreError
from vidcls.store import FeatureStore, write_store
from vidcls.utils.sampling import uniform_indices

N_SEEDS = 4000  # augmentation trials for the frequency tests


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def aug(x: np.ndarray, seed) -> np.ndarray:
    """Augment a (T, D) float32 array with a generator seeded by ``seed``; returns float32 numpy."""
    y = augment_sequence(torch.from_numpy(x), torch.Generator().manual_seed(seed))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    return y.numpy()


def index_sequence(T: int, D: int = 3) -> np.ndarray:
    """(T, D) float32 whose row t holds the value t everywhere: rows encode their frame index."""
    return np.repeat(np.arange(T, dtype=np.float32)[:, None], D, axis=1)


def decode(y: np.ndarray, T: int) -> dict:
    """Recover from an augmented ``index_sequence`` which frames were kept, the shift and the noise.

    Returns dict(kept=int, shift=int (0 = none), noisy=bool, residual=array, order=array).
    Asserts that the output is a (possibly rotated) strictly increasing subsequence of the frames.
    """
    assert y.dtype == np.float32 and y.ndim == 2
    idx2d = np.rint(y)
    residual = (y - idx2d).astype(np.float64)
    # noise sigma 0.01: the nearest integer is still the frame index (|noise| < 0.5 always here)
    assert np.all(idx2d == idx2d[:, :1]), "columns of a row decode to different frames"
    idx = idx2d[:, 0].astype(np.int64)
    assert np.all((idx >= 0) & (idx < T))
    assert len(np.unique(idx)) == len(idx), "a frame appears twice"
    descents = np.flatnonzero(np.diff(idx) < 0)
    if len(descents) == 0:
        shift = 0
    else:
        assert len(descents) == 1, f"not a rotation of an ordered subsequence: {idx.tolist()}"
        k = int(descents[0]) + 1  # where the increasing run starts after np.roll(., shift)
        shift = k if k <= len(idx) // 2 else k - len(idx)
        assert np.all(np.diff(np.roll(idx, -shift)) > 0)
    return dict(kept=len(idx), shift=shift, noisy=bool(np.any(residual != 0)), residual=residual, order=idx)


def make_videos(lengths, labels, D, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (f"v{i:03d}", rng.normal(0, 1, (T, D)).astype(np.float32), int(y))
        for i, (T, y) in enumerate(zip(lengths, labels))
    ]


def write(path, videos, class_names, D, dtype="float16"):
    write_store(path, videos, list(class_names), D, dtype=dtype)
    return FeatureStore(path)


def as_f16_f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


def f32(t: torch.Tensor) -> np.ndarray:
    """An item's features as float32 numpy (items may stay in the store's float16)."""
    assert t.dtype in (torch.float16, torch.float32)
    return t.float().numpy()


def assert_close_f16(actual: np.ndarray, expected: np.ndarray):
    """Equal up to one float16 rounding (items may be cast back to the store dtype)."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=2.0**-11, atol=2.0**-24)


def within(count: int, n: int, p: float, k: float = 4.0) -> bool:
    se = math.sqrt(p * (1 - p) / n)
    return abs(count / n - p) <= k * se


# ---------------------------------------------------------------------------------------------
# augment_sequence
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", range(1, 9))
def test_augment_short_sequences_unchanged(T):
    x = torch.from_numpy(np.random.default_rng(T).normal(size=(T, 5)).astype(np.float32))
    ref = x.clone()
    for seed in range(300):
        y = augment_sequence(x, torch.Generator().manual_seed(seed))
        assert y is x
        assert torch.equal(y, ref)


def test_augment_nine_frames_is_augmented():
    # the boundary: T = 9 > 8 must be augmented for some seeds (subsampling keeps exactly 8)
    x = index_sequence(9)
    outs = [aug(x, s) for s in range(200)]
    changed = [y for y in outs if y.shape != x.shape or not np.array_equal(y, x)]
    assert len(changed) > 50
    assert {y.shape[0] for y in outs} == {8, 9}


def test_augment_min_eight_frames_kept():
    # T = 10: int(10 * U(0.7, 1)) is 7, 8 or 9; the floor of 8 turns every 7 into 8
    T = 10
    x = index_sequence(T)
    kept = []
    for s in range(2000):
        d = decode(aug(x, s), T)
        if d["kept"] < T:
            kept.append(d["kept"])
    assert set(kept) == {8, 9}
    # P(keep = 8 | subsampled) = P(10U < 9) = (0.9 - 0.7) / 0.3 = 2/3
    assert within(kept.count(8), len(kept), 2 / 3)


def test_augment_statistics_match_spec():
    T, D = 40, 3
    x = index_sequence(T, D)
    ref = x.copy()
    n_sub = n_shift = n_noise = 0
    kept, shifts, residuals = [], Counter(), []
    for seed in range(N_SEEDS):
        d = decode(aug(x, seed), T)
        if d["kept"] < T:
            n_sub += 1
            kept.append(d["kept"])
        else:
            np.testing.assert_array_equal(np.sort(d["order"]), np.arange(T))
        if d["shift"] != 0:
            n_shift += 1
            shifts[d["shift"]] += 1
        else:  # no shift: the kept rows are in their original order
            assert np.all(np.diff(d["order"]) > 0)
        if d["noisy"]:
            n_noise += 1
            residuals.append(d["residual"].ravel())
    np.testing.assert_array_equal(x, ref)  # the input is never modified in place

    assert within(n_sub, N_SEEDS, 0.5), n_sub
    assert within(n_shift, N_SEEDS, 0.3 * 6 / 7), n_shift  # a drawn shift of 0 is no shift
    assert within(n_noise, N_SEEDS, 0.2), n_noise
    # every non-zero shift in [-3, 3] occurs, each with probability 0.3 / 7
    assert set(shifts) == {-3, -2, -1, 1, 2, 3}
    for s, c in shifts.items():
        assert within(c, N_SEEDS, 0.3 / 7), (s, c)
    # kept fraction in [0.7, 1.0): int(40 U(0.7, 1)) is uniform on 28..39, mean 33.5, var 143/12
    kept = np.array(kept)
    assert kept.min() >= 28 and kept.max() <= 39
    assert set(kept.tolist()) == set(range(28, 40))
    assert abs(kept.mean() - 33.5) <= 4 * math.sqrt(143 / 12 / len(kept))
    # Gaussian noise with sigma 0.01
    r = np.concatenate(residuals)
    assert abs(r.std() - 0.01) <= 0.001
    assert abs(r.mean()) <= 4 * 0.01 / math.sqrt(len(r))


def test_augment_events_independent_of_each_other():
    # the three decisions are separate draws: subsampled and non-subsampled videos are shifted and
    # noised at the same rates
    T = 40
    x = index_sequence(T)
    table = Counter()
    for seed in range(N_SEEDS):
        d = decode(aug(x, seed), T)
        table[(d["kept"] < T, d["shift"] != 0, d["noisy"])] += 1
    for sub in (False, True):
        n = sum(v for k, v in table.items() if k[0] == sub)
        shifted = sum(v for k, v in table.items() if k[0] == sub and k[1])
        noisy = sum(v for k, v in table.items() if k[0] == sub and k[2])
        assert within(shifted, n, 0.3 * 6 / 7, 4.5)
        assert within(noisy, n, 0.2, 4.5)


def test_augment_reproducible_per_seed():
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    outs = []
    for seed in range(20):
        a, b = aug(x, seed), aug(x, seed)
        np.testing.assert_array_equal(a, b)
        assert a.shape[1] == 4
        outs.append(a)
    distinct = {(o.shape, o.tobytes()) for o in outs}
    assert len(distinct) > 10  # and different seeds give different augmentations


# ---------------------------------------------------------------------------------------------
# FeatureDataset and collate
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_store(tmp_path):
    lengths, labels = [12, 5, 20, 9], [1, 0, 2, 1]
    videos = make_videos(lengths, labels, D=6, seed=1)
    store = write(tmp_path / "train.h5", videos, ["a", "b", "c"], 6)
    yield store, videos
    store.close()


def test_dataset_items_are_stored_frames(small_store):
    store, videos = small_store
    ds = FeatureDataset(store)
    assert len(ds) == 4
    for pos, (_vid, arr, label) in enumerate(videos):
        for key in (pos, np.int64(pos)):
            x, y, p = ds[key]
            assert isinstance(x, torch.Tensor) and x.shape == arr.shape
            np.testing.assert_array_equal(f32(x), as_f16_f32(arr))  # float16 -> float32 exact
            assert y == label and p == pos
    np.testing.assert_array_equal(ds.labels, [1, 0, 2, 1])
    np.testing.assert_array_equal(ds.lengths, [12, 5, 20, 9])


def test_dataset_subset_positions(small_store):
    store, videos = small_store
    ds = FeatureDataset(store, [2, 0])
    assert len(ds) == 2 and ds.video_ids() == ["v002", "v000"]
    x, y, p = ds[0]
    np.testing.assert_array_equal(f32(x), as_f16_f32(videos[2][1]))
    assert (y, p) == (2, 0)  # position within the dataset, not the store index
    x, y, p = ds[1]
    np.testing.assert_array_equal(f32(x), as_f16_f32(videos[0][1]))
    assert (y, p) == (1, 1)
    np.testing.assert_array_equal(ds.labels, [2, 1])
    np.testing.assert_array_equal(ds.lengths, [20, 12])


def sampler_seeds(n: int = 30) -> list:
    """Real augmentation seeds as EpochSampler attaches them to items."""
    return [seed for _, seed in EpochSampler(n, None, seed=7)]


def test_dataset_augment_uses_key_seed(small_store):
    store, videos = small_store
    ds = FeatureDataset(store, augment=True)
    raw = as_f16_f32(videos[2][1])  # 20 frames
    n_changed = 0
    for seed in sampler_seeds():
        x, y, p = ds[(2, seed)]
        assert_close_f16(f32(x), aug(raw.copy(), seed))
        x2, _, _ = ds[(2, seed)]
        assert torch.equal(x, x2)
        assert (y, p) == (2, 2)
        n_changed += x.shape != raw.shape or not np.array_equal(f32(x), raw)
    assert n_changed >= 10  # 1 - 0.5 * (1 - 0.3 * 6/7) * 0.8 ~ 70 % of seeds change something
    # an int key (evaluation) is never augmented, even with augment=True
    np.testing.assert_array_equal(f32(ds[2][0]), raw)
    # a short video (5 frames) is never augmented
    for seed in sampler_seeds():
        np.testing.assert_array_equal(f32(ds[(1, seed)][0]), as_f16_f32(videos[1][1]))


def test_dataset_without_augment_ignores_seed(small_store):
    store, videos = small_store
    ds = FeatureDataset(store, augment=False)
    for seed in sampler_seeds():
        x, y, p = ds[(2, seed)]
        np.testing.assert_array_equal(f32(x), as_f16_f32(videos[2][1]))
        assert (y, p) == (2, 2)


def test_dataset_float32_store_exact(tmp_path):
    videos = make_videos([10, 11], [0, 1], D=4, seed=3)
    store = write(tmp_path / "train.h5", videos, ["a", "b"], 4, dtype="float32")
    ds = FeatureDataset(store)
    for pos, (_, arr, _) in enumerate(videos):
        np.testing.assert_array_equal(f32(ds[pos][0]), arr)
    store.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_collate_pads_with_zeros(dtype):
    rng = np.random.default_rng(0)
    feats = [(torch.from_numpy(rng.normal(size=(T, 4)).astype(np.float32)) + 5).to(dtype) for T in (3, 7, 1)]
    batch = [(feats[0], 2, 10), (feats[1], 0, 11), (feats[2], 1, 4)]
    x, lengths, labels, positions = collate(batch)
    assert x.shape == (3, 7, 4) and x.dtype == dtype
    for t in (lengths, labels, positions):
        assert t.dtype == torch.int64
    assert lengths.tolist() == [3, 7, 1]
    assert labels.tolist() == [2, 0, 1]
    assert positions.tolist() == [10, 11, 4]
    for b, f in enumerate(feats):
        L = f.shape[0]
        assert torch.equal(x[b, :L], f)
        assert torch.count_nonzero(x[b, L:]) == 0
    # a batch of one needs no padding
    x1, l1, _, _ = collate([(feats[1], 0, 0)])
    assert x1.shape == (1, 7, 4) and torch.equal(x1[0], feats[1]) and l1.tolist() == [7]


# ---------------------------------------------------------------------------------------------
# EpochSampler
# ---------------------------------------------------------------------------------------------
def draw(sampler: EpochSampler, epoch: int) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("weighted", [False, True])
def test_sampler_deterministic_per_seed_and_epoch(weighted):
    n = 50
    w = np.linspace(0.5, 3.0, n) if weighted else None
    a, b = EpochSampler(n, w, seed=3), EpochSampler(n, w, seed=3)
    e2 = draw(a, 2)
    assert e2 == draw(b, 2)  # positions and attached seeds
    assert len(e2) == len(a) == n
    assert draw(a, 2) == e2  # re-running an epoch repeats it
    assert all(isinstance(p, int) for p, _ in e2)
    seeds2 = [s for _, s in e2]
    assert len(set(seeds2)) == n  # every item of an epoch gets its own augmentation seed
    e3 = draw(a, 3)
    assert [p for p, _ in e3] != [p for p, _ in e2]
    assert set(s for _, s in e3).isdisjoint(seeds2)  # ... and a new one every epoch
    other = draw(EpochSampler(n, w, seed=4), 2)
    assert [p for p, _ in other] != [p for p, _ in e2]
    assert set(s for _, s in other).isdisjoint(seeds2)


def test_sampler_seeds_do_not_depend_on_positions_drawn():
    # the k-th item of an epoch gets the same seed whether it is drawn weighted or shuffled:
    # augmentation is tied to (seed, epoch, place in the epoch), never to the worker
    n = 20
    a = draw(EpochSampler(n, None, seed=5), 4)
    b = draw(EpochSampler(n, np.arange(1.0, n + 1), seed=5), 4)
    assert [s for _, s in a] == [s for _, s in b]


def test_sampler_shuffle_is_permutation():
    n = 37
    s = EpochSampler(n, None, seed=1)
    orders = []
    for epoch in range(5):
        order = [p for p, _ in draw(s, epoch)]
        assert sorted(order) == list(range(n))
        orders.append(order)
    assert len({tuple(o) for o in orders}) == 5
    assert orders[0] != list(range(n))


@pytest.mark.parametrize(
    "counts,clip,expected_shares",
    [
        # 80/20: weights 100/160 = 0.625 and 100/40 = 2.5 -> each class carries 50 of the mass
        ((80, 20), (0.5, 10.0), (0.5, 0.5)),
        # 90/7/3: weights 0.370 -> 0.5 (clipped), 100/21, 11.1 -> 10 (clipped); masses 45, 33.33, 30
        (
            (90, 7, 3),
            (0.5, 10.0),
            (45 / (45 + 100 / 3 + 30), (100 / 3) / (45 + 100 / 3 + 30), 30 / (45 + 100 / 3 + 30)),
        ),
    ],
)
def test_sampler_weighted_class_frequencies(counts, clip, expected_shares):
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = np.random.default_rng(0).permutation(labels)
    n = len(labels)
    per_sample = class_weights(labels, len(counts), clip).numpy()[labels]
    sampler = EpochSampler(n, per_sample, seed=5)
    drawn = []
    for epoch in range(200):
        order = [p for p, _ in draw(sampler, epoch)]
        assert len(order) == n and all(0 <= p < n for p in order)
        drawn.extend(order)
    assert len(set(drawn[:n])) < n  # with replacement: an epoch repeats some positions
    total = len(drawn)
    drawn_labels = labels[np.array(drawn)]
    for c, share in enumerate(expected_shares):
        assert within(int(np.sum(drawn_labels == c)), total, share), (c, share)


def test_train_sampler_uses_class_weight_per_sample(small_store):
    store, _ = small_store
    ds = FeatureDataset(store, [0, 1, 2, 3])  # labels 1, 0, 2, 1
    w = torch.tensor([2.0, 0.5, 7.0])
    s = train_sampler(ds, w, seed=9)
    assert s.n == 4 and s.seed == 9
    np.testing.assert_allclose(s.weights.numpy(), [0.5, 2.0, 7.0, 0.5])
    assert train_sampler(ds, None, seed=9).weights is None


# ---------------------------------------------------------------------------------------------
# DataLoader reproducibility
# ---------------------------------------------------------------------------------------------
def epoch_batches(loader, sampler, epoch):
    sampler.set_epoch(epoch)
    return [tuple(t.clone() for t in batch) for batch in loader]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y)) for x, y in zip(a, b)
    )


def test_loader_batches_independent_of_workers(tmp_path):
    rng = np.random.default_rng(4)
    n = 22
    lengths = rng.integers(9, 40, n)
    labels = np.arange(n) % 3
    videos = make_videos(lengths, labels, D=8, seed=4)
    store = write(tmp_path / "train.h5", videos, ["a", "b", "c"], 8)
    ds = FeatureDataset(store, augment=True)
    w = class_weights(ds.labels, 3)
    s0, s2 = train_sampler(ds, w, seed=11), train_sampler(ds, w, seed=11)
    loader0 = make_loader(ds, 5, sampler=s0, workers=0)
    loader2 = make_loader(ds, 5, sampler=s2, workers=2)

    b0 = epoch_batches(loader0, s0, 3)
    b2 = epoch_batches(loader2, s2, 3)
    assert len(b0) == math.ceil(n / 5)
    assert sum(len(b[1]) for b in b0) == n
    assert same_batches(b0, b2)
    assert same_batches(b2, epoch_batches(loader2, s2, 3))  # a re-run epoch repeats exactly
    assert same_batches(b0, epoch_batches(loader0, s0, 3))
    assert not same_batches(b0, epoch_batches(loader2, s2, 4))

    # the batches really are augmented: some items differ from their stored frames
    n_aug = 0
    for x, lens, ys, pos in b0:
        for b in range(len(pos)):
            raw = torch.from_numpy(as_f16_f32(videos[int(pos[b])][1]))
            assert int(ys[b]) == labels[int(pos[b])]
            L = int(lens[b])
            assert torch.count_nonzero(x[b, L:]) == 0
            n_aug += L != raw.shape[0] or not torch.equal(x[b, :L].float(), raw)
    assert n_aug >= 5
    store.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_leaves_global_rng_alone(small_store, workers):
    # iterating a loader must not draw from torch's global RNG (it feeds dropout and init): with
    # persistent workers it would be drawn once per run, without workers once per epoch, so the
    # results would depend on --workers
    store, _ = small_store
    ds = FeatureDataset(store, augment=True)
    sampler = EpochSampler(len(ds), None, seed=1)
    loader = make_loader(ds, 3, sampler=sampler, workers=workers)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert sum(len(b[1]) for b in loader) == len(ds)
    assert torch.equal(torch.rand(4), expected)


def test_make_loader_rejects_bad_batch_size(small_store):
    store, _ = small_store
    ds = FeatureDataset(store)
    for bs in (0, -3):
        with pytest.raises(ValueError, match="--batch-size"):
            make_loader(ds, bs)


def test_eval_loader_is_shortest_first_and_unaugmented(small_store):
    store, videos = small_store  # lengths 12, 5, 20, 9
    ds = FeatureDataset(store, augment=True)
    batches = list(make_loader(ds, 3))
    assert [b[3].tolist() for b in batches] == [[1, 3, 0], [2]]
    x, lens, ys, pos = batches[0]
    assert lens.tolist() == [5, 9, 12]
    np.testing.assert_array_equal(x[2, :12].numpy(), as_f16_f32(videos[0][1]))  # stored frames, as they are


# ---------------------------------------------------------------------------------------------
# class_weights
# ---------------------------------------------------------------------------------------------
def test_class_weights_hand_computed():
    labels = np.array([0] * 25 + [1] * 25 + [2] * 50)
    w = class_weights(labels, 3, (0.5, 10.0))
    assert w.dtype == torch.float32 and w.shape == (3,)
    # N / (C n_c) = 100 / 75, 100 / 75, 100 / 150
    torch.testing.assert_close(w, torch.tensor([4 / 3, 4 / 3, 2 / 3]))


def test_class_weights_clipped_both_ends():
    labels = np.array([0] * 2 + [1] * 30 + [2] * 68)
    # raw: 100/6 = 16.67 -> 10, 100/90 = 1.111, 100/204 = 0.490 -> 0.5
    torch.testing.assert_close(class_weights(labels, 3, (0.5, 10.0)), torch.tensor([10.0, 100 / 90, 0.5]))
    torch.testing.assert_close(
        class_weights(labels, 3, (0.1, 100.0)), torch.tensor([100 / 6, 100 / 90, 100 / 204])
    )
    torch.testing.assert_close(class_weights(labels, 3, (1.0, 1.0)), torch.ones(3))


def test_class_weights_missing_class_named():
    labels = np.array([0, 0, 2, 2, 2])
    with pytest.raises(ValueError, match="zebra"):
        class_weights(labels, 3, class_names=["cat", "zebra", "dog"])
    with pytest.raises(ValueError, match=r"\b1\b"):
        class_weights(labels, 3)
    with pytest.raises(ValueError) as info:
        class_weights(np.array([1, 1]), 4, class_names=["alpha", "beta", "gamma", "delta"])
    msg = str(info.value)
    assert "alpha" in msg and "gamma" in msg and "delta" in msg and "beta" not in msg


# ---------------------------------------------------------------------------------------------
# load_splits
# ---------------------------------------------------------------------------------------------
NAMES = ["cat", "dog", "eel"]


def write_split(d, split, counts, D=4, seed=0, names=NAMES):
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = np.random.default_rng(seed).permutation(labels)
    lengths = np.random.default_rng(seed + 1).integers(3, 15, len(labels))
    videos = [(f"{split}_{vid}", arr, y) for vid, arr, y in make_videos(lengths, labels, D, seed=seed)]
    write_store(d / f"{split}.h5", videos, names, D)
    return labels


def test_load_splits_uses_all_files(tmp_path):
    tr = write_split(tmp_path, "train", (6, 5, 4), seed=1)
    va = write_split(tmp_path, "val", (2, 2, 1), seed=2)
    te = write_split(tmp_path, "test", (3, 1, 2), seed=3)
    sp = load_splits(tmp_path, val_fraction=0.5, seed=0)
    assert sp.val_source == "val.h5"
    assert sp.class_names == NAMES and sp.feature_dim == 4
    assert len(sp.train) == 15 and len(sp.val) == 5 and len(sp.test) == 6
    np.testing.assert_array_equal(sp.train.labels, tr)
    np.testing.assert_array_equal(sp.val.labels, va)
    np.testing.assert_array_equal(sp.test.labels, te)
    assert sp.train.store.path.name == "train.h5"
    assert sp.val.store.path.name == "val.h5"
    assert sp.test.store.path.name == "test.h5"
    assert sp.train.augment and not sp.val.augment and not sp.test.augment
    assert not load_splits(tmp_path, augment=False).train.augment


def test_load_splits_no_test(tmp_path):
    write_split(tmp_path, "train", (6, 5, 4))
    write_split(tmp_path, "val", (2, 2, 1), seed=2)
    assert load_splits(tmp_path).test is None


def test_load_splits_carves_stratified_val(tmp_path):
    labels = write_split(tmp_path, "train", (20, 10, 5))
    sp = load_splits(tmp_path, val_fraction=0.2, seed=7)
    assert sp.val.store.path.name == "train.h5" and sp.train.store.path.name == "train.h5"
    assert "carved" in sp.val_source
    tr, va = set(sp.train.indices.tolist()), set(sp.val.indices.tolist())
    assert tr.isdisjoint(va) and tr | va == set(range(35))
    # 20 % of each class: 4, 2, 1
    assert np.bincount(sp.val.labels, minlength=3).tolist() == [4, 2, 1]
    assert np.bincount(sp.train.labels, minlength=3).tolist() == [16, 8, 4]
    np.testing.assert_array_equal(sp.val.labels, labels[sp.val.indices])
    assert sp.train.augment and not sp.val.augment
    # deterministic per seed, different for another seed
    again = load_splits(tmp_path, val_fraction=0.2, seed=7)
    np.testing.assert_array_equal(again.val.indices, sp.val.indices)
    np.testing.assert_array_equal(again.train.indices, sp.train.indices)
    others = [load_splits(tmp_path, val_fraction=0.2, seed=s).val.indices for s in (8, 9, 10)]
    assert any(not np.array_equal(o, sp.val.indices) for o in others)


@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.3, 0.5])
def test_load_splits_carved_sizes_follow_fraction(tmp_path, fraction):
    counts = (40, 17, 9)
    write_split(tmp_path, "train", counts)
    sp = load_splits(tmp_path, val_fraction=fraction, seed=1)
    val_counts = np.bincount(sp.val.labels, minlength=3)
    for n_c, v in zip(counts, val_counts):
        assert abs(v - fraction * n_c) <= 0.5 + 1e-9 and 1 <= v <= n_c - 1
    assert len(sp.val) + len(sp.train) == sum(counts)


def test_load_splits_single_class(tmp_path):
    write_split(tmp_path, "train", (10,), names=["only"])
    with pytest.raises(StoreError):
        load_splits(tmp_path)


@pytest.mark.parametrize("with_val", [False, True])
def test_load_splits_class_absent_from_train(tmp_path, with_val):
    write_split(tmp_path, "train", (10, 0, 8))
    if with_val:
        write_split(tmp_path, "val", (2, 2, 2), seed=5)
    with pytest.raises(StoreError, match="dog") as info:
        load_splits(tmp_path)
    msg = str(info.value).replace(str(tmp_path), "")
    assert "cat" not in msg and "eel" not in msg


def test_load_splits_missing_train(tmp_path):
    write_split(tmp_path, "val", (3, 3, 3))
    with pytest.raises(StoreError, match="train"):
        load_splits(tmp_path)
    with pytest.raises(StoreError):
        load_splits(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# long videos: uniform thinning to max_frames
# ---------------------------------------------------------------------------------------------
def exact_uniform(n: int, k: int) -> list[int]:
    """round(j (n-1) / (k-1)) in exact rational arithmetic (Python rounds halves to even, as numpy does)."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [0]
    return [round(Fraction(j * (n - 1), k - 1)) for j in range(k)]


@pytest.mark.parametrize(
    "n,k,expected",
    [
        (10, 4, [0, 3, 6, 9]),
        (30, 10, [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]),  # step 29/9 = 3.22
        (7, 5, [0, 2, 3, 4, 6]),  # step 1.5: 1.5 -> 2 and 4.5 -> 4 (halves round to even)
        (5, 8, [0, 1, 2, 3, 4]),  # short videos are kept whole
        (8, 8, list(range(8))),
        (9, 1, [0]),
    ],
)
def test_uniform_indices_hand_computed(n, k, expected):
    idx = uniform_indices(n, k)
    assert idx.dtype == np.int64 and idx.tolist() == expected
    assert exact_uniform(n, k) == expected


def test_uniform_indices_30000_frames():
    idx = uniform_indices(30_000, 512)
    assert idx.tolist() == exact_uniform(30_000, 512)
    assert len(idx) == 512 and idx[0] == 0 and idx[-1] == 29_999
    assert set(np.diff(idx).tolist()) == {58, 59}  # 29999 / 511 = 58.7: spread over the whole video
    with pytest.raises(ValueError, match=">= 1"):
        uniform_indices(10, 0)


def test_extraction_thins_with_the_same_rule():
    video = pytest.importorskip("vidcls.features.video")
    # 1 frame per second of a 30 s video: 30 times, thinned to 10
    times = video.Sampling(fps=1.0, max_frames=10).times(30.0)
    np.testing.assert_array_equal(times, [0, 3, 6, 10, 13, 16, 19, 23, 26, 29])


@pytest.fixture
def index_store(tmp_path):
    """float32 store whose rows hold their frame index: lengths 30, 7, 12 (labels 0, 1, 0)."""
    videos = [(f"v{i}", index_sequence(T, 3), y) for i, (T, y) in enumerate([(30, 0), (7, 1), (12, 0)])]
    store = write(tmp_path / "train.h5", videos, ["a", "b"], 3, dtype="float32")
    yield store
    store.close()


def test_dataset_thins_long_videos_uniformly(index_store):
    ds = FeatureDataset(index_store, max_frames=10)
    np.testing.assert_array_equal(ds.lengths, [10, 7, 10])
    frames = {pos: f32(ds[pos][0])[:, 0].astype(int).tolist() for pos in range(3)}
    assert frames[0] == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert frames[1] == list(range(7))  # not longer than max_frames: untouched
    # step 11/9: 0, 1.2, 2.4, 3.7, 4.9, 6.1, 7.3, 8.6, 9.8, 11
    assert frames[2] == [0, 1, 2, 4, 5, 6, 7, 9, 10, 11]
    # no limit: every frame
    unlimited = FeatureDataset(index_store)
    np.testing.assert_array_equal(unlimited.lengths, [30, 7, 12])
    assert f32(unlimited[0][0])[:, 0].tolist() == list(range(30))
    with pytest.raises(ConfigError, match="--max-frames"):
        FeatureDataset(index_store, max_frames=0)


def test_augmentation_starts_from_the_thinned_video(index_store):
    ds = FeatureDataset(index_store, augment=True, max_frames=10)
    thinned = {0, 3, 6, 10, 13, 16, 19, 23, 26, 29}
    for seed in sampler_seeds():
        x, _, _ = ds[(0, seed)]
        rows = f32(x)
        assert rows.shape[0] <= 10
        # the thinned frames, augmented: decode the frame indices through the noise
        assert set(np.rint(rows[:, 0]).astype(int).tolist()) <= thinned
        assert_close_f16(rows, aug(np.asarray(sorted(thinned), np.float32)[:, None].repeat(3, 1), seed))


def test_load_splits_applies_max_frames_to_every_split(tmp_path):
    for split, seed in (("train", 1), ("val", 2), ("test", 3)):
        write_split(tmp_path, split, (4, 4, 4), seed=seed)  # 3-14 frames
    sp = load_splits(tmp_path, max_frames=5)
    for ds in (sp.train, sp.val, sp.test):
        assert ds.max_frames == 5
        assert ds.lengths.max() == 5 and all(ds[i][0].shape[0] == ds.lengths[i] for i in range(len(ds)))
    assert load_splits(tmp_path).train.max_frames is None


# ---------------------------------------------------------------------------------------------
# long videos: batches bounded by padded frames
# ---------------------------------------------------------------------------------------------
def test_frame_budget_batches_hand_cut():
    lengths = np.array([10, 30, 5, 40, 40, 3])
    # 10 | +30 -> 2 x 30 = 60 | +5 -> 3 x 30 = 90 > 80: cut | 5, +40 -> 80 | +40 -> 120: cut | 40, +3 -> 80
    batches = FrameBudgetBatches(range(6), lengths, batch_size=3, batch_frames=80)
    assert list(batches) == [[0, 1], [2, 3], [4, 5]] and len(batches) == 3
    # the video count still cuts: at most 2 per batch
    assert list(FrameBudgetBatches(range(6), lengths, 2, 1000)) == [[0, 1], [2, 3], [4, 5]]
    assert list(FrameBudgetBatches(range(6), lengths, 4, None)) == [[0, 1, 2, 3], [4, 5]]
    # a video longer than the budget goes alone; the drawn order (with repeats) is kept
    assert list(FrameBudgetBatches([0, 3, 3, 2, 5], lengths, 8, 39)) == [[0], [3], [3], [2, 5]]
    # keys with augmentation seeds are cut by their position's length and passed on whole
    keyed = [(1, 11), (0, 12), (4, 13)]
    assert list(FrameBudgetBatches(keyed, lengths, 8, 60)) == [[(1, 11), (0, 12)], [(4, 13)]]


def test_make_loader_rejects_bad_batch_frames(small_store):
    store, _ = small_store
    with pytest.raises(ConfigError, match="--batch-frames"):
        make_loader(FeatureDataset(store), 4, batch_frames=0)


def test_loader_batches_respect_the_frame_budget(small_store):
    store, _ = small_store  # lengths 12, 5, 20, 9
    ds = FeatureDataset(store)
    loader = make_loader(ds, 3, batch_frames=24)
    assert len(loader) == 3
    batches = list(loader)
    # shortest first: 5 | +9 -> 2 x 9 = 18 | +12 -> 36: cut | 12, +20 -> 40: cut | 20
    assert [b[3].tolist() for b in batches] == [[1, 3], [0], [2]]
    assert [tuple(b[0].shape[:2]) for b in batches] == [(2, 9), (1, 12), (1, 20)]


def loader_batches(loader, sampler=None, epoch=0) -> list:
    if sampler is not None:
        sampler.set_epoch(epoch)
    return [tuple(t.clone() for t in batch) for batch in loader]


@pytest.mark.parametrize("weighted", [True, False])
def test_default_bounds_keep_todays_batches(tmp_path, weighted):
    # the spec's data: videos of at most 64 frames, batches of 48; with the default max_frames and
    # batch_frames every batch must be exactly what a plain batch_size=48 DataLoader gives
    cfg = TrainConfig()
    rng = np.random.default_rng(8)
    lengths = np.concatenate([[64] * 60, rng.integers(1, 65, 140)])
    labels = np.arange(len(lengths)) % 3
    store = write(tmp_path / "train.h5", make_videos(lengths, labels, D=4, seed=8), ["a", "b", "c"], 4)
    ds = FeatureDataset(store, augment=True, max_frames=cfg.max_frames)
    w = class_weights(ds.labels, 3) if weighted else None
    ours_s, plain_s = train_sampler(ds, w, seed=3), train_sampler(ds, w, seed=3)
    ours = make_loader(ds, cfg.batch_size, batch_frames=cfg.batch_frames, sampler=ours_s)
    plain = DataLoader(ds, batch_size=48, sampler=plain_s, collate_fn=collate)
    for epoch in (0, 1):
        got, want = loader_batches(ours, ours_s, epoch), loader_batches(plain, plain_s, epoch)
        assert len(ours) == len(want) == math.ceil(200 / 48) and same_batches(got, want)
    seq = make_loader(
        FeatureDataset(store, max_frames=cfg.max_frames), cfg.batch_size, batch_frames=cfg.batch_frames
    )
    # evaluation goes shortest first: the same order, in plain batches of 48
    plain_seq = DataLoader(FeatureDataset(store), 48, sampler=by_length(lengths), collate_fn=collate)
    assert same_batches(loader_batches(seq), loader_batches(plain_seq))
    store.close()


def test_30000_frame_video_gives_bounded_batches(tmp_path):
    # one 30,000-frame video among short ones: padded to it, a batch of 48 would be 1.44 M frames
    cfg = TrainConfig()
    lengths = [30_000] + [int(t) for t in np.random.default_rng(2).integers(5, 300, 99)]
    store = write(tmp_path / "train.h5", make_videos(lengths, np.arange(100) % 2, D=4, seed=2), ["a", "b"], 4)
    ds = FeatureDataset(store, augment=True, max_frames=cfg.max_frames)
    sampler = train_sampler(ds, class_weights(ds.labels, 2), seed=1)
    train = make_loader(ds, cfg.batch_size, batch_frames=cfg.batch_frames, sampler=sampler)
    val = make_loader(
        FeatureDataset(store, max_frames=cfg.max_frames), cfg.batch_size, batch_frames=cfg.batch_frames
    )
    shapes = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        n_batches = len(train)
        batches = [tuple(b[0].shape) for b in train]
        assert len(batches) == n_batches  # known before the epoch ran
        shapes += batches
    val_shapes = [tuple(b[0].shape) for b in val]
    assert sum(s[0] for s in val_shapes) == 100
    assert val_shapes[-1][1] == 512  # the long video (last: shortest go first) is there, thinned
    for B, T, D in shapes + val_shapes:
        assert T <= cfg.max_frames and B * T <= cfg.batch_frames and D == 4
    store.close()


# ---------------------------------------------------------------- input standardisation statistics


def test_feature_stats_are_the_train_subset_frame_statistics(tmp_path):
    """Mean/std over every frame of the subset's videos (population std), nothing from other rows."""
    videos = [
        ("a", np.array([[1.0, 100.0], [3.0, 100.0]], np.float32), 0),  # 2 frames
        ("b", np.array([[5.0, 100.0]], np.float32), 1),  # 1 frame
        ("c", np.array([[1000.0, -5.0]] * 4, np.float32), 1),
    ]  # left out below
    store = write(tmp_path / "s.h5", videos, ["x", "y"], 2, dtype="float32")
    mean, std = feature_stats(FeatureDataset(store, [0, 1]))
    # feature 0: frames 1, 3, 5 -> mean 3, var ((4 + 0 + 4) / 3) -> std sqrt(8/3)
    # feature 1: constant 100 -> std 0, floored at max(1e-6, 1% of the median std (sqrt(8/3) / 2))
    np.testing.assert_allclose(mean, [3.0, 100.0], rtol=1e-6)
    np.testing.assert_allclose(std, [math.sqrt(8 / 3), 0.01 * math.sqrt(8 / 3) / 2], rtol=1e-5)
    store.close()


def test_epoch_sampler_draws_num_samples_passes_without_replacement():
    """num_samples > n without weights: whole permutations one after another, the last one cut."""
    s = EpochSampler(4, None, seed=2, num_samples=10)
    order = [pos for pos, _ in s]
    assert len(s) == 10 and len(order) == 10
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:8]) == [0, 1, 2, 3]  # two full passes
    assert len(set(order[8:])) == 2  # then 2 distinct
    weighted = EpochSampler(4, np.ones(4), seed=2, num_samples=10)
    assert len([p for p, _ in weighted]) == 10 and len(weighted) == 10


def test_evaluation_batches_go_shortest_first_and_validate_keeps_dataset_order(tmp_path):
    """Lengths 5, 100, 6, 99 in batches of 2: sorted, the batches pad to 6 and 100 (212 padded frames)
    instead of 100 and 99 (398); the predictions still come back in dataset order."""
    from vidcls.evaluation.metrics import predict

    videos = make_videos([5, 100, 6, 99], [0, 1, 0, 1], D=2, seed=3)
    store = write(tmp_path / "s.h5", videos, ["a", "b"], 2, dtype="float32")
    ds = FeatureDataset(store)
    loader = make_loader(ds, 2)
    shapes = [(x.shape[0], x.shape[1], pos.tolist()) for x, _, _, pos in loader]
    assert shapes == [(2, 6, [0, 2]), (2, 100, [3, 1])]

    class LastFrame(torch.nn.Module):  # logits = the video's last valid frame: identifies each video
        def forward(self, x, lengths):
            return x[torch.arange(len(x)), lengths - 1]

    out = predict(LastFrame(), loader, torch.device("cpu"))
    expected = torch.softmax(torch.tensor(np.stack([v[1][-1] for v in videos])).double(), dim=1).numpy()
    np.testing.assert_allclose(out["probs"], expected, rtol=1e-6)
    np.testing.assert_array_equal(out["labels"], [0, 1, 0, 1])
    store.close()
