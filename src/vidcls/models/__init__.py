"""Temporal models, created by name (timm-style): ``build_model("bilstm_attn", feature_dim=1280, n_classes=4)``."""

from __future__ import annotations

import dataclasses
import inspect

import torch.nn as nn

from ..errors import ConfigError
from .inception import InceptionTime
from .layers import (
    SPEC,
    AttentionPooling,
    ClassifierHead,
    InputProjection,
    Sizes,
    Standardized,
    length_mask,
    sinusoidal_encoding,
)
from .temporal import BiLSTMAttention, MeanMLP, TemporalTransformer
from .vlad import ContextGating, NetVLAD, NeXtVLAD

__all__ = [
    "MODELS",
    "SPEC",
    "Sizes",
    "AttentionPooling",
    "BiLSTMAttention",
    "ClassifierHead",
    "ContextGating",
    "InceptionTime",
    "InputProjection",
    "MeanMLP",
    "NetVLAD",
    "NeXtVLAD",
    "Standardized",
    "TemporalTransformer",
    "build_model",
    "build_from_spec",
    "list_models",
    "unused_sizes",
    "length_mask",
    "sinusoidal_encoding",
]


MODELS: dict[str, type[nn.Module]] = {
    "bilstm_attn": BiLSTMAttention,
    "transformer": TemporalTransformer,
    "mean_mlp": MeanMLP,
    "inception_time": InceptionTime,
    "netvlad": NetVLAD,
    "nextvlad": NeXtVLAD,
}

# The shared size options (``layers.Sizes``, the ``--hidden-dim`` ... ``--expansion`` flags) each model
# accepts and ignores; a model's constructor takes only those of clusters, groups, expansion it uses.
_UNUSED = {
    "bilstm_attn": ("clusters", "groups", "expansion"),
    "transformer": ("clusters", "groups", "expansion"),
    "mean_mlp": ("layers", "heads", "clusters", "groups", "expansion"),
    "inception_time": ("heads", "clusters", "groups", "expansion"),
    "netvlad": ("layers", "heads", "groups", "expansion"),
    "nextvlad": ("layers", "heads"),
}


def list_models() -> list[str]:
    """Returns: the registered model names, sorted."""
    return sorted(MODELS)


def unused_sizes(name: str) -> tuple[str, ...]:
    """The shared size options (``layers.Sizes`` field names) model ``name`` ignores, in field order.

    Raises:
        ConfigError: unknown name (the message lists valid names).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return _UNUSED[name]


def build_model(
    name: str, *, feature_dim: int, n_classes: int, standardize: bool = False, **sizes: int | float
) -> nn.Module:
    """Create a registered model by name.

    Args:
        name: one of ``list_models()``; "bilstm_attn" is the default.
        feature_dim: per-frame feature size D.
        n_classes: number of classes C (>= 2).
        sizes: ``hidden_dim``, ``layers``, ``heads``, ``dropout``, ``clusters``, ``groups``,
            ``expansion`` (``layers.Sizes``; those not given are the spec's, ``layers.SPEC``). Every model
            accepts all of them; those in ``unused_sizes(name)`` are ignored.
        standardize: wrap the model in ``Standardized`` (per-feature input statistics as buffers,
            identity until ``set_stats``).

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: unknown name (the message lists valid names), or an invalid option
            combination (the message names the option to change).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    valid = [f.name for f in dataclasses.fields(Sizes)]
    unknown = sorted(set(sizes) - set(valid))
    if unknown:
        raise ConfigError(f"unknown model size {', '.join(unknown)}; valid: {', '.join(valid)}")
    # The shared positional sizes go to every constructor (a model ignores those it has no use for);
    # the keyword-only ones (clusters, groups, expansion) only to the constructors that take them.
    takes = inspect.signature(MODELS[name]).parameters
    sizes = {k: v for k, v in sizes.items() if k in takes}
    model = MODELS[name](feature_dim=feature_dim, n_classes=n_classes, **sizes)
    return Standardized(model, feature_dim) if standardize else model


def build_from_spec(spec: dict) -> nn.Module:
    """Rebuild a model from the ``model`` entry of a checkpoint: ``{"name": ..., "feature_dim": ...}``."""
    spec = dict(spec)
    return build_model(spec.pop("name"), **spec)
