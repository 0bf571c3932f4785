"""Data path: ragged feature store -> augmented, padded batches.

One video is one contiguous slice of the store (a thinned one: only the rows it keeps), read inside
the DataLoader worker (the store opens its HDF5 handle lazily, per process). Augmentation randomness
comes from a seed that the sampler attaches to every item, derived from ``(seed, epoch, position)``,
so a run is reproducible whatever the number of workers, and an epoch restarted after a crash sees
exactly the same batches.

Long videos are bounded twice, because attention memory grows with B x T^2 and a batch pads to its
longest video: a video longer than ``max_frames`` is thinned uniformly (the rule extraction uses), and
``FrameBudgetBatches`` cuts the drawn order into batches of at most ``batch_size`` videos and
``batch_frames`` padded frames. Both depend only on the stored lengths and the draw, never on the
augmentation, so the number of batches is known when an epoch starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    Sampler,
    WeightedRandomSampler,
    get_worker_info,
)

from ..errors import ConfigError, StoreError
from ..store.directory import SplitStore, open_splits
from ..store.labels import multi_hot
from ..store.split import stratified_split
from ..utils.sampling import uniform_indices
from .batching import FILLER, BatchKey, FrameBudgetBatches
from .labels import class_weights, label_weights, resolve_task

# re-exported: they lived here before batching.py / labels.py
__all__ = ["FrameBudgetBatches", "class_weights", "label_weights", "resolve_task"]

MIN_AUG_FRAMES = 8  # the spec augments only videos with more frames than this


def augment_sequence(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The spec's feature-level augmentation of one video.

    Args:
        x: (T, D) float32 features; returned unchanged when T <= 8.
        g: source of all randomness (torch: its float16->float32 and RNG kernels are ~30x faster
           than numpy's on these sizes, which keeps two workers ahead of the GPU).
    Returns:
        (T', D) float32: temporal subsampling p=0.5 (keep a uniform 70-100 % of the frames, at least 8,
        in their original order), circular shift p=0.3 by a uniform integer in [-3, 3],
        Gaussian noise p=0.2 with sigma 0.01.
    """
    n_frames = x.shape[0]
    if n_frames <= MIN_AUG_FRAMES:
        return x
    sub, ratio, shift_p, shift_u, noise = torch.rand(5, generator=g).tolist()
    if sub < 0.5:
        keep = max(int(n_frames * (0.7 + 0.3 * ratio)), MIN_AUG_FRAMES)
        idx = torch.randperm(n_frames, generator=g)[:keep].sort().values
        x = x[idx]
    if shift_p < 0.3:
        shift = min(int(shift_u * 7), 6) - 3  # uniform over -3..3
        if shift != 0:
            x = torch.roll(x, shift, dims=0)
    if noise < 0.2:
        x = x + torch.randn(x.shape, generator=g) * 0.01
    return x


def item_seed(seed: int, epoch: int, position: int) -> int:
    """A distinct 63-bit generator seed per (run seed, epoch, position in the epoch)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + position) % (2**63 - 1)


class FeatureDataset(Dataset):
    """Videos ``indices`` of one store; items are ``(features (T, D), label, position)``.

    ``label`` is the class index (int) of a single-label dataset, or the ``(C,)`` float32 0/1 label set
    of a multi-label one (``multilabel``; default: the store's own kind). A single-label store read as
    multi-label gives one-element sets (one-vs-rest training).

    An item key is either an int (no augmentation) or ``(int, seed)`` from ``EpochSampler``.
    A video longer than ``max_frames`` (None: no limit) is thinned to ``max_frames`` frames spread
    uniformly over it, before augmentation, for every key alike.
    Features stay in the store's dtype (float16 by default; augmentation runs in float32): half the
    bytes through the workers' shared memory and to the GPU. The training loop casts to float32.
    """

    def __init__(
        self,
        store: SplitStore,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        augment: bool = False,
        max_frames: int | None = None,
        multilabel: bool | None = None,
    ):
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {max_frames}")
        self.store = store
        self.multilabel = bool(getattr(store, "multilabel", False) if multilabel is None else multilabel)
        self.indices = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.augment = augment
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.store.labels[self.indices]

    @property
    def targets(self) -> np.ndarray | None:
        """``(N, C)`` uint8 0/1 label sets of a multi-label dataset; None for a single-label one."""
        if not self.multilabel:
            return None
        return multi_hot([self.store.label_sets[int(i)] for i in self.indices], len(self.store.class_names))

    def label_counts(self) -> np.ndarray:
        """``(C,)`` videos carrying each class (for single-label: videos of each class)."""
        targets = self.targets
        if targets is None:
            return np.bincount(self.labels, minlength=len(self.store.class_names))
        return targets.sum(axis=0, dtype=np.int64)

    @property
    def lengths(self) -> np.ndarray:
        """Frames of each item before augmentation: the stored length, capped at ``max_frames``."""
        stored = self.store.lengths[self.indices]
        return stored if self.max_frames is None else np.minimum(stored, self.max_frames)

    def video_ids(self) -> list[str]:
        return [self.store.video_ids[i] for i in self.indices]

    def __getitem__(self, key: BatchKey) -> tuple[torch.Tensor, int | torch.Tensor, int]:
        """``key``: a position, ``(position, seed)``, or a filler (``batching.FILLER``), whose
        returned position is ``-(position + 1)`` so that the training loss can leave it out."""
        pos, seed = (key, None) if isinstance(key, (int, np.integer)) else key[:2]
        is_filler = not isinstance(key, (int, np.integer)) and len(key) == 3 and key[2] == FILLER
        i = int(self.indices[pos])
        n, k = int(self.store.lengths[i]), self.max_frames
        rows = uniform_indices(n, k) if k is not None and n > k else None  # a long video: only these are read
        raw = torch.from_numpy(self.store.read(i, rows))
        x = raw
        if self.augment and seed is not None:
            x = augment_sequence(raw.float(), torch.Generator().manual_seed(seed)).to(raw.dtype)
        return x, self._label(i), -int(pos) - 1 if is_filler else int(pos)

    def _label(self, i: int) -> int | torch.Tensor:
        if not self.multilabel:
            return int(self.store.labels[i])
        y = torch.zeros(len(self.store.class_names), dtype=torch.float32)
        y[torch.from_numpy(np.asarray(self.store.label_sets[i], np.int64))] = 1.0
        return y


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to the longest video of the batch.

    Returns:
        x (B, T, D) zero-padded, in the items' dtype, lengths (B,) int64, labels (B,) int64 (or (B, C)
        float32 label sets of a multi-label dataset), positions (B,) int64.
    """
    lengths = torch.tensor([item[0].shape[0] for item in batch], dtype=torch.int64)
    x = _empty_batch((len(batch), int(lengths.max()), batch[0][0].shape[1]), batch[0][0].dtype)
    for b, (feats, _, _) in enumerate(batch):
        n = feats.shape[0]
        x[b, :n] = feats
        x[b, n:] = 0
    if isinstance(batch[0][1], torch.Tensor):  # multi-label: (C,) 0/1 sets
        labels = torch.stack([item[1] for item in batch])
    else:
        labels = torch.tensor([item[1] for item in batch], dtype=torch.int64)
    positions = torch.tensor([item[2] for item in batch], dtype=torch.int64)
    return x, lengths, labels, positions


def _empty_batch(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Batch buffer; inside a worker it is allocated in shared memory straight away, as
    torch's default_collate does, so handing it to the main process costs no extra copy."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = shape[0] * shape[1] * shape[2]
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(numel, device="cpu")
    return proto.new(storage).view(shape)


class EpochSampler(Sampler):
    """Draws one epoch of dataset positions and attaches each its augmentation seed.

    ``weights`` given: ``WeightedRandomSampler`` (with replacement, ``num_samples`` draws); else
    permutations of the ``n`` positions, one after another, cut at ``num_samples``. ``num_samples``
    defaults to ``n`` (one pass). Both depend only on ``(seed, epoch)``; call ``set_epoch`` before each epoch.
    """

    def __init__(
        self, n: int, weights: np.ndarray | None = None, seed: int = 0, num_samples: int | None = None
    ):
        self.n, self.seed, self.epoch = n, seed, 0
        self.num_samples = n if num_samples is None else num_samples
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % (2**63 - 1))  # any int64 seed
        if self.weights is not None:
            # torch's stub says Sequence[float]; the sampler takes a tensor as it is (torch.as_tensor)
            sampler = WeightedRandomSampler(
                self.weights,  # type: ignore[arg-type]
                self.num_samples,
                replacement=True,
                generator=g,
            )
            order = list(sampler)
        else:
            passes = -(-self.num_samples // self.n)
            order = torch.cat([torch.randperm(self.n, generator=g) for _ in range(passes)])[
                : self.num_samples
            ].tolist()
        for k, pos in enumerate(order):
            yield int(pos), item_seed(self.seed, self.epoch, k)


def feature_stats(dataset: FeatureDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (D,) over every stored frame of ``dataset`` (the train split only).

    Sums run in float64 around the first video's mean, so large offsets do not cancel precision. A
    feature (almost) constant in training -- a dead CNN channel -- would be blown up by 1/std at test
    time; its std is floored at 1% of the median std (and 1e-6).
    """
    shift: np.ndarray | None = None
    total = sq = np.zeros(0)
    n = 0
    for i in dataset.indices:
        x = dataset.store.read(int(i)).astype(np.float64)
        if shift is None:
            shift = x.mean(axis=0)
            total, sq = np.zeros_like(shift), np.zeros_like(shift)
        d = x - shift
        total += d.sum(axis=0)
        sq += (d * d).sum(axis=0)
        n += len(x)
    # the train split always has videos: load_splits refuses a class without one
    assert shift is not None, "feature_stats needs at least one video"
    mean_d = total / n
    std = np.sqrt(np.maximum(sq / n - mean_d**2, 0.0))
    floor = max(1e-6, 0.01 * float(np.median(std)))
    return (shift + mean_d).astype(np.float32), np.maximum(std, floor).astype(np.float32)


@dataclass
class Splits:
    """The datasets one run trains, selects and tests on."""

    train: FeatureDataset
    val: FeatureDataset
    test: FeatureDataset | None
    class_names: list[str]
    feature_dim: int
    extractor: dict
    val_source: str  # "val.h5" or "carved from train.h5 (15%)"
    task: str = "single"  # or "multilabel": every dataset's items then carry (C,) label sets


def load_splits(
    features_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.15,
    seed: int = 42,
    augment: bool = True,
    max_frames: int | None = None,
    task: str = "auto",
) -> Splits:
    """Open the stores of ``features_dir``; carve a stratified validation set when there is no val.h5.

    Every split's items are thinned to ``max_frames`` frames (None: no limit); see ``FeatureDataset``.
    ``task``: "auto" (multi-label when the store holds label sets), "single" or "multilabel" (see
    ``resolve_task``). A carved validation set is stratified on each video's first label.

    Raises:
        StoreError: missing/invalid files, mismatched splits, a single class, a class absent from train,
            label sets read as ``task`` "single".
    """
    stores = open_splits(features_dir, require=("train",))
    train = stores["train"]
    names = train.class_names
    if len(names) < 2:
        raise StoreError(f"{train.path}: only one class ({names}); a classifier needs at least two")
    task = resolve_task(task, [stores[s] for s in ("train", "val", "test") if s in stores])
    ml = task == "multilabel"
    if "val" in stores:
        # "val.h5", or "val-*-of-00004.h5" for a split in shard files
        train_idx, val_ds, source = (
            None,
            FeatureDataset(stores["val"], max_frames=max_frames, multilabel=ml),
            stores["val"].path.name,
        )
    else:
        train_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
        val_ds = FeatureDataset(train, val_idx, max_frames=max_frames, multilabel=ml)
        source = f"carved from train.h5 ({val_fraction:.0%}, stratified, seed {seed})"
    train_ds = FeatureDataset(train, train_idx, augment=augment, max_frames=max_frames, multilabel=ml)
    absent = [names[c] for c in np.flatnonzero(train_ds.label_counts() == 0)]
    if absent:
        shown = ", ".join(absent[:10]) + (f" (and {len(absent) - 10} more)" if len(absent) > 10 else "")
        raise StoreError(
            f"{train.path}: class(es) {shown} have no training video "
            f"(after carving validation); add some or drop the class"
        )
    test = FeatureDataset(stores["test"], max_frames=max_frames, multilabel=ml) if "test" in stores else None
    return Splits(train_ds, val_ds, test, list(names), train.feature_dim, dict(train.extractor), source, task)


def make_loader(
    dataset: FeatureDataset,
    batch_size: int,
    *,
    batch_frames: int | None = None,
    sampler: EpochSampler | None = None,
    workers: int = 0,
    pin_memory: bool = False,
    bucket: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """The DataLoader used for training (with ``sampler``) and evaluation (``sampler`` None: every video
    once, shortest first, no augmentation; rows carry their dataset positions).

    Args:
        batch_size: the most videos per batch (over all ranks, in training).
        batch_frames: the most padded frames (videos x longest) per batch and process; None: no bound.
        bucket: training batches of similar length (``batching.FrameBudgetBatches``).
        rank, world: under torchrun, this rank's share: of every global training batch, or of the
            evaluation videos (every ``world``-th of the length order, from ``rank``).
    Raises:
        ConfigError: ``batch_size`` or ``batch_frames`` below 1.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if batch_frames is not None and batch_frames < 1:
        raise ConfigError(f"--batch-frames must be >= 1, got {batch_frames}")
    # Evaluation goes shortest video first: a batch then pads to videos of about its own length instead
    # of the longest of a random mix (attention costs B x T^2 of padded steps too). Every consumer puts
    # the rows back in dataset order by the positions the collate returns.
    if sampler is not None:
        batches = FrameBudgetBatches(
            sampler, dataset.lengths, batch_size, batch_frames, bucket=bucket, rank=rank, world=world
        )
    else:
        batches = FrameBudgetBatches(
            by_length(dataset.lengths)[rank::world], dataset.lengths, batch_size, batch_frames
        )
    # A private generator: creating an iterator would otherwise draw a seed from torch's global RNG,
    # once per epoch without workers but once per run with persistent workers, so the dropout
    # stream (and the results) would depend on --workers.
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator(),
    )


def by_length(lengths: Sequence[int] | np.ndarray) -> list[int]:
    """Dataset positions ordered by length, shortest first (ties in dataset order)."""
    return np.argsort(np.asarray(lengths), kind="stable").tolist()


def close_loader(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now. Left to the garbage collector, their shutdown can run
    at an arbitrary later point (inside the next run's plotting, say) and wait seconds per worker."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def train_sampler(
    dataset: FeatureDataset, weights: torch.Tensor | None, seed: int, num_samples: int | None = None
) -> EpochSampler:
    """Per-sample weights = class weight of the sample's label (``None`` = plain shuffle); ``num_samples``
    draws per epoch (default: one pass). A multi-label video weighs as its rarest label (the largest
    weight of its set), so a rare label is drawn as often as a rare class would be, whatever labels
    it shares a video with."""
    if weights is None:
        per_sample = None
    elif dataset.multilabel:
        w = weights.numpy()
        sets = dataset.store.label_sets
        per_sample = np.array([w[sets[int(i)]].max() for i in dataset.indices], np.float64)
    else:
        per_sample = weights.numpy()[dataset.labels]
    return EpochSampler(len(dataset), per_sample, seed, num_samples)
