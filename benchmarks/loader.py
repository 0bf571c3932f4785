"""Throughput of the exact training DataLoader (weighted sampler + augmentation + padding collate).

    python benchmarks/loader.py FEATURES_DIR [--batch-size 48 --workers 2 --batches 30]
                                             [--max-frames 512 --batch-frames 8192]
    python benchmarks/loader.py runs/bench-features --make-data      # 1000 videos x 16-73 frames x 1280
    python benchmarks/loader.py runs/bench-features --baseline        # + the padded-gzip-row baseline

Prints a few figures; the last line is ``samples_per_s=<float>`` for the vidcls loader.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from smoke import scratch, smoke_parse  # benchmarks/smoke.py: --smoke
from torch.utils.data import DataLoader, Dataset

from vidcls.config import TrainConfig
from vidcls.data.dataset import class_weights, load_splits, make_loader, train_sampler
from vidcls.store import write_store


def make_data(out: Path, videos: int = 1000, dim: int = 1280, seed: int = 0) -> None:
    """The benchmark's data: ragged float16 store, lengths 16-73 like the source system's."""
    rng = np.random.default_rng(seed)
    names = ["animation", "gaming", "natural", "flat"]
    labels = rng.choice(4, size=videos, p=[0.45, 0.25, 0.2, 0.1])
    gen = (
        (f"v{i:05d}", rng.random((int(rng.integers(16, 74)), dim), dtype=np.float32), int(labels[i]))
        for i in range(videos)
    )
    write_store(out / "train.h5", gen, names, dim)


def time_loader(loader, batches: int, sampler=None) -> float:
    """Samples per second over ``batches`` batches after one warm-up batch (worker start excluded)."""
    n, it, epoch = 0, None, 0
    seen = -1
    t0 = time.perf_counter()
    while seen < batches:
        if it is None:
            if sampler is not None:
                sampler.set_epoch(epoch)
            it, epoch = iter(loader), epoch + 1
        try:
            x = next(it)[0]
        except StopIteration:
            it = None
            continue
        seen += 1
        if seen == 0:
            t0 = time.perf_counter()  # warm-up batch: workers started, files opened
        else:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


class PaddedRows(Dataset):
    """The source system's path: one padded row per item from a gzip HDF5 opened per worker."""

    def __init__(self, path):
        self.path, self.h5 = path, None
        with h5py.File(path, "r") as f:
            self.n = len(f["labels"])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.h5 is None:
            self.h5 = h5py.File(self.path, "r")
        n = int(self.h5["num_frames"][i])
        return torch.from_numpy(self.h5["features"][i][:n].astype(np.float32)), int(self.h5["labels"][i])


def baseline(features_dir: Path, ds, batch_size: int, workers: int, batches: int) -> float:
    path = features_dir / "padded_gzip.h5"
    if not path.exists():
        stored = ds.store.lengths[ds.indices]  # the baseline pads whole videos, never thinned
        max_t = int(stored.max())
        with h5py.File(path, "w") as f:
            feats = f.create_dataset(
                "features",
                (len(ds), max_t, ds.store.feature_dim),
                dtype="float32",
                chunks=(1, max_t, ds.store.feature_dim),
                compression="gzip",
            )
            for i in range(len(ds)):
                x = ds.store.read(int(ds.indices[i])).astype(np.float32)
                row = np.zeros((max_t, x.shape[1]), np.float32)
                row[: len(x)] = x
                feats[i] = row
            f["labels"] = ds.labels
            f["num_frames"] = stored

    def pad(batch):
        return (torch.nn.utils.rnn.pad_sequence([b[0] for b in batch], batch_first=True),)

    loader = DataLoader(
        PaddedRows(path),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=pad,
        persistent_workers=workers > 0,
    )
    return time_loader(loader, batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features_dir", type=Path, nargs="?", help="(--smoke: a temporary directory)")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument(
        "--max-frames",
        type=int,
        default=TrainConfig().max_frames,
        help="thin longer videos to this many frames, as training does",
    )
    p.add_argument(
        "--batch-frames",
        type=int,
        default=TrainConfig().batch_frames,
        help="at most this many padded frames per batch, as training does",
    )
    p.add_argument("--make-data", action="store_true", help="write the benchmark data first if missing")
    p.add_argument("--baseline", action="store_true", help="also time the padded gzip row-per-item path")
    args = smoke_parse(p, {"batch_size": 4, "workers": 0, "batches": 3, "make_data": True, "baseline": True})
    if args.features_dir is None:
        if not args.smoke:
            p.error("give FEATURES_DIR")
        args.features_dir = scratch("loader")
    if args.make_data and not (args.features_dir / "train.h5").exists():
        make_data(args.features_dir, **({"videos": 40, "dim": 16} if args.smoke else {}))
    splits = load_splits(args.features_dir, augment=True, max_frames=args.max_frames)
    ds = splits.train
    w = class_weights(ds.labels, len(splits.class_names), class_names=splits.class_names)
    sampler = train_sampler(ds, w, seed=0)
    loader = make_loader(
        ds, args.batch_size, batch_frames=args.batch_frames, sampler=sampler, workers=args.workers
    )
    print(
        f"data: {len(ds)} train videos, frames {ds.lengths.min()}-{ds.lengths.max()} "
        f"(mean {ds.lengths.mean():.1f}), dim {splits.feature_dim}; batch {args.batch_size}, "
        f"workers {args.workers}, {args.batches} batches, torch threads {torch.get_num_threads()}"
    )
    if args.baseline:
        base = baseline(args.features_dir, ds, args.batch_size, args.workers, min(args.batches, 6))
        print(f"baseline_padded_gzip_samples_per_s={base:.1f}")
    rate = time_loader(loader, args.batches, sampler)
    if args.baseline:
        print(f"speedup_vs_baseline={rate / base:.1f}")
    print(f"samples_per_s={rate:.1f}")


if __name__ == "__main__":
    main()
