"""Typed training configuration: dataclass defaults <- YAML file <- command-line flags.

Unknown keys and wrong types are errors that name the key and the file; the resolved config is what
gets written to ``RUN_DIR/config.yaml`` and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .errors import ConfigError


@dataclass
class TrainConfig:
    """Every option of ``vidcls train``; defaults are the spec's recipe."""

    features_dir: str = ""
    # optimisation (spec: AdamW 1e-3 / 5e-4, clip 1.0, 150 epochs, batch 48)
    epochs: int = 150
    batch_size: int = 48
    lr: float = 1e-3
    weight_decay: float = 5e-4
    grad_clip: float = 1.0
    # CosineAnnealingWarmRestarts, stepped per batch with the fractional epoch
    t0: int = 20
    t_mult: int = 2
    eta_min: float = 1e-6
    # model
    model: str = "bilstm_attn"
    hidden_dim: int = 768
    layers: int = 4
    heads: int = 12
    dropout: float = 0.4
    # loss and class balance
    gamma: float = 2.0
    smoothing: float = 0.1
    alpha: str = "inverse_freq"
    sampler: str = "weighted"
    weight_clip: list = field(default_factory=lambda: [0.5, 10.0])
    augment: bool = True
    # model selection and stopping
    select: str = "val_acc"
    patience: int = 25
    val_fraction: float = 0.15
    checkpoint_every: int = 20
    keep_checkpoints: int = 3
    # seed ensemble and test-time augmentation
    members: int = 1
    tta: str = "auto"
    tta_modes: list = field(default_factory=lambda: ["original", "reverse", "speed_up", "speed_down"])
    # runtime
    seed: int = 42
    device: str = "auto"
    workers: int = 2
    monitor_interval: float = 1800.0
    plots: bool = True

    def validate(self) -> "TrainConfig":
        """Check ranges and choices; returns self. Raises ConfigError naming the option."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in self.weight_clip):
            raise ConfigError(f"weight_clip must be two numbers [low, high], got {self.weight_clip}")
        _positive(self, "epochs", "batch_size", "lr", "t0", "t_mult", "hidden_dim", "layers", "heads",
                  "checkpoint_every", "keep_checkpoints")
        _choice(self, "alpha", ("inverse_freq", "none"))
        _choice(self, "sampler", ("weighted", "shuffle"))
        _choice(self, "select", ("val_acc", "val_f1_macro"))
        _choice(self, "tta", ("auto", "on", "off"))
        _positive(self, "members")
        modes = ("original", "reverse", "speed_up", "speed_down")
        bad = [m for m in self.tta_modes if m not in modes]
        if bad or not self.tta_modes:
            raise ConfigError(f"--tta-modes must be a non-empty list of {', '.join(modes)}; got {self.tta_modes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ConfigError(f"--smoothing must be in [0, 1), got {self.smoothing}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("weight_decay", "grad_clip", "eta_min", "gamma", "patience", "workers",
                     "monitor_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if len(self.weight_clip) != 2 or not 0 < self.weight_clip[0] <= self.weight_clip[1]:
            raise ConfigError(f"weight_clip must be [low, high] with 0 < low <= high, got {self.weight_clip}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Options a resumed run may change: how fast it goes, how long it trains, how many members it has
# (finished members are kept) and how the trained members are evaluated.
RUNTIME_ONLY = ("epochs", "workers", "device", "monitor_interval", "plots", "members", "tta", "tta_modes")


def _positive(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _choice(cfg: TrainConfig, name: str, choices: tuple) -> None:
    if getattr(cfg, name) not in choices:
        raise ConfigError(f"--{name} must be one of {', '.join(choices)}; got {getattr(cfg, name)!r}")


def _coerce(name: str, value: Any, typ: Any, source: str) -> Any:
    """Convert a YAML/CLI value to the field's type; refuse what would silently mean something else."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):  # from the command line: "original,reverse"
            return [v.strip() for v in value.split(",") if v.strip()]
    raise ConfigError(f"{source}: key '{name}' expects {typ.__name__}, got {value!r}")


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> TrainConfig:
    """Build a TrainConfig from defaults, then a YAML file, then ``overrides`` (None values ignored).

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
            if name not in valid:
                raise ConfigError(f"{source}: unknown key '{key}'. Valid keys: {', '.join(valid)}")
            values[name] = _coerce(name, value, hints[name], source)
    return TrainConfig(**values).validate()


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value, got {type(data).__name__}")
    return data


def config_from_dict(data: dict, source: str = "checkpoint") -> TrainConfig:
    """Rebuild a config saved by ``to_dict`` (from a checkpoint or config.yaml)."""
    hints = get_type_hints(TrainConfig)
    known = {k: _coerce(k, v, hints[k], source) for k, v in data.items() if k in hints}
    return TrainConfig(**known)


def config_diff(old: TrainConfig, new: TrainConfig, ignore: tuple = RUNTIME_ONLY) -> list[str]:
    """Human-readable differences between two configs, skipping ``ignore``d keys."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in ignore and a[k] != b.get(k)]


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

