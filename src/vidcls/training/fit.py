"""``fit``: the spec's recipe for a temporal model or a seed ensemble of them, in torchvision-reference
order: data (with what else every member shares: one ``TrainContext``) -> members (``member.train_member``:
model, loss, optimiser, schedule, resume, epochs) -> evaluation (choices on validation, test once) ->
record. Everything a run produces lands in its run directory (``RunDir``):

    RUN_DIR/config.yaml, final.json, calibration.json, summary.json, eval_{val,test}.json, metrics_all.csv,
    RUN_DIR/report.html,
    RUN_DIR/results/resource_utilization_log.json
    RUN_DIR/members/<i>/{metrics.csv, history.json, checkpoints/{best,last,epoch_NNN,snapshot_NNN}.pt, plots/}
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import (
    RUNTIME_ONLY,
    SELECT,
    TrainConfig,
    auto_model,
    config_diff,
    dump_yaml,
    load_config,
    read_yaml,
    resolve_select,
)
from ..data.dataset import FeatureDataset, Splits, feature_stats, label_weights, load_splits
from ..errors import ConfigError
from ..evaluation.calibrate import calibrate_run
from ..evaluation.evaluate import evaluate_run, write_final_choice, write_run_tables
from ..evaluation.policy import brief_mean, score
from ..models import unused_sizes
from ..reporting.monitor import ResourceMonitor, rank_log_path, summarize
from ..reporting.report import write_report
from ..run import layout as L
from ..run.final import checkpoint_member
from ..run.rundir import RunDir
from ..utils import dist as ddp
from ..utils.device import resolve_device
from ..utils.dist import Dist
from .context import TrainContext
from .loop import TrainState
from .parallel import check_parallel, train_members
from .speed import check_amp


def _refuse_new_run_in(run_dir: str | os.PathLike) -> None:
    """A new run into a directory whose members have checkpoints: ConfigError (pass --resume)."""
    if RunDir(run_dir).has_checkpoints():
        raise ConfigError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose another RUN_DIR"
        )


def check_run_dir(run_dir: str | os.PathLike, features_dir: str | os.PathLike) -> None:
    """A run directory must not be (or hold) a feature store: the run's files would mix with the data.

    Raises:
        ConfigError: RUN_DIR is the features directory or holds a split file (train.h5, ...).
    """
    run, feats = RunDir(run_dir), Path(features_dir)
    same = run.root.exists() and feats.exists() and run.root.resolve() == feats.resolve()
    if same or run.is_feature_dir():
        raise ConfigError(
            f"RUN_DIR {run_dir} is a feature directory (it holds the .h5 stores); give the run "
            f"its own directory, e.g. runs/<name>"
        )


def resolve_config(
    run_dir: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    overrides: dict | None = None,
    resume: bool = False,
) -> TrainConfig:
    """The config of a new run, or of a resumed one: the saved config with the explicit options on top.

    Raises:
        ConfigError: a new run into a directory that holds one, nothing to resume, or a resume that
            changes anything but the runtime-only options (the differences are listed).
    """
    if not resume:
        _refuse_new_run_in(run_dir)
        return load_config(config_path, overrides)
    run = RunDir(run_dir)
    if not run.holds_run():
        raise ConfigError(f"--resume: {run_dir} holds no run to resume (no {L.CONFIG_FILE}); drop --resume")
    saved = run.read_config()
    explicit = dict(read_yaml(config_path)) if config_path else {}
    explicit.update({k: v for k, v in (overrides or {}).items() if v is not None})
    # the same features directory spelled another way (relative / absolute / via a symlink) is no change
    given = explicit.get("features_dir")
    if given and saved.features_dir and Path(given).resolve() == Path(saved.features_dir).resolve():
        explicit["features_dir"] = saved.features_dir
    merged = load_config(None, {**saved.to_dict(), **explicit})
    diff = config_diff(saved, merged)
    if diff:
        raise ConfigError(
            f"--resume with a different config is refused (only {', '.join(RUNTIME_ONLY)} "
            f"may change):\n  " + "\n  ".join(diff)
        )
    return merged


def fit(
    cfg: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False, log: Callable[[str], None] = print
) -> dict | None:
    """Train ``cfg.members`` models (seeds seed, seed+1, ...) with the spec's recipe, then evaluate the
    members, TTA and the ensemble (choices on validation, test once); returns the summary dict.

    Under ``torchrun`` every rank calls this: the ranks train each member together (DDP); rank 0 alone
    holds the lock, writes, evaluates and returns the summary; the other ranks return None.

    Raises:
        StoreError / ConfigError / CheckpointError: bad input, each with the file or option to fix.
        RunLockedError: another process is using ``run_dir``.
    """
    cfg.validate()  # callers of the Python API get the CLI's checks before anything is written
    check_run_dir(run_dir, cfg.features_dir)
    t_start = time.time()
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    dist = ddp.env_dist()
    check_parallel(cfg.parallel_members, dist.world)  # on every rank, before any of them waits for the others
    if cfg.batch_size < dist.world:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch, shared by the {dist.world} "
            f"torchrun processes; give at least {dist.world} (one video per process)"
        )
    device = ddp.init(dist, resolve_device(cfg.device), cfg.dist_timeout)
    check_amp(cfg.amp, device)  # before anything is written
    if not dist.main:
        _train_as_helper_rank(cfg, run, dist, device, resume)
        return None

    cfg, splits, weights, stats = load_data(cfg, log)  # shared by every member
    # One command at a time per RUN_DIR, for the whole run including its evaluation and report. Only
    # under the lock is "no run here yet" still true when the first file is written.
    with run.lock("train", create=True):
        if not resume:
            _refuse_new_run_in(run_dir)
        run.write_config(dump_yaml(cfg))
        ddp.broadcast(True, dist)  # the other ranks start once the run directory is ours
        log(
            _describe_run(splits, device, cfg.model, cfg.members)
            + (f"; {dist.world} processes (torchrun)" if dist.active else "")
        )

        monitor = ResourceMonitor(run.resource_log, cfg.monitor_interval)
        ctx = TrainContext(
            cfg, splits, weights, stats, device, run, resume=resume, log=log, monitor=monitor, dist=dist
        )
        states, results = _train_and_evaluate(ctx, monitor, run_dir)
        return _record_run(ctx, monitor, states, results, time.time() - t_start)


def _train_and_evaluate(
    ctx: TrainContext, monitor: ResourceMonitor, run_dir: Path
) -> tuple[list[TrainState], dict]:
    """Rank 0's part of a run under its lock: every member trained (with the other torchrun ranks),
    then the evaluation, alone; ``monitor`` runs throughout. Returns the members' states and the
    evaluation's results."""
    cfg, run, dist, log = ctx.cfg, ctx.run, ctx.dist, ctx.log
    monitor.start()
    ranks_joined = False
    try:
        with ddp.lost_ranks(dist, cfg.dist_timeout, _resume_hint(cfg.features_dir, run_dir)):
            states = train_members(ctx)
            ranks_joined = _leave_group(dist)  # the other ranks are done: rank 0 evaluates alone
        results = evaluate_run(cfg, run_dir, ctx.splits, ctx.device)
    except KeyboardInterrupt:
        log(
            f"\ninterrupted: the last finished epoch is kept in {run.every_member(L.LAST)}; "
            f"continue with\n  vidcls train {cfg.features_dir} {run_dir} --resume"
        )
        raise
    finally:
        monitor.stop()
        if ranks_joined:  # every rank's resources, field "rank", in the one log
            monitor.absorb(rank_log_path(monitor.path, r) for r in range(1, dist.world))
    return states, results


def _record_run(
    ctx: TrainContext, monitor: ResourceMonitor, states: list[TrainState], results: dict, wall: float
) -> dict:
    """final.json, calibration.json, summary.json, the tables and the report of a trained run."""
    cfg, run_dir, splits, log = ctx.cfg, ctx.run.root, ctx.splits, ctx.log
    # what the run serves, for `vidcls evaluate` and prediction; summary.json repeats it under "final"
    write_final_choice(run_dir, results["choice"])
    # temperature and OOD threshold of what the run serves, on validation: RUN_DIR/calibration.json,
    # from the validation outputs the evaluation computed (no second forward pass)
    calibration = calibrate_run(run_dir, cfg.device, log=log, outputs=results["outputs"]["val"])
    summary = _summary(cfg, splits, states, results, monitor.records, wall)
    summary["calibration"] = calibration
    ctx.run.write_summary(summary)
    write_run_tables(run_dir, cfg, splits, results)
    # --no-plots (tests, quick runs) skips the report's figures too; `vidcls report` makes it later
    if cfg.plots:
        log(f"report: {write_report(run_dir)}")
    return summary


def _train_as_helper_rank(
    cfg: TrainConfig, run: RunDir, dist: Dist, device: torch.device, resume: bool
) -> None:
    """A rank > 0 under torchrun: train every member with rank 0 (it writes nothing of the run but its
    own resource records, which rank 0 absorbs into the run's log), then leave the group."""

    def quiet(*args: object, **kwargs: object) -> None:  # rank 0 says it all
        pass

    cfg, splits, weights, stats = load_data(cfg, quiet)
    ddp.broadcast(None, dist)  # wait for rank 0 to hold the run directory (it fails alone otherwise)
    monitor = ResourceMonitor(
        rank_log_path(run.resource_log, dist.rank), cfg.monitor_interval, rank=dist.rank
    )
    ctx = TrainContext(
        cfg, splits, weights, stats, device, run, resume=resume, log=quiet, monitor=monitor, dist=dist
    )
    monitor.start()
    with ddp.lost_ranks(dist, cfg.dist_timeout, _resume_hint(cfg.features_dir, run.root)):
        try:
            train_members(ctx)
        finally:
            monitor.stop()  # before the barrier: rank 0 absorbs the complete log after it
        _leave_group(dist)


def _resume_hint(features_dir: str, run_dir: Path) -> str:
    return f"the same torchrun command with --resume (torchrun ... -m vidcls train {features_dir} {run_dir} --resume)"


def _leave_group(dist: Dist) -> bool:
    """Wait for every rank to finish training, then leave the process group; True when there was one."""
    if not dist.active:
        return False
    ddp.barrier(dist)
    ddp.shutdown()
    return True


def load_data(
    cfg: TrainConfig, log: Callable[[str], None] = print
) -> tuple[TrainConfig, Splits, torch.Tensor, tuple[np.ndarray, np.ndarray] | None]:
    """The splits, class weights and input statistics every member shares, and ``cfg`` with ``--model
    auto`` resolved from the data (before anything is written: config.yaml names the model trained).

    Returns:
        ``(cfg, splits, class weights (C,), (mean, std) of the train split or None)``.
    """
    splits = load_splits(
        cfg.features_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        augment=cfg.augment,
        max_frames=cfg.max_frames,
        task=cfg.task,
    )
    # recorded absolute: evaluate / calibrate / report then work from any directory; task and select
    # resolved from the data, as --model auto below: config.yaml says what was trained
    cfg = dataclasses.replace(
        cfg,
        features_dir=str(Path(cfg.features_dir).resolve()),
        task=splits.task,
        select=resolve_select(cfg.select, splits.task),
    )
    _check_task(cfg, splits, log)
    weights = label_weights(splits.train.label_counts(), tuple(cfg.weight_clip), splits.class_names)
    stats = feature_stats(splits.train) if cfg.standardize == "feature" else None  # train split only
    if cfg.model == "auto":
        cfg = dataclasses.replace(cfg, model=auto_model(splits.feature_dim))
        log(f"--model auto: {cfg.model} for {splits.feature_dim}-dimensional frames")
    return cfg, splits, weights, stats


def _check_task(cfg: TrainConfig, splits: Splits, log: Callable[[str], None]) -> None:
    """Refuse a --select of the other task; say what a single-label store trained as multilabel does."""
    if cfg.select not in SELECT[cfg.task]:
        raise ConfigError(
            f"--select {cfg.select} does not apply to this {cfg.task} run; use one of {', '.join(SELECT[cfg.task])}"
        )
    if cfg.task == "multilabel" and not splits.train.store.multilabel:
        log(
            "--task multilabel on a single-label store: one sigmoid per class (one-vs-rest), each video "
            "with its one label; a prediction may then carry no label or several"
        )


def _describe_run(splits: Splits, device: torch.device, model: str, members: int) -> str:
    counts = splits.train.label_counts()
    cls = ", ".join(f"{n} {c}" for n, c in list(zip(splits.class_names, counts))[:20])
    if len(counts) > 20:
        cls += f", ... ({len(counts)} classes)"
    test = len(splits.test) if splits.test is not None else 0
    return (
        f"vidcls {__version__}: {members} x {model} on {device}; train {len(splits.train)} ({cls}), "
        f"val {len(splits.val)} [{splits.val_source}], test {test}; dim {splits.feature_dim}"
    )


def _class_counts(splits: Splits, ds: FeatureDataset | None) -> dict[str, int] | None:
    """Videos of each class in ``ds`` (one of ``splits``); None where there is no such split."""
    if ds is None:
        return None
    return {n: int(c) for n, c in zip(splits.class_names, ds.label_counts())}


def _summary(
    cfg: TrainConfig,
    splits: Splits,
    states: list[TrainState],
    results: dict,
    records: list[dict],
    wall: float,
) -> dict:
    members = []
    for res in results["members"]:
        # a model row is not a seed member once --snapshots gives each member several models: its
        # training facts are those of the member whose checkpoint it is (members/<i>/...)
        i = checkpoint_member(res["checkpoint"]) if res.get("checkpoint") else res["member"]
        state = states[i]
        members.append(
            {
                "member": res["member"],
                "seed": cfg.seed + i,
                "best_epoch": state.best_epoch,
                "epochs_run": state.epoch,
                "stopped_early": state.stopped_early,
                "select": cfg.select,
                "best_val_score": state.best,
                **{k: v for k, v in res.items() if k != "member"},
            }
        )
    has_test = splits.test is not None
    ens = results["ensemble"]
    mean_member = brief_mean([m["test"] for m in members]) if has_test else None
    if mean_member is not None:  # there is a test split
        best_member = max(members, key=lambda m: score(m["val"], cfg.select))
        ens["gain_vs_mean_member"] = {k: ens["test"][k] - mean_member[k] for k in mean_member}
        ens["gain_vs_best_val_member"] = {k: ens["test"][k] - best_member["test"][k] for k in mean_member}
    return {
        "vidcls_version": __version__,
        "classes": splits.class_names,
        "task": cfg.task,
        "model": cfg.model,
        "unused_options": list(unused_sizes(cfg.model)),
        "features_dir": cfg.features_dir,
        "val_source": splits.val_source,
        "class_counts": {
            "train": _class_counts(splits, splits.train),
            "val": _class_counts(splits, splits.val),
            "test": _class_counts(splits, splits.test),
        },
        "members": members,
        "mean_member_test": mean_member,
        "ensemble": ens,
        "tta": results["tta"],
        "final": results["choice"].to_dict(),
        "val": results["final"]["val"],
        "test": results["final"].get("test"),
        "resources": summarize(records),
        "wall_seconds": wall,
    }
