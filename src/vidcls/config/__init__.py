"""Typed training configuration: dataclass defaults <- YAML file <- command-line flags.

Every option is a field of :class:`TrainConfig` with its default and help text; ``vidcls train``'s
flags and the YAML keys are made from those fields. Unknown keys and wrong types are errors that name
the key and the file; the resolved config is what gets written to ``RUN_DIR/config.yaml`` and into
every checkpoint. Reading a YAML file and coercing a value to its field's type: ``config.values``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

import yaml

from ..errors import ConfigError
from .models import AUTO_MIN_DIM as AUTO_MIN_DIM  # re-exported: callers import them from config
from .models import AUTO_MODELS as AUTO_MODELS
from .models import auto_model as auto_model
from .models import check_model
from .values import coerce, read_yaml

TTA_MODES = ("original", "reverse", "speed_up", "speed_down")
TTA_SETTINGS = ("auto", "on", "off")  # --tta: the run's choice on validation, forced on, forced off

# Upper bounds of sizes nothing sensible exceeds: a typo (an extra zero or three) is refused, naming the
# option, before anything is written, not found out as an out-of-memory error in the first epoch.
MAX_BATCH_SIZE = 65_536  # videos per batch
MAX_MEMBERS = 64  # seed-ensemble members: each one trains a model, is scored and is served

TASKS = ("auto", "single", "multilabel")  # --task
SINGLE, MULTILABEL = TASKS[1], TASKS[2]
THRESHOLD_RULES = ("per_class", "global", "fixed")  # --thresholds
# --select's choices per task; the first is what "auto" resolves to
SELECT = {SINGLE: ("val_acc", "val_f1_macro"), MULTILABEL: ("val_map", "val_gap")}


def resolve_select(select: str, task: str) -> str:
    """The metric ``--select auto`` stands for on ``task`` (single | multilabel)."""
    return SELECT[task][0] if select == "auto" else select


def _opt(default: Any, help: str) -> Any:
    """A config field: its default and the help text of its ``vidcls train`` flag.

    Lists get a fresh copy per instance (a shared mutable default would leak between configs)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of ``vidcls train``; defaults are the spec's recipe."""

    features_dir: str = _opt("", "directory with train.h5 [val.h5] [test.h5]")
    # optimisation (spec: AdamW 1e-3 / 5e-4, clip 1.0, 150 epochs, batch 48)
    epochs: int = _opt(150, "training epochs per member")
    batch_size: int = _opt(48, f"videos per batch, at most {MAX_BATCH_SIZE:,}")
    # A small training set must still get optimiser steps: with 36 videos, batch 48 makes an epoch one
    # step and 150 epochs leave the model at chance. An epoch draws max(N, min_steps x batch_size)
    # videos instead (a small set several times over); a set of >= that many keeps one pass per epoch.
    min_steps: int = _opt(
        10,
        "at least this many optimiser steps per epoch: an epoch draws max(train videos, min-steps x "
        "batch-size) videos, so a small set is seen several times per epoch; 0 = always one pass",
    )
    # long videos: attention memory grows with B x T^2 and batches pad to their longest video.
    # max_frames: a longer video is thinned uniformly (extraction's --max-frames rule); 512 is 8x the
    # spec's 64 frames, so only outliers are touched. batch_frames: at most this many padded frames
    # (videos x longest) per batch; 8192 >= 48 x 64 leaves the spec's batches as they are and caps one
    # attention map at heads x 8192 x 512 floats (0.2 GB with 12 heads).
    max_frames: int = _opt(
        512,
        "a longer video is thinned uniformly to this many frames (extraction's --max-frames rule); "
        "512 = 8x the spec's 64-frame videos, so only outliers are thinned",
    )
    batch_frames: int = _opt(
        8192,
        "at most this many padded frames (videos x longest video) per batch; >= max_frames; "
        "8192 >= 48 x 64 keeps the spec's batches and caps an attention map at heads x 8192 x 512",
    )
    lr: float = _opt(1e-3, "AdamW learning rate: the peak of the cosine schedule")
    weight_decay: float = _opt(
        5e-4,
        "AdamW weight decay of the weight matrices (Linear, LSTM, attention projections); "
        "biases and LayerNorm weights (every 1-D parameter) get none",
    )
    grad_clip: float = _opt(1.0, "clip the gradient norm to this; 0 = off")
    # CosineAnnealingWarmRestarts, stepped per batch with the fractional epoch
    t0: int = _opt(20, "epochs until the first warm restart of the cosine LR schedule")
    t_mult: int = _opt(2, "each restart period is this many times the previous one")
    eta_min: float = _opt(1e-6, "lowest learning rate of the cosine schedule")
    # task: one class per video (softmax) or a set of labels per video (one sigmoid per class)
    task: str = _opt(
        "auto",
        "auto (multilabel when the store's videos carry label sets, else single) | single | multilabel "
        "(one sigmoid per class; a single-label store then trains one-vs-rest)",
    )
    thresholds: str = _opt(
        "per_class",
        "multilabel decision thresholds, chosen on validation: per_class (each class's F1-best threshold, "
        "shrunk toward the global one by the class's validation support) | global (one F1-best threshold) "
        "| fixed (--threshold)",
    )
    threshold: float = _opt(0.5, "multilabel: the threshold of --thresholds fixed, in (0, 1)")
    # model
    model: str = _opt(
        "auto",
        "temporal model: auto (bilstm_attn for features of >= 32 values per frame, as CNN features are; "
        "inception_time for low-dimensional sequences) | bilstm_attn | transformer | mean_mlp | inception_time "
        "| netvlad | nextvlad",
    )
    hidden_dim: int = _opt(
        768, "model width; bilstm_attn: even; bilstm_attn, transformer: divisible by heads"
    )
    layers: int = _opt(4, "recurrent / encoder layers (mean_mlp ignores it)")
    heads: int = _opt(12, "attention heads (mean_mlp ignores it)")
    clusters: int = _opt(64, "netvlad, nextvlad: cluster centres K (the other models ignore it)")
    groups: int = _opt(8, "nextvlad: groups G the expanded frame is split into (the other models ignore it)")
    expansion: int = _opt(2, "nextvlad: expansion factor of the frame before grouping (the others ignore it)")
    dropout: float = _opt(0.4, "dropout probability, in [0, 1)")
    # loss and class balance
    gamma: float = _opt(2.0, "focal-loss gamma; 0 = cross-entropy")
    smoothing: float = _opt(0.1, "label smoothing, in [0, 1)")
    alpha: str = _opt("inverse_freq", "focal-loss class weights: inverse_freq | none")
    sampler: str = _opt("weighted", "weighted (class-balanced draws) | shuffle")
    weight_clip: list[float] = _opt(
        [0.5, 10.0], "low,high: range the inverse-frequency class weights are clipped to"
    )
    augment: bool = _opt(True, "feature augmentation of the training videos")
    standardize: str = _opt(
        "feature",
        "feature: subtract the train split's per-feature mean and divide by its std (stored in every "
        "checkpoint, applied by evaluation and prediction) | none: raw features",
    )
    # model selection and stopping
    select: str = _opt(
        "auto",
        "the validation metric that picks the best checkpoint: auto (val_acc, or val_map for multilabel) | "
        "val_acc | val_f1_macro (single) | val_map | val_gap (multilabel)",
    )
    # Stopping only at the end of a warm-restart cycle: mid-cycle the LR is still high and the model
    # is not at a minimum, so "no gain for N epochs" there stops a run whose val loss is still falling.
    patience_cycles: int = _opt(
        1,
        "early-stop at the end of a warm-restart cycle when the last this many whole cycles brought no "
        "better checkpoint; 0 = never",
    )
    val_fraction: float = _opt(0.15, "validation share carved from train when there is no val.h5")
    checkpoint_every: int = _opt(20, "also save a checkpoint every this many epochs")
    keep_checkpoints: int = _opt(3, "how many of those periodic checkpoints to keep")
    # seed ensemble and test-time augmentation
    members: int = _opt(
        1, f"seed-ensemble members, trained one after another with seeds seed+i; at most {MAX_MEMBERS}"
    )
    snapshots: bool = _opt(
        False,
        "snapshot ensemble: every member's checkpoints at the ends of its warm-restart cycles (always "
        "saved) are the ensemble's models, instead of each member's best checkpoint",
    )
    tta: str = _opt("auto", "test-time augmentation: auto (only if it improves validation) | on | off")
    tta_modes: list[str] = _opt(list(TTA_MODES), f"comma-separated, distinct, any of {','.join(TTA_MODES)}")
    # runtime
    seed: int = _opt(42, "random seed, in [0, 2**63 - members]")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    workers: int = _opt(2, "DataLoader worker processes")
    monitor_interval: float = _opt(1800.0, "seconds between resource-log records (> 0)")
    plots: bool = _opt(True, "per-epoch dashboard PNGs and report.html")
    # speed and scale-out
    bucket: bool = _opt(
        False,
        "length bucketing: after the epoch's (class-balanced) draw, batches group videos of similar "
        "length (within a window of the draw; batches in shuffled order), so less padding",
    )
    amp: str = _opt("none", "mixed precision on CUDA: none | bf16 | fp16 (fp16 adds a gradient scaler)")
    compile: bool = _opt(False, "torch.compile the model (CUDA; the first epochs pay the compile time)")
    parallel_members: int = _opt(
        1,
        "train the ensemble members in this many processes at once (one member per GPU where there "
        "are GPUs); each member equals the one a sequential run trains",
    )
    dist_timeout: float = _opt(
        300.0,
        "under torchrun: seconds a rank waits for the others in a collective before the job stops "
        "with an error naming the rank",
    )

    def validate(self) -> TrainConfig:
        """Check every option, before anything is written; returns self.

        Raises:
            ConfigError: a value out of range, an unknown choice or model, or model sizes the model
                would refuse; the message names the option.
        """
        _check_numbers(self)
        _check_choices(self)
        check_model(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Options a resumed run may change: how fast it goes, how long it trains, how many members it has
# (finished members are kept) and how the trained members are evaluated.
RUNTIME_ONLY = (
    "epochs",
    "workers",
    "device",
    "monitor_interval",
    "plots",
    "members",
    "tta",
    "tta_modes",
    "snapshots",
    "compile",
    "parallel_members",
    "dist_timeout",
    "thresholds",
    "threshold",
)


# Keys of earlier releases, with what replaced them (a config.yaml of an older run names them).
RETIRED = {"patience": "early stopping now counts warm-restart cycles; use patience_cycles (default 1)"}


def _check_numbers(cfg: TrainConfig) -> None:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in cfg.weight_clip
    ):
        raise ConfigError(f"--weight-clip must be two numbers low,high, got {cfg.weight_clip}")
    _positive(
        cfg,
        "epochs",
        "batch_size",
        "lr",
        "t0",
        "t_mult",
        "hidden_dim",
        "layers",
        "heads",
        "checkpoint_every",
        "keep_checkpoints",
        "max_frames",
        "batch_frames",
        "members",
        "monitor_interval",
        "parallel_members",
        "clusters",
        "groups",
        "expansion",
        "dist_timeout",
    )
    _at_most(cfg, batch_size=MAX_BATCH_SIZE, members=MAX_MEMBERS)
    if cfg.batch_frames < cfg.max_frames:
        raise ConfigError(
            f"--batch-frames ({cfg.batch_frames}) must be >= --max-frames ({cfg.max_frames}): "
            f"a video of max_frames frames must fit in a batch; raise one or lower the other"
        )
    # member i trains with seed + i, and torch seeds are 64-bit: keep every member's seed a signed int64
    if not 0 <= cfg.seed <= 2**63 - cfg.members:
        raise ConfigError(
            f"--seed must be in [0, 2**63 - members] = [0, {2**63 - cfg.members}] "
            f"(member i uses seed + i), got {cfg.seed}"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if not 0.0 <= cfg.smoothing < 1.0:
        raise ConfigError(f"--smoothing must be in [0, 1), got {cfg.smoothing}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}")
    for name in ("weight_decay", "grad_clip", "eta_min", "gamma", "patience_cycles", "workers", "min_steps"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if len(cfg.weight_clip) != 2 or not 0 < cfg.weight_clip[0] <= cfg.weight_clip[1]:
        raise ConfigError(f"--weight-clip must be low,high with 0 < low <= high, got {cfg.weight_clip}")


def _check_choices(cfg: TrainConfig) -> None:
    _choice(cfg, "alpha", ("inverse_freq", "none"))
    _choice(cfg, "sampler", ("weighted", "shuffle"))
    _choice(cfg, "standardize", ("feature", "none"))
    _choice(cfg, "task", TASKS)
    _choice(cfg, "thresholds", THRESHOLD_RULES)
    _choice(cfg, "select", ("auto", *SELECT[TASKS[1]], *SELECT[TASKS[2]]))
    if cfg.task in SELECT and cfg.select != "auto" and cfg.select not in SELECT[cfg.task]:
        raise ConfigError(
            f"--select {cfg.select} does not apply to --task {cfg.task}; use one of {', '.join(SELECT[cfg.task])}"
        )
    if not 0.0 < cfg.threshold < 1.0:
        raise ConfigError(f"--threshold must be in (0, 1), got {cfg.threshold}")
    _choice(cfg, "amp", ("none", "bf16", "fp16"))
    _choice(cfg, "tta", TTA_SETTINGS)
    unknown = [m for m in cfg.tta_modes if m not in TTA_MODES]
    if unknown or not cfg.tta_modes:
        raise ConfigError(
            f"--tta-modes must be a non-empty, comma-separated list of {', '.join(TTA_MODES)}; "
            f"got {cfg.tta_modes}"
        )
    repeated = sorted({m for m in cfg.tta_modes if cfg.tta_modes.count(m) > 1})
    if repeated:
        raise ConfigError(f"--tta-modes lists {', '.join(repeated)} more than once; name each mode once")


def _positive(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _at_most(cfg: TrainConfig, **bounds: int) -> None:
    for name, bound in bounds.items():
        value = getattr(cfg, name)
        if value > bound:
            raise ConfigError(f"--{name.replace('_', '-')} must be at most {bound:,}, got {value:,}")


def _choice(cfg: TrainConfig, name: str, choices: tuple) -> None:
    if getattr(cfg, name) not in choices:
        raise ConfigError(f"--{name} must be one of {', '.join(choices)}; got {getattr(cfg, name)!r}")


def load_config(
    path: str | os.PathLike | None = None, overrides: dict | None = None, *, saved_run: bool = False
) -> TrainConfig:
    """Build a TrainConfig from defaults, then a YAML file, then ``overrides`` (None values ignored).

    ``saved_run``: ``path`` is a run's own config.yaml, possibly written by an earlier release; its
    retired keys (``RETIRED``) are dropped rather than refused, so older runs can still be evaluated,
    calibrated and resumed.

    Raises:
        ConfigError: unreadable file, unknown key (the valid keys are listed) or a wrong type.
    """
    hints = get_type_hints(TrainConfig)
    valid = [f.name for f in fields(TrainConfig)]
    values: dict[str, Any] = {}
    layers = []
    if path is not None:
        layers.append((str(path), read_yaml(path)))
    if overrides:
        layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for source, data in layers:
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name in RETIRED:
                if saved_run and source == str(path):
                    continue
                raise ConfigError(f"{source}: key '{key}' is gone: {RETIRED[name]}")
            if name not in valid:
                raise ConfigError(f"{source}: unknown key '{key}'. Valid keys: {', '.join(valid)}")
            values[name] = coerce(name, value, hints[name], source)
    return TrainConfig(**values).validate()


def config_from_dict(data: dict, source: str = "checkpoint") -> TrainConfig:
    """Rebuild a config saved by ``to_dict`` (from a checkpoint or config.yaml)."""
    hints = get_type_hints(TrainConfig)
    known = {k: coerce(k, v, hints[k], source) for k, v in data.items() if k in hints}
    return TrainConfig(**known)


def config_diff(old: TrainConfig, new: TrainConfig, ignore: tuple = RUNTIME_ONLY) -> list[str]:
    """Human-readable differences between two configs, skipping ``ignore``d keys."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in ignore and a[k] != b.get(k)]


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
