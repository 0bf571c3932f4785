"""open_clip image towers as frame encoders: ``--backbone open_clip:ARCH/TAG`` (optional extra
``pip install 'vidcls[clip]'``).

The features are the tower's ``encode_image`` embedding, the projected one (CLIP's joint space,
so text prompts embedded by the same model's text tower can be matched to them). Only the image
tower is kept in memory. Preprocessing is the tower's ``preprocess_cfg`` (size, resize mode,
interpolation, mean/std). ``--weights DEFAULT`` is TAG's download (open_clip's hub logic), ``none``
a seeded random network, a path a local state dict of the whole CLIP model (``visual.*`` keys) or
of the image tower alone, filled exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ...errors import BackboneError
from ...utils.fs import sha256_file
from ..preprocess import Preprocess, parse_image_size
from ..weights import load_exactly, read_state_dict, weights_kind
from .base import RANDOM_INIT_SEED, Built, refuse_weight_name, seeded_init, unknown_name

INSTALL = "pip install 'vidcls[clip]' (or pip install open_clip_torch)"


def import_open_clip() -> ModuleType:
    """The open_clip module.

    Raises:
        BackboneError: it is not installed (the message says how to install it).
    """
    try:
        import open_clip
    except ImportError:
        raise BackboneError(
            f"open_clip backbones need the optional open_clip package, which is not installed: {INSTALL}"
        ) from None
    return open_clip


def split_name(name: str) -> tuple[str, str | None]:
    """``"ViT-B-32/openai"`` -> ("ViT-B-32", "openai"), checked against open_clip's lists.

    Raises:
        BackboneError: unknown architecture or tag (with the close matches / the arch's tags).
    """
    oc = import_open_clip()
    arch, _, tag = name.partition("/")
    known = oc.list_models()
    if arch not in known:
        raise unknown_name(
            f"open_clip has no architecture {arch!r}",
            arch,
            known,
            label="close matches",
            hint='; list them with python -c "import open_clip; print(open_clip.list_models())"',
        )
    if tag and tag not in oc.list_pretrained_tags_by_model(arch):
        tags = oc.list_pretrained_tags_by_model(arch)
        raise BackboneError(
            f"open_clip:{arch} has no pretrained tag {tag!r}; its tags: {', '.join(tags) or 'none'}"
        )
    return arch, tag or None


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence open_clip's root-logger warning that a model built without weights is random: asked for."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


class ImageTower(nn.Module):
    """An open_clip image tower: (N, 3, S, S) -> (N, embed_dim), CLIP's ``encode_image``."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def build(name: str, weights: str, image_size: int | str | None = None) -> Built:
    """The image tower of an open_clip model (see the module docstring).

    Raises:
        BackboneError: open_clip missing, unknown arch/tag, weights that do not download or do not fit.
    """
    oc = import_open_clip()
    arch, tag = split_name(name)
    kind, path = weights_kind(weights)
    if kind == "name":
        raise refuse_weight_name(weights, f"open_clip:{name}", "TAG's download")
    size = parse_image_size(image_size)
    kwargs = {"force_image_size": size} if size is not None else {}
    if kind == "default":
        if tag is None:
            raise BackboneError(
                f"--weights DEFAULT for open_clip:{arch} needs a pretrained tag: "
                f"open_clip:{arch}/TAG with TAG one of "
                f"{', '.join(oc.list_pretrained_tags_by_model(arch)) or 'none (use --weights PATH)'}"
            )
        try:
            model = oc.create_model(arch, pretrained=tag, **kwargs)
        except Exception as err:  # hub and network errors of every kind
            raise BackboneError(
                f"cannot get the {tag} weights of open_clip:{arch} ({type(err).__name__}: "
                f"{str(err)[:160]}). Without internet pass --weights PATH with a copy of "
                f"them, or --weights none for a random network"
            ) from None
    else:
        with seeded_init(), _quiet():
            model = oc.create_model(arch, pretrained=None, **kwargs)
    info: dict[str, Any] = {
        "weights": {"default": "DEFAULT"}.get(kind, kind),
        "pretrained_tag": f"{arch}/{tag}" if tag else None,
    }
    if kind == "none":
        info["random_init_seed"] = RANDOM_INIT_SEED
    elif kind == "file":
        assert path is not None
        info.update(_load_file(oc, model, path, arch))
    visual = model.visual
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    cfg.setdefault("size", visual.image_size)
    cfg.setdefault("mean", oc.OPENAI_DATASET_MEAN)
    cfg.setdefault("std", oc.OPENAI_DATASET_STD)
    del model  # the text tower is not needed for frames
    info["preprocess_config"] = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in cfg.items()
        if k in ("size", "mean", "std", "interpolation", "resize_mode")
    }
    info.update(pooling="encode_image", embedding="projected", open_clip=oc.__version__)
    return Built(ImageTower(visual), Preprocess.from_open_clip(cfg, name), info, visual)


def _load_file(oc: ModuleType, model: nn.Module, path: Path, arch: str) -> dict:
    label = f"--weights {path}"
    state = read_state_dict(path)
    if any(k.startswith("visual.") for k in state):  # the whole CLIP model: take its image tower
        if "visual.positional_embedding" in state:
            try:  # open_clip's own resampling to --image-size
                oc.model.resize_pos_embed(state, model)
            except Exception as err:
                raise BackboneError(
                    f"{label} does not fit open_clip:{arch} ({type(err).__name__}: {str(err)[:160]})"
                ) from None
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    load_exactly(model.get_submodule("visual"), state, label, f"the image tower of open_clip:{arch}")
    return {
        "weights_file": path.name,
        "weights_sha256": sha256_file(path),
        "weights_path": str(path.resolve()),
    }
