"""timm image models as frame encoders: ``--backbone timm:NAME`` (any of timm's 1,000+ models).

The features are timm's pre-logits, ``forward_head(forward_features(x), pre_logits=True)``: the
pooled vector the classifier would read (width ``head_hidden_size``; for timm's CLIP towers the
token before CLIP's projection). The classifier itself is removed (``reset_classifier(0)``).
Preprocessing is the model's own data config (size, crop_pct, crop mode, interpolation, mean/std);
``--image-size`` replaces its size (ViTs are then built at that size, their position embeddings
resampled from the weights by timm's own checkpoint filter).

Weights: ``DEFAULT`` is the name's pretrained tag (timm's hub download), ``none`` a network
initialised from a fixed seed, a path a local ``.pth`` / ``.pt`` / ``.safetensors`` state dict, in
timm's names or in any layout the architecture's ``checkpoint_filter_fn`` converts (timm's own
conversions, e.g. original DINOv2 / OpenAI CLIP files), or efficientnet_pytorch's names for an
EfficientNet-Lite (:mod:`vidcls.features.lite0`). A file must fill every tensor of the model
exactly (its classifier excepted): nothing is loaded partially.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import BackboneError
from ...utils.fs import sha256_file
from .. import lite0
from ..preprocess import Preprocess, parse_image_size
from ..weights import load_exactly, read_state_dict, weights_kind
from .base import RANDOM_INIT_SEED, Built, refuse_weight_name, seeded_init, unknown_name

DATA_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
# A timm model: an nn.Module with reset_classifier, forward_features and forward_head, methods that
# nn.Module's typing (attributes are Tensor | Module) cannot see.
TimmModel = Any


class PreLogits(nn.Module):
    """A timm model's pre-logits features: (N, 3, S, S) -> (N, head_hidden_size)."""

    def __init__(self, model: TimmModel):
        super().__init__()
        self.model: TimmModel = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def check_name(name: str) -> None:
    """Refuse a name timm does not know, with the close matches.

    Raises:
        BackboneError: unknown architecture or pretrained tag.
    """
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        words = [w for w in arch.replace("-", "_").split("_") if len(w) > 2]
        pattern = [m for w in words[:2] for m in timm.list_models(f"*{w}*")]
        raise unknown_name(
            f"timm has no model {name!r}",
            arch,
            sorted(set(pattern)) or timm.list_models(),
            label="close matches",
            cutoff=0.4,
            hint="; list them with python -c \"import timm; print(timm.list_models('*vit*'))\"",
        )
    if tag:
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            raise BackboneError(
                f"timm:{arch} has no pretrained tag {tag!r}; its tags: {', '.join(tags) or 'none'}"
            )


def build(name: str, weights: str, image_size: int | str | None = None) -> Built:
    """A frozen-ready timm encoder (see the module docstring).

    Raises:
        BackboneError: unknown name, weights that do not download, do not fit or are not a state dict.
    """
    import timm

    check_name(name)
    kind, path = weights_kind(weights)
    if kind == "name":
        raise refuse_weight_name(weights, f"timm:{name}", "the pretrained tag's download")
    size = parse_image_size(image_size)
    if kind == "default":
        try:
            model = _create(name, True, size)
        except Exception as err:  # hub and network errors of every kind
            raise BackboneError(
                f"cannot get the pretrained weights of timm:{name} ({type(err).__name__}: "
                f"{str(err)[:160]}). Without internet pass --weights PATH (.pth / .pt / "
                f".safetensors) with a copy of them, or --weights none for a random network"
            ) from None
        model.reset_classifier(0)
    else:
        with seeded_init():
            model = _create(name, False, size)
    # the tag gives the data config, and with DEFAULT the weights too
    info: dict[str, Any] = {"weights": {"default": "DEFAULT"}.get(kind, kind), "pretrained_tag": _tag(model)}
    if kind == "none":
        model.reset_classifier(0)
        info["random_init_seed"] = RANDOM_INIT_SEED
    elif kind == "file":
        assert path is not None
        info.update(_load_file(model, path, name))
    data = timm.data.resolve_model_data_config(model)
    if size is not None:
        data["input_size"] = (3, size, size)
    info["data_config"] = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items() if k in DATA_KEYS
    }
    info.update(pooling="pre_logits", timm=timm.__version__)
    return Built(PreLogits(model), Preprocess.from_timm(data, name), info, model)


def _create(name: str, pretrained: bool, size: int | None) -> TimmModel:
    """timm.create_model, at ``size`` for architectures built for one input size (ViTs, EVA ...)."""
    import timm

    if size is not None:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=size)
        except TypeError:  # CNNs take no img_size: they run at any size
            pass
    return timm.create_model(name, pretrained=pretrained)


def _tag(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    return f"{arch}.{tag}" if arch and tag else arch


def _load_file(model: TimmModel, path: Path, name: str) -> dict:
    """Load a local state dict into ``model`` (whose classifier is then removed); the record part."""
    label = f"--weights {path}"
    state = read_state_dict(path)
    fmt = "timm"
    if lite0.is_efficientnet_pytorch(state):
        if "efficientnet_lite" not in type(model).__name__.lower() + name:
            raise BackboneError(
                f"{label} holds an efficientnet_pytorch EfficientNet-Lite; vidcls maps those "
                f"names onto timm:tf_efficientnet_lite0 (or _lite1 ... _lite4), not timm:{name}"
            )
        state, fmt = lite0.to_timm(state, model, label, f"timm:{name}"), "efficientnet_pytorch"
    else:
        filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:  # timm's own conversion of the architecture's other layouts (and position embeddings)
                state = filter_fn(state, model)
            except Exception as err:
                raise BackboneError(
                    f"{label} does not fit timm:{name}: timm cannot convert it "
                    f"({type(err).__name__}: {str(err)[:160]})"
                ) from None
    heads = _classifier_prefixes(model)
    model.reset_classifier(0)
    state = {k: v for k, v in state.items() if not any(k == p or k.startswith(p + ".") for p in heads)}
    load_exactly(model, state, label, f"timm:{name}")
    return {
        "weights_file": path.name,
        "weights_sha256": sha256_file(path),
        "weights_path": str(path.resolve()),
        "weights_format": fmt,
    }


def _classifier_prefixes(model: nn.Module) -> list[str]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = [names] if isinstance(names, str) else list(names)
    own = model.state_dict()
    return [n for n in names if any(k.startswith(n + ".") for k in own)]
