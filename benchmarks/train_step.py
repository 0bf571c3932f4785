"""Training throughput (videos/s through the whole training step: loader, forward, backward, AdamW)
with and without length bucketing, on videos of 16-96 frames.

    python benchmarks/train_step.py                       # CPU, the spec's model (768/4/12), batch 48
    python benchmarks/train_step.py --device cuda --amp bf16 --compile
    torchrun --nproc_per_node=2 benchmarks/train_step.py  # DDP: the same global batch over 2 processes

Each mode trains whole epochs of the exact training path (``make_loader`` + ``train_one_epoch``) after
one warm-up epoch, so the figure includes padding, augmentation and collate. Under torchrun rank 0
prints the job's samples/s (all ranks' videos). The last line is ``bucket_speedup=<bucketed / plain>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from smoke import smoke_parse  # benchmarks/smoke.py: --smoke

from vidcls.config import TrainConfig
from vidcls.data.batching import padded_frames
from vidcls.data.dataset import class_weights, load_splits, make_loader, train_sampler
from vidcls.models import build_model
from vidcls.store.synth import make_synthetic
from vidcls.training.loop import train_one_epoch
from vidcls.training.losses import FocalLoss
from vidcls.training.optim import param_groups
from vidcls.training.speed import grad_scaler, wrap_model
from vidcls.utils import dist as ddp
from vidcls.utils.device import resolve_device


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=480, help="training videos (an epoch is one pass)")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--min-frames", type=int, default=16)
    p.add_argument("--max-frames", type=int, default=96)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per mode (after one warm-up epoch)")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--hidden-dim", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--modes", default="plain,bucket", help="comma-separated: plain, bucket")
    return smoke_parse(
        p,
        {
            "videos": 32,
            "dim": 16,
            "min_frames": 4,
            "max_frames": 12,
            "epochs": 1,
            "batch_size": 8,
            "hidden_dim": 16,
            "layers": 1,
            "heads": 2,
            "workers": 0,
        },
    )


def time_mode(args, splits, device, dist, bucket: bool) -> tuple[float, float]:
    """(samples/s over the timed epochs, padded frames / real frames of one epoch)."""
    cfg = dataclasses.replace(
        TrainConfig(),
        batch_size=args.batch_size,
        amp=args.amp,
        compile=args.compile,
        bucket=bucket,
        epochs=args.epochs + 1,
    )
    torch.manual_seed(0)
    weights = class_weights(splits.train.labels, len(splits.class_names))
    model = build_model(
        "bilstm_attn",
        feature_dim=splits.feature_dim,
        n_classes=len(splits.class_names),
        hidden_dim=args.hidden_dim,
        layers=args.layers,
        heads=args.heads,
    ).to(device)
    net = wrap_model(model, device, dist, compile=cfg.compile)
    criterion = FocalLoss(alpha=weights).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cfg.t0)
    sampler = train_sampler(splits.train, weights, seed=0)
    loader = make_loader(
        splits.train,
        cfg.batch_size,
        batch_frames=cfg.batch_frames,
        sampler=sampler,
        workers=args.workers,
        pin_memory=device.type == "cuda",
        bucket=bucket,
        rank=dist.rank,
        world=dist.world,
    )
    padding = (
        padded_frames(loader.batch_sampler.global_batches(), splits.train.lengths)
        / splits.train.lengths.sum()
    )
    scaler = grad_scaler(device, cfg.amp)
    seen, t0 = 0, 0.0
    for epoch in range(cfg.epochs):
        if epoch == 1:  # epoch 0 warms up: workers, allocator, compilation
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        train_one_epoch(
            net,
            loader,
            criterion,
            optimizer,
            scheduler,
            epoch,
            device=device,
            epochs=cfg.epochs,
            amp=cfg.amp,
            grad_clip=cfg.grad_clip,
            dist=dist,
            scaler=scaler,
        )
        seen += len(splits.train) if epoch >= 1 else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0), float(padding)


def main() -> None:
    args = parse()
    dist = ddp.env_dist()
    device = ddp.init(dist, resolve_device(args.device), 600)
    with tempfile.TemporaryDirectory() as tmp:
        if dist.main:
            make_synthetic(
                tmp,
                videos=int(args.videos / 0.7) + 1,
                dim=args.dim,
                min_frames=args.min_frames,
                max_frames=args.max_frames,
                seed=0,
            )
        data = Path(ddp.broadcast(tmp, dist))  # one node: the ranks share rank 0's temporary directory
        splits = load_splits(data, max_frames=512)
        result = {}
        for mode in args.modes.split(","):
            result[mode] = time_mode(args, splits, device, dist, bucket=mode == "bucket")
            if dist.main:
                print(
                    f"{mode}: {result[mode][0]:.1f} samples/s, padded/real frames {result[mode][1]:.3f} "
                    f"({dist.world} process(es), {device}, amp {args.amp}, compile {args.compile})",
                    flush=True,
                )
        ddp.barrier(dist)
    if dist.main:
        print(f"train_samples_per_s={result[args.modes.split(',')[0]][0]:.2f}")
        if {"plain", "bucket"} <= set(result):
            print(f"bucket_speedup={result['bucket'][0] / result['plain'][0]:.3f}")
    ddp.shutdown()


if __name__ == "__main__":
    main()
