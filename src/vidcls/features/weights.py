"""Local weight files of any encoder family: read, unwrap, check, fingerprint.

``read_state_dict`` reads ``.pth`` / ``.pt`` (``torch.load`` with ``weights_only``: no pickled
code runs) and ``.safetensors`` files, unwrapping the usual training-checkpoint containers, and
refuses a file holding NaN or Inf (it would give NaN features for every frame, found only when
training diverges); ``check_finite`` does the same for a built network (downloaded weights).
``state_sha256`` fingerprints the weights *as loaded*: the same for a hub download and a local copy of it, different for any changed tensor, so an
encoder rebuilt for prediction can be checked against the one that extracted the features.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import BackboneError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "module")


def weights_kind(weights: str | os.PathLike) -> tuple[str, Path | None]:
    """``--weights`` as ("default" | "none" | "file" | "name", path or None).

    "name" is anything else (a torchvision enum member); a string that looks like a file (a weight
    suffix or an existing path) is "file", checked to exist.

    Raises:
        BackboneError: a path that is not a file.
    """
    w = str(weights)
    if w.upper() == "DEFAULT":
        return "default", None
    if w.lower() == "none":
        return "none", None
    path = Path(w).expanduser()
    if path.suffix.lower() in WEIGHT_SUFFIXES or path.exists() or "/" in w:
        if not path.is_file():
            raise BackboneError(
                f"--weights {w}: no such file; give a state dict file "
                f"({', '.join(WEIGHT_SUFFIXES)}), DEFAULT or none"
            )
        return "file", path
    return "name", None


def _load_failure(err: Exception) -> str:
    """Why a weights file did not load, in a few words (torch's own text runs to a paragraph)."""
    text = " ".join(str(err).split())
    if "Weights only load failed" in text:  # a pickle of more than tensors, or not a torch file at all
        return "torch.load with weights_only=True refused it: not a PyTorch file, or it holds Python objects"
    return f"{type(err).__name__}: {text[:160]}"


def read_state_dict(path: Path) -> dict:
    """The tensors of a local weights file, unwrapped (``{"state_dict": ...}``, ``module.`` prefixes).

    Raises:
        BackboneError: unreadable, not a state dict, or holding non-tensor values.
    """
    path = Path(path)
    state: object  # whatever the file holds, until checked below
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip, safetensors and torch errors all mean the same to the user
        raise BackboneError(
            f"--weights {path}: not a loadable state dict ({_load_failure(err)}); save one "
            f"with torch.save(model.state_dict(), path) or safetensors.torch.save_file"
        ) from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]  # a training checkpoint that wraps the state dict
            break
    if not isinstance(state, dict) or not state:
        raise BackboneError(
            f"--weights {path}: holds a {type(state).__name__}"
            f"{' (empty)' if isinstance(state, dict) else ''}, not a state dict"
        )
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise BackboneError(f"--weights {path}: entries {odd[:3]} are not tensors; give a plain state dict")
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BackboneError(
                f"--weights {path}: tensor {name!r} holds NaN or Inf values; the file is damaged "
                f"or was saved from a diverged training run: use other weights"
            )
    return {str(k).removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel


def check_finite(model: nn.Module, label: str) -> None:
    """Refuse weights holding NaN or Inf.

    Raises:
        BackboneError: names the first such tensor.
    """
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BackboneError(
                f"{label}: tensor {name!r} holds NaN or Inf values; the file is damaged "
                f"or was saved from a diverged training run: use other weights"
            )


def state_sha256(model: nn.Module) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in state-dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_exactly(module: nn.Module, state: dict, label: str, name: str) -> None:
    """``load_state_dict(strict=True)`` with one readable line for every mismatch.

    Raises:
        BackboneError: missing or unexpected keys, or tensors of another shape.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in {name}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected:
        raise BackboneError(
            f"{label} does not fit {name}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}; is it a state dict of {name}?"
        )
    if shapes:
        raise BackboneError(
            f"{label} does not fit {name}: {len(shapes)} tensor(s) of another shape, "
            f"e.g. {shapes[0]}; is it a state dict of {name} (same variant)?"
        )
    module.load_state_dict(state, strict=True)
