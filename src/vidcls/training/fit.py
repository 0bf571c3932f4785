"""Stage-2 training: the spec's recipe for a temporal model or a seed ensemble of them, in
torchvision-reference order: ``train_one_epoch`` -> ``train_member`` (model, loss, optimiser,
schedule, resume, epoch loop) -> ``fit`` (data, members, evaluation, record). Everything a run produces lands in its run directory:

    RUN_DIR/config.yaml, summary.json, eval_{val,test}.json, metrics_all.csv, report.html,
    RUN_DIR/results/resource_utilization_log.json
    RUN_DIR/members/<i>/{metrics.csv, history.json, checkpoints/{best,last,epoch_NNN}.pt, plots/}
"""
from __future__ import annotations

import contextlib
import csv
import gc
import io
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import __version__
from .checkpoint import (load_resume_state, prune_periodic, rng_state, save_checkpoint,
                         set_rng_state)
from ..config import RUNTIME_ONLY, TrainConfig, config_diff, dump_yaml, load_config, read_yaml
from ..errors import ConfigError
from ..utils.device import resolve_device
from .data import class_weights, close_loader, load_splits, make_loader, train_sampler
from ..inference.evaluate import evaluate_run, write_run_tables
from ..inference.policy import brief_mean, score
from ..inference.metrics import evaluate
from ..utils.fs import atomic_write_json, atomic_write_text
from .losses import FocalLoss
from ..models import build_from_spec
from ..reporting.monitor import ResourceMonitor, summarize
from ..reporting.plots import save_epoch_plots
from ..reporting.report import write_report

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1_weighted",
                  "val_f1_macro", "val_f1_worst", "epoch_seconds"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_one_epoch(model: nn.Module, loader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, epoch: int, cfg: TrainConfig, device: torch.device) -> dict:
    """One pass over ``loader``. The LR schedule advances every batch by a fractional epoch, so the
    warm restarts fall at epochs t0, t0(1+t_mult), ... whatever the number of batches."""
    model.train()
    n_iters = len(loader)
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    for i, (x, lengths, y, _) in enumerate(bar):
        x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
        logits = model(x, lengths.to(device))
        loss = criterion(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}, batch {i}; "
                                     f"lower --lr or check the features for extreme values")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step(epoch + (i + 1) / n_iters)  # sets the LR of the next batch
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


@dataclass
class TrainState:
    """What a resumed run needs besides the model/optimiser weights."""

    epoch: int = 0  # epochs completed
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)


def model_spec(cfg: TrainConfig, feature_dim: int, n_classes: int) -> dict:
    return {"name": cfg.model, "feature_dim": feature_dim, "n_classes": n_classes, "hidden_dim": cfg.hidden_dim,
            "layers": cfg.layers, "heads": cfg.heads, "dropout": cfg.dropout}


def resolve_config(run_dir, config_path=None, overrides: dict | None = None, resume: bool = False) -> TrainConfig:
    """The config of a new run, or of a resumed one: the saved config with the explicit options on top.

    Raises:
        ConfigError: a new run into a directory that holds one, nothing to resume, or a resume that
            changes anything but the runtime-only options (the differences are listed).
    """
    saved_path = Path(run_dir) / "config.yaml"
    has_run = any(Path(run_dir).glob("members/*/checkpoints/*.pt"))
    if not resume:
        if has_run:
            raise ConfigError(f"{run_dir} already holds a training run; pass --resume to continue it "
                              f"or choose another RUN_DIR")
        return load_config(config_path, overrides)
    if not saved_path.is_file():
        raise ConfigError(f"--resume: {run_dir} holds no run to resume (no config.yaml); drop --resume")
    saved = load_config(saved_path)
    explicit = dict(read_yaml(config_path)) if config_path else {}
    explicit.update({k: v for k, v in (overrides or {}).items() if v is not None})
    merged = load_config(None, {**saved.to_dict(), **explicit})
    diff = config_diff(saved, merged)
    if diff:
        raise ConfigError(f"--resume with a different config is refused (only {', '.join(RUNTIME_ONLY)} "
                          f"may change):\n  " + "\n  ".join(diff))
    return merged


def fit(cfg: TrainConfig, run_dir, *, resume: bool = False, log=print) -> dict:
    """Train ``cfg.members`` models (seeds seed, seed+1, ...) with the spec's recipe, then evaluate the
    members, TTA and the ensemble (choices on validation, test once); returns the summary dict.

    Raises:
        StoreError / ConfigError / CheckpointError: bad input, each with the file or option to fix.
    """
    t_start = time.time()
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)

    # data, shared by every member
    splits = load_splits(cfg.features_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, augment=cfg.augment)
    weights = class_weights(splits.train.labels, len(splits.class_names), tuple(cfg.weight_clip),
                            splits.class_names)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    log(_describe_run(cfg, splits, device))

    monitor = ResourceMonitor(run_dir / "results" / "resource_utilization_log.json", cfg.monitor_interval)
    monitor.start()
    states = []
    try:
        for i in range(cfg.members):
            monitor.record(f"member {i} start")
            states.append(train_member(cfg, i, splits, weights, device, run_dir, resume=resume, log=log))
            # the spec: without this, reserved GPU memory stays with the caching allocator between members
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            monitor.record(f"member {i} end")
        results = evaluate_run(cfg, run_dir, splits, device)
    except KeyboardInterrupt:
        log(f"\ninterrupted: the last finished epoch is kept in {run_dir}/members/*/checkpoints/last.pt; "
            f"continue with\n  vidcls train {cfg.features_dir} {run_dir} --resume")
        raise
    finally:
        monitor.stop()
    summary = _summary(cfg, splits, states, results, monitor.records, time.time() - t_start)
    atomic_write_json(run_dir / "summary.json", summary)
    write_run_tables(run_dir, cfg, splits, results)
    if cfg.plots:  # --no-plots (tests, quick runs) skips the report's figures too; `vidcls report` makes it later
        log(f"report: {write_report(run_dir)}")
    return summary


def train_member(cfg: TrainConfig, member: int, splits, weights: torch.Tensor, device: torch.device,
                 run_dir: Path, *, resume: bool = False, log=print) -> TrainState:
    """Train ensemble member ``member`` (seed ``cfg.seed + member``) into ``RUN_DIR/members/<member>``,
    continuing from its checkpoints when ``resume``; a finished member is not retrained."""
    seed = cfg.seed + member
    member_dir = run_dir / "members" / str(member)
    seed_everything(seed)
    names, n_classes = splits.class_names, len(splits.class_names)
    sampler = train_sampler(splits.train, weights if cfg.sampler == "weighted" else None, seed)
    pin = device.type == "cuda"
    train_loader = make_loader(splits.train, cfg.batch_size, sampler=sampler, workers=cfg.workers, pin_memory=pin)
    val_loader = make_loader(splits.val, cfg.batch_size, workers=cfg.workers, pin_memory=pin)

    # model, loss, optimiser, schedule
    spec = model_spec(cfg, splits.feature_dim, n_classes)
    model = build_from_spec(spec).to(device)
    criterion = FocalLoss(alpha=weights if cfg.alpha == "inverse_freq" else None, gamma=cfg.gamma,
                          smoothing=cfg.smoothing).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cfg.t0, T_mult=cfg.t_mult, eta_min=cfg.eta_min)
    meta = {"config": cfg.to_dict(), "model": spec, "class_names": names, "feature_dim": splits.feature_dim,
            "extractor": splits.extractor, "member": member, "seed": seed, "vidcls_version": __version__}

    # resume
    state = TrainState()
    if resume:
        state = _restore(member_dir / "checkpoints", model, optimizer, scheduler, meta, log)
    if state.stopped_early or state.epoch >= cfg.epochs:
        log(f"member {member}: finished earlier (epoch {state.epoch}, best {state.best:.4f}); not retrained")
        return state
    n_params = sum(p.numel() for p in model.parameters())
    log(f"member {member}/{cfg.members} seed {seed}: {cfg.model} ({n_params / 1e6:.2f} M params), "
        f"epochs {state.epoch + 1}..{cfg.epochs}")
    try:
        _epoch_loop(cfg, state, model, train_loader, val_loader, sampler, criterion, optimizer, scheduler,
                    device, names, meta, member_dir, log)
    finally:
        close_loader(train_loader)
        close_loader(val_loader)
    return state


def _epoch_loop(cfg, state, model, train_loader, val_loader, sampler, criterion, optimizer, scheduler,
                device, names, meta, member_dir, log) -> None:
    ckpt_dir = member_dir / "checkpoints"
    for epoch in range(state.epoch, cfg.epochs):
        if state.stopped_early:
            break
        t0 = time.time()
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_stats = train_one_epoch(model, train_loader, criterion, optimizer, scheduler, epoch, cfg, device)
        val = evaluate(model, val_loader, device, names, criterion)
        row = {"epoch": epoch + 1, "lr": lr, **train_stats, "val_loss": val["loss"], "val_acc": val["accuracy"],
               "val_f1_weighted": val["f1_weighted"], "val_f1_macro": val["f1_macro"],
               "val_f1_worst": val["worst_class_f1"], "epoch_seconds": time.time() - t0,
               "val_f1_per_class": [val["f1_per_class"][n] for n in names]}
        state.history.append(row)
        state.epoch = epoch + 1
        score = row[cfg.select]
        if score > state.best:
            state.best, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
            save_checkpoint(ckpt_dir / "best.pt", {**meta, "epoch": epoch + 1, "model_state": model.state_dict(),
                                                  "val": val})
        else:
            state.bad_epochs += 1
        state.stopped_early = cfg.patience > 0 and state.bad_epochs >= cfg.patience
        with deferred_sigint():  # Ctrl-C here would leave history.json one epoch ahead of last.pt
            _write_epoch_outputs(cfg, state, names, member_dir)
            full = {**meta, "epoch": state.epoch, "model_state": model.state_dict(),
                    "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                    "train_state": _state_dict(state), "rng": rng_state()}
            save_checkpoint(ckpt_dir / "last.pt", full)
            if state.epoch % cfg.checkpoint_every == 0:
                save_checkpoint(ckpt_dir / f"epoch_{state.epoch:03d}.pt", full)
                prune_periodic(ckpt_dir, cfg.keep_checkpoints)
        log(_epoch_line(cfg, row, state))
        if state.stopped_early:
            log(f"early stop: no {cfg.select} improvement for {cfg.patience} epochs "
                f"(best {state.best:.4f} at epoch {state.best_epoch})")


@contextlib.contextmanager
def deferred_sigint():
    """Hold a SIGINT that arrives inside the block and raise it (KeyboardInterrupt) on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _write_epoch_outputs(cfg: TrainConfig, state: TrainState, names: list, member_dir: Path) -> None:
    # rewritten whole (atomically) each epoch, so a kill never leaves a torn row behind
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(METRIC_COLUMNS + [f"val_f1_{n}" for n in names])
    for row in state.history:
        writer.writerow([row[c] for c in METRIC_COLUMNS] + row["val_f1_per_class"])
    atomic_write_text(member_dir / "metrics.csv", buf.getvalue())
    atomic_write_json(member_dir / "history.json", state.history)
    if cfg.plots:
        save_epoch_plots(state.history, names, member_dir / "plots")


def _state_dict(state: TrainState) -> dict:
    return {"epoch": state.epoch, "best": state.best, "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs, "stopped_early": state.stopped_early, "history": state.history}


def _restore(ckpt_dir: Path, model, optimizer, scheduler, meta: dict, log) -> TrainState:
    found = load_resume_state(ckpt_dir)
    if found is None:
        log(f"--resume: no checkpoint in {ckpt_dir} yet; starting from epoch 1")
        return TrainState()
    ckpt, path = found
    for key in ("class_names", "feature_dim", "model"):
        if ckpt[key] != meta[key]:
            raise ConfigError(f"--resume: {path} was trained with {key}={ckpt[key]!r} but the data/config "
                              f"now give {meta[key]!r}; resume with the same features and options")
    model.load_state_dict(ckpt["model_state"])
    optimizer.load_state_dict(ckpt["optimizer_state"])
    scheduler.load_state_dict(ckpt["scheduler_state"])
    set_rng_state(ckpt["rng"])
    state = TrainState(**ckpt["train_state"])
    log(f"resumed from {path} after epoch {state.epoch} (best {state.best:.4f} at epoch {state.best_epoch})")
    return state


def _describe_run(cfg, splits, device) -> str:
    counts = np.bincount(splits.train.labels, minlength=len(splits.class_names))
    cls = ", ".join(f"{n} {c}" for n, c in zip(splits.class_names, counts))
    test = len(splits.test) if splits.test is not None else 0
    return (f"vidcls {__version__}: {cfg.members} x {cfg.model} on {device}; train {len(splits.train)} ({cls}), "
            f"val {len(splits.val)} [{splits.val_source}], test {test}; dim {splits.feature_dim}")


def _epoch_line(cfg: TrainConfig, row: dict, state: TrainState) -> str:
    star = " *" if state.best_epoch == row["epoch"] else ""
    return (f"epoch {row['epoch']:3d}/{cfg.epochs} lr {row['lr']:.2e} | train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.3f} | val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} "
            f"f1w {row['val_f1_weighted']:.3f} f1m {row['val_f1_macro']:.3f} worst {row['val_f1_worst']:.3f} "
            f"| {row['epoch_seconds']:.1f}s{star}")


def _summary(cfg, splits, states, results, records, wall) -> dict:
    def counts(ds):
        return None if ds is None else {n: int(c) for n, c in zip(
            splits.class_names, np.bincount(ds.labels, minlength=len(splits.class_names)))}

    members = []
    for state, res in zip(states, results["members"]):
        i = res["member"]
        members.append({"member": i, "seed": cfg.seed + i, "best_epoch": state.best_epoch,
                        "epochs_run": state.epoch, "stopped_early": state.stopped_early, "select": cfg.select,
                        "best_val_score": state.best, **{k: v for k, v in res.items() if k != "member"}})
    has_test = splits.test is not None
    ens = results["ensemble"]
    mean_member = brief_mean([m["test"] for m in members]) if has_test else None
    if has_test:
        best_member = max(members, key=lambda m: score(m["val"], cfg.select))
        ens["gain_vs_mean_member"] = {k: ens["test"][k] - mean_member[k] for k in mean_member}
        ens["gain_vs_best_val_member"] = {k: ens["test"][k] - best_member["test"][k] for k in mean_member}
    return {"vidcls_version": __version__, "classes": splits.class_names, "model": cfg.model,
            "features_dir": cfg.features_dir, "val_source": splits.val_source,
            "class_counts": {"train": counts(splits.train), "val": counts(splits.val), "test": counts(splits.test)},
            "members": members, "mean_member_test": mean_member, "ensemble": ens, "tta": results["tta"],
            "final": {k: results["final"][k] for k in ("source", "tta_used", "reason")},
            "val": results["final"]["val"], "test": results["final"].get("test"),
            "resources": summarize(records), "wall_seconds": wall}
