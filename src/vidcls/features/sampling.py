"""Which times of a video to take frames from (``--fps`` / ``--frames`` / ``--max-frames``).

- ``Sampling(fps=1.0)``: t = 0, 1/fps, 2/fps, ... < duration.
- ``Sampling(frames=N)``: the centres of N equal segments of the video.
- Either way, more than ``max_frames`` times are thinned to ``max_frames`` spread uniformly over
  the whole video (not the first ``max_frames / fps`` seconds).

The frame used for each time is chosen by the decoder (:mod:`vidcls.features.video`). Nothing here
imports torch: this module runs in the decode worker processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..utils.sampling import uniform_indices


@dataclass(frozen=True)
class Sampling:
    """Which times of a video to take frames from (see the module docstring).

    Raises:
        ConfigError: both fps and frames given, or a value out of range.
    """

    fps: float | None = None
    frames: int | None = None
    max_frames: int = 64

    def __post_init__(self) -> None:
        if self.fps is None and self.frames is None:
            object.__setattr__(self, "fps", 1.0)
        if self.fps is not None and self.frames is not None:
            raise ConfigError("give either --fps or --frames, not both")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"--fps must be a positive number, got {self.fps}")
        if self.frames is not None and int(self.frames) < 1:
            raise ConfigError(f"--frames must be >= 1, got {self.frames}")
        if int(self.max_frames) < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {self.max_frames}")

    def times(self, duration_s: float | None) -> np.ndarray:
        """Sampled times in seconds, ascending; empty when the duration is unknown or <= 0.

        Args:
            duration_s: the video's duration.

        Returns:
            (n,) float64 array, n <= max_frames.
        """
        if duration_s is None or not duration_s > 0:
            return np.zeros(0)
        if self.frames is not None:
            n = min(int(self.frames), int(self.max_frames))
            return (np.arange(n) + 0.5) * (duration_s / n)
        assert self.fps is not None  # __post_init__ sets it when frames is None
        n = max(1, int(math.ceil(duration_s * self.fps - 1e-9)))  # k / fps < duration
        return uniform_indices(n, int(self.max_frames)) / self.fps  # thinned over the whole video

    def describe(self) -> dict:
        if self.frames is not None:
            return {"mode": "frames", "frames": int(self.frames), "max_frames": int(self.max_frames)}
        assert self.fps is not None  # __post_init__ sets it when frames is None
        return {"mode": "fps", "fps": float(self.fps), "max_frames": int(self.max_frames)}
