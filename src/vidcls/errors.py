"""Every error vidcls raises on purpose derives from :class:`VidclsError`.

The CLI prints a ``VidclsError`` as one line and exits with status 2: it is something the user can
fix (an option, a file, a directory). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class VidclsError(Exception):
    """Base class: a problem with the user's input or environment; the message says how to fix it."""


class ConfigError(VidclsError, ValueError):
    """A config value or key the user must fix; the message names the option."""


class StoreError(VidclsError, ValueError):
    """A feature store file that is missing, damaged or inconsistent; the message names the file."""


class CheckpointError(VidclsError, RuntimeError):
    """A checkpoint that is missing, damaged or does not match the data it is used with."""


class BackboneError(VidclsError, ValueError):
    """A frame CNN that cannot be built: unknown name, missing weights file, wrong weights."""


class ExtractError(VidclsError, ValueError):
    """A video folder that cannot be turned into a feature store (layout, classes, options)."""


class RunLockedError(VidclsError):
    """Another process is writing into the same run or feature directory."""


class RankLostError(VidclsError, RuntimeError):
    """Under torchrun: the other ranks stopped answering (one died or hung); the job stops, resumable."""
