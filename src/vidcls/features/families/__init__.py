"""The encoder families: torchvision, timm and open_clip models as frozen frame encoders.

Each family module offers ``build(name, weights, image_size) -> Built`` (the network as a module
that maps normalised frames (N, 3, S, S) to features (N, D), its preprocessing, and the weights
part of the extractor record) and ``rebuild_weights(record, weights) -> str`` (the ``weights``
argument that rebuilds a recorded encoder, checked against the record). A backbone spec names its
family: ``timm:NAME``, ``open_clip:ARCH/TAG``, or a plain torchvision model name.

What the family modules share (``Built``, ``seeded_init``, ``RANDOM_INIT_SEED``) lives in :mod:`.base`,
so that they never import this package, whose ``family_module`` imports them on demand.
"""

from __future__ import annotations

from types import ModuleType

from ...errors import BackboneError
from .base import RANDOM_INIT_SEED, Built, seeded_init

__all__ = ["FAMILIES", "RANDOM_INIT_SEED", "Built", "family_module", "family_of", "seeded_init", "split_spec"]

FAMILIES = ("torchvision", "timm", "open_clip")


def split_spec(backbone: str) -> tuple[str, str]:
    """``"timm:convnext_tiny"`` -> ("timm", "convnext_tiny"); a plain name is torchvision's.

    Raises:
        BackboneError: an unknown family prefix or an empty name.
    """
    spec = str(backbone).strip()
    family, sep, name = spec.partition(":")
    if not sep:
        family, name = "torchvision", spec
    family = {"tv": "torchvision", "openclip": "open_clip", "open-clip": "open_clip"}.get(family, family)
    if family not in FAMILIES:
        raise BackboneError(
            f"--backbone {spec!r}: unknown family {family!r}; use a torchvision name "
            f"(efficientnet_v2_s), timm:NAME (timm:convnext_tiny) or open_clip:ARCH/TAG "
            f"(open_clip:ViT-B-32/openai)"
        )
    if not name:
        raise BackboneError(f"--backbone {spec!r}: no model name after {family}:")
    return family, name


def family_of(record: dict) -> str | None:
    """The family of an extractor record (records of earlier releases name none: torchvision), or
    None when the features were not made by a frame encoder vidcls runs (synthetic, imported)."""
    if record.get("family") in FAMILIES:
        return record["family"]
    backbone = record.get("backbone")
    if not isinstance(backbone, str) or not backbone:
        return None
    try:
        family, name = split_spec(backbone)
    except BackboneError:
        return None
    if family == "torchvision":
        import torchvision

        return family if name in torchvision.models.list_models(module=torchvision.models) else None
    return family


def family_module(family: str) -> ModuleType:
    """The module implementing ``family`` (imported on demand: open_clip is optional)."""
    if family == "timm":
        from . import timm_hub

        return timm_hub
    if family == "open_clip":
        from . import openclip

        return openclip
    from . import tv

    return tv
