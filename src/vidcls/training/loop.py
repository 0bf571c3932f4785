"""The epoch loop of one model (an ensemble member): ``train_one_epoch`` -> ``epoch_loop`` (train,
validate, save, plot), which ``member.train_member`` runs from the member's first epoch or, with exact
resume, from the one after ``last.pt``.

Each epoch ends by writing what a resume needs (best.pt, metrics.csv, history.json, last.pt, the periodic
checkpoint) and only then the optional plots, whose failure is a warning: a plot can never cost an epoch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import multiprocessing as mp
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import TrainConfig, resolve_select
from ..data.dataset import EpochSampler, item_seed
from ..evaluation.metrics import validate
from ..reporting.plots import save_epoch_plots
from ..run.checkpoint import prune_periodic, rng_state, save_checkpoint
from ..run.rundir import RunDir
from ..utils.dist import SINGLE, Dist, broadcast
from .schedule import cycle_ends, fractional_epoch, stop_at_cycle_end
from .speed import autocast, grad_scaler, rank_loss, sum_over_ranks

# A tie on the selected score goes to the lower validation loss only when it is lower by more than this
# share: a difference in the 5th digit is float noise (or a bias moving by 1e-12), not a better model.
LOSS_TIE_MARGIN = 1e-4

METRIC_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_f1_weighted",
    "val_f1_macro",
    "val_f1_worst",
    "epoch_seconds",
]
# a multi-label run's columns: ranking metrics (threshold-free) and F1 / exact sets at threshold 0.5
# (the per-class thresholds are chosen once, after training); train_hit_at_1: top class in the set
MULTILABEL_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_hit_at_1",
    "val_loss",
    "val_map",
    "val_gap",
    "val_hit_at_1",
    "val_f1_micro",
    "val_f1_macro",
    "val_exact_set_accuracy",
    "epoch_seconds",
]


class Batches(Protocol):
    """What ``train_one_epoch`` goes through: ``(x, lengths, y, pos)`` batches (a ``DataLoader`` over
    ``collate``'s output), and how many there are."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]: ...


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineAnnealingWarmRestarts,
    epoch: int,
    *,
    device: torch.device,
    epochs: int,
    amp: str = "none",
    grad_clip: float = 0.0,
    dist: Dist = SINGLE,
    scaler: torch.amp.GradScaler | None = None,
) -> dict:
    """One pass over ``loader`` (epoch ``epoch`` of ``epochs``, 0-based). The LR schedule advances every
    batch by a fractional epoch, so the warm restarts fall at epochs t0, t0(1+t_mult), ... whatever the
    number of batches. ``amp``: --amp; ``grad_clip``: --grad-clip (0: off). Under torchrun ``model`` is the
    DDP-wrapped model and the returned loss/accuracy are over all ranks' videos."""
    model.train()
    scaler = scaler or grad_scaler(device, "none")
    n_iters = len(loader)
    loss_sum, correct, seen, multilabel = 0.0, 0, 0, False
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{epochs}",
        leave=False,
        dynamic_ncols=True,
        # one bar per job: not from ranks > 0, nor from --parallel-members' member processes
        disable=not sys.stderr.isatty() or not dist.main or mp.current_process().name != "MainProcess",
    )
    for i, (x, lengths, y, pos) in enumerate(bar):
        x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
        multilabel = y.dim() == 2
        real = (pos >= 0).to(device)  # False: a filler (torchrun), which the loss leaves out
        with autocast(device, amp):
            logits = model(x, lengths.to(device))
        loss, mean, n_real = rank_loss(criterion, logits.float(), y, real, dist)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at epoch {epoch + 1}, batch {i}; "
                f"lower --lr or check the features for extreme values"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step(fractional_epoch(epoch, i, n_iters))  # sets the LR of the next batch
        loss_sum += mean * n_real
        correct += int(_top1_right(logits, y)[real].sum())
        seen += n_real
        bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", acc=f"{correct / max(seen, 1):.3f}")
    loss_sum, correct, seen = sum_over_ranks([loss_sum, correct, seen], dist, device)
    acc = "train_hit_at_1" if multilabel else "train_acc"
    return {"train_loss": loss_sum / max(seen, 1), acc: correct / max(seen, 1)}


def _top1_right(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the top class is the label (single-label ``y`` (B,)) or in the set (``y`` (B, C) 0/1)."""
    top = logits.argmax(1)
    return top == y if y.dim() == 1 else y.gather(1, top[:, None])[:, 0] > 0


@dataclass
class TrainState:
    """What a resumed run needs besides the model/optimiser weights."""

    epoch: int = 0  # epochs completed
    best: float = -math.inf
    best_loss: float = math.inf  # validation loss of the best epoch: breaks ties on ``best``
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)


@dataclass
class MemberRun:
    """What one member's epochs work with, built once by ``train_member``."""

    model: nn.Module  # the plain model: what checkpoints hold and validation runs
    net: nn.Module  # what trains: ``model``, DDP-wrapped under torchrun, compiled with --compile
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: CosineAnnealingWarmRestarts
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: EpochSampler
    device: torch.device
    class_names: list
    meta: dict  # what every checkpoint of this member carries besides weights and state
    files: RunDir  # the run directory: this member writes its members/<member>/ files
    member: int
    scaler: torch.amp.GradScaler  # fp16's gradient scaler; a pass-through otherwise (``grad_scaler``)
    dist: Dist = SINGLE
    plot_warned: bool = False  # a failing plot is reported once per member

    @property
    def ckpt_dir(self) -> Path:
        return self.files.checkpoints_dir(self.member)


def epoch_loop(cfg: TrainConfig, run: MemberRun, state: TrainState, log: Callable[[str], None]) -> None:
    """Epochs ``state.epoch + 1 .. cfg.epochs``: train, validate, save what resume needs, then plot."""
    for epoch in range(state.epoch, cfg.epochs):
        if state.stopped_early:
            break
        row, val = _train_and_validate(cfg, run, epoch)
        improved = _record_epoch(cfg, state, row)
        # every rank computed the same gathered metrics; rank 0's decision is the one all follow
        state.stopped_early = broadcast(state.stopped_early, run.dist)
        if run.dist.main:  # only rank 0 writes
            with deferred_sigint():  # Ctrl-C here would leave history.json one epoch ahead of last.pt
                _save_epoch(cfg, run, state, val if improved else None)
            if cfg.plots:  # after the checkpoints: a plot that fails must never cost a resumable epoch
                _save_plots(run, state)
        log(_epoch_line(row, state, cfg.epochs))
        if state.stopped_early:
            log(
                f"early stop at the end of a warm-restart cycle: no better {cfg.select} (ties: lower val loss) "
                f"in the last {cfg.patience_cycles} cycle(s) (best {state.best:.4f} at epoch {state.best_epoch})"
            )


def _train_and_validate(cfg: TrainConfig, run: MemberRun, epoch: int) -> tuple[dict, dict]:
    """One training pass and one validation pass; returns the epoch's metrics row and the val metrics."""
    t0 = time.time()
    run.sampler.set_epoch(epoch)
    if run.dist.active:  # dropout: a stream per rank and epoch, so a resumed rank picks up the same one
        torch.manual_seed(item_seed(run.meta["seed"], epoch, -1 - run.dist.rank))
    lr = run.optimizer.param_groups[0]["lr"]
    train_stats = train_one_epoch(
        run.net,
        run.train_loader,
        run.criterion,
        run.optimizer,
        run.scheduler,
        epoch,
        device=run.device,
        epochs=cfg.epochs,
        amp=cfg.amp,
        grad_clip=cfg.grad_clip,
        dist=run.dist,
        scaler=run.scaler,
    )
    task = run.meta.get("task", "single")
    with autocast(run.device, cfg.amp):
        val = validate(
            run.model, run.val_loader, run.device, run.class_names, run.criterion, run.dist, task=task
        )
    if task == "multilabel":
        return _multilabel_row(run, epoch, lr, train_stats, val, time.time() - t0), val
    row = {
        "epoch": epoch + 1,
        "lr": lr,
        **train_stats,
        "val_loss": val["loss"],
        "val_acc": val["accuracy"],
        "val_f1_weighted": val["f1_weighted"],
        "val_f1_macro": val["f1_macro"],
        "val_f1_worst": val["worst_class_f1"],
        "epoch_seconds": time.time() - t0,
        "val_f1_per_class": [val["f1_per_class"][n] for n in run.class_names],
    }
    return row, val


def _multilabel_row(
    run: MemberRun, epoch: int, lr: float, train_stats: dict, val: dict, seconds: float
) -> dict:
    """One epoch's metrics row of a multi-label run (``MULTILABEL_COLUMNS`` + per-class validation AP)."""
    ap = val["ap_per_class"]
    return {
        "epoch": epoch + 1,
        "lr": lr,
        **train_stats,
        "val_loss": val["loss"],
        "val_map": val["map_macro"],
        "val_gap": val["gap_at_20"],
        "val_hit_at_1": val["hit_at_1"],
        "val_f1_micro": val["f1_micro"],
        "val_f1_macro": val["f1_macro"],
        "val_exact_set_accuracy": val["exact_set_accuracy"],
        "epoch_seconds": seconds,
        # None: no validation video carries the class (its AP is undefined)
        "val_ap_per_class": [ap[n] for n in run.class_names],
    }


def _record_epoch(cfg: TrainConfig, state: TrainState, row: dict) -> bool:
    """Append ``row`` and update best / early stopping; True when this epoch is the new best.

    Best: a higher ``cfg.select`` score, or the same score with a validation loss lower by more than
    ``LOSS_TIE_MARGIN`` (relative). On a small validation split the score saturates (every video right)
    early; the loss still tells a model that is right with margin from one that is barely right. Stopping: only at the end of a warm-restart
    cycle (``stop_at_cycle_end``), never mid-cycle.
    """
    state.history.append(row)
    state.epoch = row["epoch"]
    # fit() resolves --select auto before anything is written; this covers callers of the loop alone
    select = resolve_select(cfg.select, "multilabel" if "val_map" in row else "single")
    score, loss = row[select], row["val_loss"]
    improved = score > state.best or (score == state.best and loss < state.best_loss * (1 - LOSS_TIE_MARGIN))
    if improved:
        state.best, state.best_loss, state.best_epoch, state.bad_epochs = score, loss, state.epoch, 0
    else:
        state.bad_epochs += 1
    state.stopped_early = stop_at_cycle_end(
        state.epoch, state.best_epoch, cfg.t0, cfg.t_mult, cfg.patience_cycles
    )
    return improved


def _save_epoch(cfg: TrainConfig, run: MemberRun, state: TrainState, best_val: dict | None) -> None:
    """best.pt (when ``best_val`` is given), the cycle-end snapshot, metrics.csv, history.json, last.pt and
    the periodic checkpoint."""
    files, member, weights = run.files, run.member, run.model.state_dict()
    if best_val is not None:
        save_checkpoint(
            files.best(member), {**run.meta, "epoch": state.epoch, "model_state": weights, "val": best_val}
        )
    if state.epoch in cycle_ends(cfg.t0, cfg.t_mult, state.epoch):  # the snapshot ensemble's models
        save_checkpoint(
            files.snapshot(member, state.epoch), {**run.meta, "epoch": state.epoch, "model_state": weights}
        )
    _write_metrics(run, state)
    full = {
        **run.meta,
        "epoch": state.epoch,
        "model_state": weights,
        "optimizer_state": run.optimizer.state_dict(),
        "scheduler_state": run.scheduler.state_dict(),
        "train_state": _state_dict(state),
        "rng": rng_state(),
        **({"scaler_state": run.scaler.state_dict()} if run.scaler.is_enabled() else {}),
    }
    save_checkpoint(files.last(member), full)
    if state.epoch % cfg.checkpoint_every == 0:
        save_checkpoint(files.periodic(member, state.epoch), full)
        prune_periodic(run.ckpt_dir, cfg.keep_checkpoints)


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
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


def _write_metrics(run: MemberRun, state: TrainState) -> None:
    # rewritten whole (atomically) each epoch, so a kill never leaves a torn row behind
    buf = io.StringIO()
    writer = csv.writer(buf)
    multilabel = run.meta.get("task") == "multilabel"
    columns, per_class, prefix = (
        (MULTILABEL_COLUMNS, "val_ap_per_class", "val_ap_")
        if multilabel
        else (METRIC_COLUMNS, "val_f1_per_class", "val_f1_")
    )
    writer.writerow(columns + [prefix + n for n in run.class_names])
    for row in state.history:
        writer.writerow([row[c] for c in columns] + ["" if v is None else v for v in row[per_class]])
    run.files.write_member_metrics(run.member, buf.getvalue())
    run.files.write_history(run.member, state.history)


def _save_plots(run: MemberRun, state: TrainState) -> None:
    """The epoch dashboard. Plots are optional output: a failure is a warning (once per member), and
    training goes on with its checkpoints and metrics already saved."""
    plots_dir = run.files.plots_dir(run.member)
    try:
        save_epoch_plots(state.history, run.class_names, plots_dir)
    except Exception as exc:  # whatever matplotlib or the disk raises, the run outlives it
        if not run.plot_warned:
            run.plot_warned = True
            warnings.warn(
                f"epoch plots in {plots_dir} failed at epoch {state.epoch} ({type(exc).__name__}: "
                f"{exc}); training goes on (checkpoints and metrics.csv are saved); later plot "
                f"failures of this member are not reported; pass --no-plots to skip plotting",
                RuntimeWarning,
                stacklevel=2,
            )


def _state_dict(state: TrainState) -> dict:
    return {
        "epoch": state.epoch,
        "best": state.best,
        "best_loss": state.best_loss,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "stopped_early": state.stopped_early,
        "history": state.history,
    }


def _epoch_line(row: dict, state: TrainState, epochs: int) -> str:
    star = " *" if state.best_epoch == row["epoch"] else ""
    if "val_map" in row:
        return (
            f"epoch {row['epoch']:3d}/{epochs} lr {row['lr']:.2e} | train loss {row['train_loss']:.4f} "
            f"hit@1 {row['train_hit_at_1']:.3f} | val loss {row['val_loss']:.4f} mAP {row['val_map']:.3f} "
            f"GAP {row['val_gap']:.3f} hit@1 {row['val_hit_at_1']:.3f} f1 {row['val_f1_micro']:.3f} "
            f"exact {row['val_exact_set_accuracy']:.3f} | {row['epoch_seconds']:.1f}s{star}"
        )
    return (
        f"epoch {row['epoch']:3d}/{epochs} lr {row['lr']:.2e} | train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.3f} | val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} "
        f"f1w {row['val_f1_weighted']:.3f} f1m {row['val_f1_macro']:.3f} worst {row['val_f1_worst']:.3f} "
        f"| {row['epoch_seconds']:.1f}s{star}"
    )
