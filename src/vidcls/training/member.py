"""One ensemble member, start to end: ``train_member`` seeds everything from ``seed + member``, builds its
loaders, model, loss, optimiser and schedule (a ``MemberRun``), continues from its newest checkpoint on
``--resume`` (``_restore``) and hands the epochs to ``loop.epoch_loop``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import __version__
from ..config import TrainConfig, auto_model
from ..data.dataset import EpochSampler, close_loader, make_loader, train_sampler
from ..data.window import typical_window
from ..errors import CheckpointError, ConfigError
from ..models import build_from_spec, unused_sizes
from ..models.layers import Standardized
from ..run.checkpoint import load_resume_state, set_rng_state
from .context import TrainContext
from .loop import MemberRun, TrainState, epoch_loop
from .losses import BinaryFocalLoss, FocalLoss
from .optim import param_groups
from .schedule import epoch_draws
from .speed import check_amp, grad_scaler, wrap_model

VLAD_SIZES = ("clusters", "groups", "expansion")  # pooling sizes: in a model's spec only if it uses them


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_spec(cfg: TrainConfig, feature_dim: int, n_classes: int) -> dict:
    # fit() resolves "auto" before anything is written; this covers callers of train_member alone
    name = auto_model(feature_dim) if cfg.model == "auto" else cfg.model
    return {
        "name": name,
        "feature_dim": feature_dim,
        "n_classes": n_classes,
        "hidden_dim": cfg.hidden_dim,
        "layers": cfg.layers,
        "heads": cfg.heads,
        "dropout": cfg.dropout,
        "standardize": cfg.standardize == "feature",
        # the pooling sizes only where the model uses them: the other models' specs stay as they were
        **{k: getattr(cfg, k) for k in VLAD_SIZES if k not in unused_sizes(name)},
    }


def train_member(ctx: TrainContext, member: int) -> TrainState:
    """Train ensemble member ``member`` (seed ``cfg.seed + member``) into ``RUN_DIR/members/<member>``,
    continuing from its checkpoints when ``ctx.resume``; a finished member is not retrained. Under
    torchrun (``ctx.dist``) every rank calls this; the ranks train one model together and only rank 0
    writes."""
    cfg, splits, log = ctx.cfg, ctx.splits, ctx.log
    check_amp(cfg.amp, ctx.device)
    seed = cfg.seed + member
    seed_everything(seed)
    draws = epoch_draws(len(splits.train), cfg.batch_size, cfg.min_steps)
    train_loader, val_loader, sampler = _loaders(ctx, seed, draws)
    run = _member_run(ctx, member, seed, (train_loader, val_loader, sampler))

    # resume
    state = TrainState()
    if ctx.resume:
        state = _restore(run, log)
    if state.stopped_early or state.epoch >= cfg.epochs:
        log(f"member {member}: finished earlier (epoch {state.epoch}, best {state.best:.4f}); not retrained")
        return state
    n_params = sum(p.numel() for p in run.model.parameters())
    capped = (
        f", {draws} draws per epoch (>= {cfg.min_steps} steps of {cfg.batch_size})"
        if draws > len(splits.train)
        else ""
    )
    log(
        f"member {member}/{cfg.members} seed {seed}: {cfg.model} ({n_params / 1e6:.2f} M params), "
        f"epochs {state.epoch + 1}..{cfg.epochs}{capped}"
    )
    try:
        epoch_loop(cfg, run, state, log)
    finally:
        close_loader(train_loader)
        close_loader(val_loader)
    return state


def _loaders(ctx: TrainContext, seed: int, draws: int) -> tuple[DataLoader, DataLoader, EpochSampler]:
    """The member's train loader (``draws`` videos an epoch from its seeded sampler, this rank's share
    under torchrun), its validation loader, and the sampler."""
    cfg, splits, dist = ctx.cfg, ctx.splits, ctx.dist
    sampler = train_sampler(splits.train, ctx.weights if cfg.sampler == "weighted" else None, seed, draws)
    pin = ctx.device.type == "cuda"
    train_loader = make_loader(
        splits.train,
        cfg.batch_size,
        batch_frames=cfg.batch_frames,
        sampler=sampler,
        workers=cfg.workers,
        pin_memory=pin,
        bucket=cfg.bucket,
        rank=dist.rank,
        world=dist.world,
    )
    val_loader = make_loader(
        splits.val,
        cfg.batch_size,
        batch_frames=cfg.batch_frames,
        workers=cfg.workers,
        pin_memory=pin,
        rank=dist.rank,
        world=dist.world,
    )
    return train_loader, val_loader, sampler


def _member_run(
    ctx: TrainContext, member: int, seed: int, loaders: tuple[DataLoader, DataLoader, EpochSampler]
) -> MemberRun:
    """Model, loss, optimiser and schedule of member ``member``, with what its checkpoints carry."""
    cfg, splits, weights, device = ctx.cfg, ctx.splits, ctx.weights, ctx.device
    spec = model_spec(cfg, splits.feature_dim, len(splits.class_names))
    model = build_from_spec(spec)
    if spec["standardize"]:
        # fit computes the train split's statistics for --standardize feature; build_model wraps the model
        assert isinstance(model, Standardized) and ctx.stats is not None
        model.set_stats(*ctx.stats)
    model = model.to(device)
    loss = BinaryFocalLoss if splits.task == "multilabel" else FocalLoss
    criterion = loss(
        alpha=weights if cfg.alpha == "inverse_freq" else None, gamma=cfg.gamma, smoothing=cfg.smoothing
    ).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cfg.t0, T_mult=cfg.t_mult, eta_min=cfg.eta_min
    )
    meta = {
        "config": cfg.to_dict(),
        "model": spec,
        "class_names": splits.class_names,
        "task": splits.task,
        "feature_dim": splits.feature_dim,
        "extractor": splits.extractor,
        "max_frames": cfg.max_frames,
        "window": typical_window(splits.train, splits.extractor),
        "member": member,
        "seed": seed,
        "vidcls_version": __version__,
    }
    train_loader, val_loader, sampler = loaders
    return MemberRun(
        model=model,
        net=wrap_model(model, device, ctx.dist, compile=cfg.compile),
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        val_loader=val_loader,
        sampler=sampler,
        device=device,
        class_names=splits.class_names,
        meta=meta,
        files=ctx.run,
        member=member,
        scaler=grad_scaler(device, cfg.amp),
        dist=ctx.dist,
    )


def _restore(run: MemberRun, log: Callable[[str], None]) -> TrainState:
    """Load the newest usable checkpoint of ``run`` into its model, optimiser, schedule and the RNGs."""
    found = load_resume_state(run.ckpt_dir)
    if found is None:
        log(f"--resume: no checkpoint in {run.ckpt_dir} yet; starting from epoch 1")
        return TrainState()
    ckpt, path = found
    ckpt.setdefault("task", "single")  # checkpoints before multi-label runs
    for key in ("class_names", "feature_dim", "model", "task"):
        if ckpt[key] != run.meta[key]:
            raise ConfigError(
                f"--resume: {path} was trained with {key}={ckpt[key]!r} but the data/config "
                f"now give {run.meta[key]!r}; resume with the same features and options"
            )
    run.model.load_state_dict(ckpt["model_state"])
    try:
        run.optimizer.load_state_dict(ckpt["optimizer_state"])
    except ValueError as err:  # e.g. one parameter group (before decay-free biases/norms), now two
        raise CheckpointError(
            f"--resume: {path} holds an optimiser state this version cannot continue "
            f"({err}); start a new run in another RUN_DIR"
        ) from None
    run.scheduler.load_state_dict(ckpt["scheduler_state"])
    if "scaler_state" in ckpt and run.scaler.is_enabled():
        run.scaler.load_state_dict(ckpt["scaler_state"])
    set_rng_state(ckpt["rng"])
    state = TrainState(**ckpt["train_state"])
    log(f"resumed from {path} after epoch {state.epoch} (best {state.best:.4f} at epoch {state.best_epoch})")
    return state
