"""``--model``'s checks before a run starts: ``auto``'s choice and the sizes each model takes.

Config cannot import torch at import time; the model registry is imported only when a config is checked.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

# ``cfg`` below is a ``config.TrainConfig``; not imported, even for typing: config imports this module
TrainConfig = Any


# The size options each model's constructor hands to ``check_sizes`` (models/temporal.py). Checking
# them here refuses a bad combination before the run directory is written, not when a member starts.
_MODEL_SIZE_OPTIONS = {
    "bilstm_attn": dict(layers=True, heads=True, even_hidden=True),
    "transformer": dict(layers=True, heads=True),
    "mean_mlp": dict(),
    "inception_time": dict(layers=True),
    "netvlad": dict(clusters=True),
    "nextvlad": dict(clusters=True, groups=True),  # groups: with expansion, as check_sizes takes them
}


# ``--model auto``: the spec's bilstm_attn for CNN features (hundreds of values per frame); for
# low-dimensional sequences (sensors, time series: a few values per step) a convolution from the
# time-series literature. Measured on aeon's 1-value sets (benchmarks/realdata.py, README): see AUTO_MODELS.
AUTO_MIN_DIM = 32  # features per step at which auto picks bilstm_attn
AUTO_MODELS = ("bilstm_attn", "inception_time")  # (>= AUTO_MIN_DIM, below)


def auto_model(feature_dim: int) -> str:
    """The model ``--model auto`` trains on ``feature_dim``-dimensional frames."""
    return AUTO_MODELS[0] if feature_dim >= AUTO_MIN_DIM else AUTO_MODELS[1]


def check_model(cfg: TrainConfig) -> None:
    from ..models import list_models  # torch: imported only when a config is checked

    if cfg.model != "auto" and cfg.model not in list_models():
        raise ConfigError(f"--model {cfg.model!r} is unknown; valid names: auto, {', '.join(list_models())}")
    for name in AUTO_MODELS if cfg.model == "auto" else (cfg.model,):  # auto: the sizes must suit both
        _check_sizes_of(cfg, name)


def _check_sizes_of(cfg: TrainConfig, name: str) -> None:
    from ..models.layers import check_sizes

    opts = _MODEL_SIZE_OPTIONS.get(name, {})
    try:  # feature_dim and n_classes come from the data; 1 and 2 pass their checks
        check_sizes(
            feature_dim=1,
            n_classes=2,
            hidden_dim=cfg.hidden_dim,
            dropout=cfg.dropout,
            layers=cfg.layers if opts.get("layers") else None,
            heads=cfg.heads if opts.get("heads") else None,
            even_hidden=opts.get("even_hidden", False),
            clusters=cfg.clusters if opts.get("clusters") else None,
            groups=cfg.groups if opts.get("groups") else None,
            expansion=cfg.expansion if opts.get("groups") else None,
        )
        if name == "inception_time":  # its 4 branches split hidden_dim evenly
            from ..models.inception import check_width

            check_width(cfg.hidden_dim)
    except ConfigError as exc:
        where = f"auto (which may pick {name})" if cfg.model == "auto" else name
        raise ConfigError(f"--model {where}: {exc}") from None
