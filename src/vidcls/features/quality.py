"""Frame quality: drop dark and blurry frames, but never every frame of a video.

Quality is measured on the frame as the CNN sees it (after resize and centre crop), which is
cheaper than the full frame and makes ``--min-sharpness`` mean the same at every video resolution.

Nothing here imports torch: this module runs in the decode worker processes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError

FALLBACK_KEEP_SHARE = 0.5  # if every frame fails the quality test, keep this best share (>= 1)


@dataclass(frozen=True)
class Quality:
    """Frame quality thresholds: mean brightness (0-255) and variance of the Laplacian.

    Raises:
        ConfigError: a threshold that is negative or not finite.
    """

    min_brightness: float = 25.0
    min_sharpness: float = 0.0

    def __post_init__(self) -> None:
        for name in ("min_brightness", "min_sharpness"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")

    def measure(self, chw: np.ndarray) -> tuple[float, float | None]:
        """(brightness, sharpness) of one (3, H, W) uint8 frame; sharpness only if it is used."""
        return brightness(chw), (sharpness(chw) if self.min_sharpness > 0 else None)

    def select(self, bright: npt.ArrayLike, sharp: npt.ArrayLike | None) -> tuple[np.ndarray, dict]:
        """Which frames to keep. Never none: if all fail, the best ``FALLBACK_KEEP_SHARE`` stay.

        Args:
            bright: (n,) brightness per frame. sharp: (n,) sharpness, or None when not measured.

        Returns:
            (keep, counts): a boolean mask and {frames_dropped_dark, frames_dropped_blurry,
            quality_fallback}.
        """
        bright = np.asarray(bright, np.float64)
        dark = bright < self.min_brightness
        blurry = np.zeros_like(dark)
        if self.min_sharpness > 0 and sharp is not None:
            blurry = (np.asarray(sharp, np.float64) < self.min_sharpness) & ~dark
        keep = ~(dark | blurry)
        fallback = bool(len(keep) and not keep.any())
        if fallback:
            score = self._score(bright, sharp)
            k = max(1, int(math.ceil(FALLBACK_KEEP_SHARE * len(keep))))
            keep[np.argsort(-score, kind="stable")[:k]] = True
        return keep, {
            "frames_dropped_dark": int((dark & ~keep).sum()),
            "frames_dropped_blurry": int((blurry & ~keep).sum()),
            "quality_fallback": fallback,
        }

    def _score(self, bright: np.ndarray, sharp: npt.ArrayLike | None) -> np.ndarray:
        # Each enabled criterion as a share of its threshold; a frame is as good as its worst one.
        parts = []
        if self.min_brightness > 0:
            parts.append(bright / self.min_brightness)
        if self.min_sharpness > 0 and sharp is not None:
            parts.append(np.asarray(sharp, np.float64) / self.min_sharpness)
        return np.min(parts, axis=0) if parts else np.ones_like(bright)

    def describe(self) -> dict:
        return {**asdict(self), "fallback_keep_share": FALLBACK_KEEP_SHARE}


def brightness(chw: np.ndarray) -> float:
    """Mean luma (ITU-R BT.601 weights, 0-255) of a (3, H, W) uint8 RGB frame."""
    means = np.asarray(chw).reshape(3, -1).mean(axis=1)  # the mean is linear: weight channel means
    return float(0.299 * means[0] + 0.587 * means[1] + 0.114 * means[2])


def sharpness(chw: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the luma of a (3, H, W) uint8 RGB frame, over
    the interior pixels."""
    c = np.asarray(chw, dtype=np.float32)
    g = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return float(lap.var())
