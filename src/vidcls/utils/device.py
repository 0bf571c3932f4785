"""Device choice shared by training, scoring and extraction."""
from __future__ import annotations

from ..errors import ConfigError


def resolve_device(name: str):
    """``auto`` -> CUDA when present, else CPU; anything else is passed to torch (``cpu``, ``cuda:1``).

    Raises:
        ConfigError: not a device, or CUDA asked for where there is none.
    """
    import torch  # only here: the config itself needs no torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA but none is available; use --device cpu")
    return device
