"""Device choice shared by training, scoring and extraction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a device is made: the config itself needs no torch
    import torch

MAX_DECODE_WORKERS = 64  # more processes than this only thrash: each holds FFmpeg buffers and frames


def check_decode_workers(n: object) -> int:
    """``--decode-workers`` as an int in 0..MAX_DECODE_WORKERS.

    Raises:
        ConfigError: not an integer, negative, or more than MAX_DECODE_WORKERS.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_DECODE_WORKERS:
        raise ConfigError(
            f"--decode-workers must be an integer from 0 (decode in the main process) to "
            f"{MAX_DECODE_WORKERS}, got {n!r}"
        )
    return n


def resolve_device(name: str) -> torch.device:
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
