"""torchvision classification models as frame encoders: the classifier removed, the weights preset
as preprocessing, weights from torchvision's enum (a download), a local file or a seeded random init."""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from ...errors import BackboneError
from ...utils.fs import sha256_file
from ..preprocess import Preprocess
from ..weights import load_exactly, read_state_dict, weights_kind
from .base import RANDOM_INIT_SEED, Built, seeded_init, unknown_name

HEAD_ATTRS = ("fc", "classifier", "heads", "head")


def build(name: str, weights: str, image_size: int | str | None = None) -> Built:
    """A classifier-less torchvision model (see :mod:`vidcls.features.families`).

    Raises:
        BackboneError: unknown model or weights, weights that do not download or do not fit.
    """
    known = torchvision.models.list_models(module=torchvision.models)  # classification only
    if name not in known:
        raise unknown_name(
            f"unknown backbone {name!r}",
            name,
            known,
            label="close torchvision names",
            n=5,
            hint="; timm models are timm:NAME, open_clip ones open_clip:ARCH/TAG "
            "(vidcls extract --help lists recommended ones)",
        )
    enum = torchvision.models.get_model_weights(name)
    kind, path = weights_kind(weights)
    if kind == "name" and str(weights) not in enum.__members__:
        raise BackboneError(
            f"--weights {weights!r} for {name}: use DEFAULT, none, one of "
            f"{', '.join(enum.__members__)} or the path of a .pth state dict"
        )
    entry = enum[str(weights)] if kind == "name" else enum.DEFAULT
    model, info = _model(name, kind, entry, path)
    return Built(model, Preprocess.from_weights(entry, image_size), info)


def _model(name: str, kind: str, entry: WeightsEnum, path: Path | None) -> tuple[nn.Module, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet/inception warn about their default init
        if kind in ("default", "name"):
            try:
                model = torchvision.models.get_model(name, weights=entry)
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                raise BackboneError(
                    f"cannot get the {entry} weights of {name} ({err}). Without internet, copy "
                    f"the file into the torch hub cache ({torch.hub.get_dir()}/checkpoints), or pass"
                    f" --weights PATH.pth, or --weights none for a random network"
                ) from None
            strip_classifier(model)
            return model, {"weights": f"{type(entry).__name__}.{entry.name}"}
        with seeded_init():
            model = torchvision.models.get_model(name, weights=None)
    removed = strip_classifier(model)
    if kind == "none":
        return model, {"weights": "none", "random_init_seed": RANDOM_INIT_SEED}
    assert path is not None
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not any(k == p or k.startswith(p + ".") for p in removed)}
    load_exactly(model, state, f"--weights {path}", name)
    return model, {
        "weights": "file",
        "weights_file": path.name,
        "weights_sha256": sha256_file(path),
        "weights_path": str(path.resolve()),
    }


def strip_classifier(model: nn.Module) -> list[str]:
    """Replace the classification head by the layers before its first Linear (in place).

    Returns:
        The state-dict prefixes of the removed modules.

    Raises:
        BackboneError: the model has no recognisable head.
    """
    children = dict(model.named_children())
    heads = [n for n in children if n in HEAD_ATTRS]
    if not heads:
        raise BackboneError(
            f"cannot find the classifier of {type(model).__name__} (no child "
            f"named {', '.join(HEAD_ATTRS)}); choose another backbone"
        )
    name = heads[-1]
    head = children[name]
    if isinstance(head, nn.Linear):
        setattr(model, name, nn.Identity())
        return [name]
    if isinstance(head, nn.Sequential):
        items = list(head.named_children())
        cut = next((i for i, (_, m) in enumerate(items) if isinstance(m, nn.Linear)), None)
        tail: list = []
        if cut is None:  # squeezenet: a 1x1-conv classifier; pool its input instead
            cut = next((i for i, (_, m) in enumerate(items) if isinstance(m, nn.Conv2d)), None)
            tail = [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
        if cut is not None:
            setattr(model, name, nn.Sequential(OrderedDict(items[:cut] + tail)))
            return [f"{name}.{n}" for n, _ in items[cut:]]
    raise BackboneError(
        f"cannot remove the classifier of {type(model).__name__} ({name} is a "
        f"{type(head).__name__}); choose another backbone"
    )


def rebuild_weights(record: dict, given: Path | None) -> str:
    """The ``weights`` argument that rebuilds a torchvision record's weights (enum member or file)."""
    backbone, recorded = record["backbone"], record.get("weights")
    enum_name, _, member = str(recorded).partition(".")
    enum = torchvision.models.get_model_weights(backbone)
    if enum_name != enum.__name__ or member not in enum.__members__:
        raise BackboneError(
            f"the extractor record names weights {recorded!r}, unknown to this torchvision "
            f"for {backbone}; use the versions that extracted the features "
            f"({record.get('torchvision')}) or pass --weights PATH.pth"
        )
    if given is None:
        return member  # torchvision's cache (or a download); offline without it the error names --weights
    prefix = re.search(r"-([0-9a-f]{6,})\.pth?$", enum[member].url)
    got = sha256_file(given)
    if prefix and not got.startswith(prefix.group(1)):
        raise BackboneError(
            f"--weights {given} (sha256 {got[:16]}...) is not {recorded} (published file "
            f"{enum[member].url.rsplit('/', 1)[-1]}); pass --weights PATH.pth with that file"
        )
    return str(given)


def download_hint(record: dict) -> str | None:
    """Where torchvision's recorded weights would be cached, when they are not: the user's fix."""
    member = str(record.get("weights")).partition(".")[2]
    name = torchvision.models.get_model_weights(record["backbone"])[member].url.rsplit("/", 1)[-1]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    if (cache / name).is_file():
        return None  # the weights are there: something else failed
    return (
        f"the features were extracted with the {record.get('weights')} weights of {record['backbone']}, "
        f"which are not on this machine and could not be downloaded; copy {name} into {cache} or pass "
        f"--weights PATH.pth (Python: weights=PATH) with that file"
    )
