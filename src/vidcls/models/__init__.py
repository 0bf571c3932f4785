"""Temporal models, created by name (timm-style): ``build_model("bilstm_attn", feature_dim=1280, n_classes=4)``."""

from __future__ import annotations

import dataclasses

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

__all__ = [
    "MODELS",
    "SPEC",
    "Sizes",
    "AttentionPooling",
    "BiLSTMAttention",
    "ClassifierHead",
    "InceptionTime",
    "InputProjection",
    "MeanMLP",
    "Standardized",
    "TemporalTransformer",
    "build_model",
    "build_from_spec",
    "list_models",
    "length_mask",
    "sinusoidal_encoding",
]


MODELS: dict[str, type[nn.Module]] = {
    "bilstm_attn": BiLSTMAttention,
    "transformer": TemporalTransformer,
    "mean_mlp": MeanMLP,
    "inception_time": InceptionTime,
}


def list_models() -> list[str]:
    """Returns: the registered model names, sorted."""
    return sorted(MODELS)


def build_model(
    name: str, *, feature_dim: int, n_classes: int, standardize: bool = False, **sizes: int | float
) -> nn.Module:
    """Create a registered model by name.

    Args:
        name: one of ``list_models()``; "bilstm_attn" is the default.
        feature_dim: per-frame feature size D.
        n_classes: number of classes C (>= 2).
        sizes: ``hidden_dim``, ``layers``, ``heads``, ``dropout`` (``layers.Sizes``; those not given are
            the spec's, ``layers.SPEC``; ``mean_mlp`` ignores layers, heads; ``inception_time`` heads).
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
    unknown = sorted(set(sizes) - {f.name for f in dataclasses.fields(Sizes)})
    if unknown:
        raise ConfigError(
            f"unknown model size {', '.join(unknown)}; valid: hidden_dim, layers, heads, dropout"
        )
    model = MODELS[name](feature_dim=feature_dim, n_classes=n_classes, **sizes)
    return Standardized(model, feature_dim) if standardize else model


def build_from_spec(spec: dict) -> nn.Module:
    """Rebuild a model from the ``model`` entry of a checkpoint: ``{"name": ..., "feature_dim": ...}``."""
    spec = dict(spec)
    return build_model(spec.pop("name"), **spec)
