"""Frame preprocessing of every encoder family, as two halves: ``geometry`` (resize + crop, uint8,
done in the decode workers) and ``normalize`` (float, done next to the encoder).

One class serves the three families, built from each one's own description of its input:
torchvision's weights preset (``ImageClassification``), timm's data config (``input_size``,
``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``) and open_clip's
``preprocess_cfg`` (``size``, ``interpolation``, ``resize_mode``, ``mean``, ``std``). It runs on
uint8 tensors (torchvision's tensor resize, antialiased), not on PIL images: on real videos the
features agree with the libraries' own PIL transforms to cosine > 0.999 (tested), and decoding
workers never convert frames to PIL and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.models import WeightsEnum
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from ..errors import BackboneError

CROP_MODES = ("center", "squash")  # center: short side to resize_size, centre crop; squash: both sides


def parse_image_size(image_size: int | str | None) -> int | None:
    """``--image-size``: an integer >= 8, or None for AUTO (the encoder's own).

    Raises:
        BackboneError: anything else.
    """
    if image_size is None or str(image_size).upper() == "AUTO":
        return None
    try:
        size = int(str(image_size))
    except ValueError:
        size = 0
    if size < 8:
        raise BackboneError(f"--image-size must be an integer >= 8 or AUTO, got {image_size!r}")
    return size


@dataclass(frozen=True)
class Preprocess:
    """Resize, centre crop and normalise, as the encoder was trained to see images."""

    crop_size: int
    resize_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    antialias: bool = True
    crop_mode: str = "center"

    @classmethod
    def from_weights(cls, entry: WeightsEnum, image_size: int | str | None = None) -> Preprocess:
        """The preset of a torchvision weights entry; ``image_size`` rescales crop and resize.

        Args:
            entry: a torchvision ``WeightsEnum`` member (only its metadata is used: no download).
            image_size: crop size to use instead of the entry's (resize scales along), or None / "AUTO".
        """
        t = entry.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        size = parse_image_size(image_size)
        if size is not None:
            crop, resize = size, int(round(size * resize / crop))
        return cls(
            crop,
            resize,
            tuple(float(v) for v in t.mean),
            tuple(float(v) for v in t.std),
            InterpolationMode(t.interpolation).value,
            bool(t.antialias),
        )

    @classmethod
    def from_timm(cls, config: dict, name: str) -> Preprocess:
        """timm's eval transform (``transforms_imagenet_eval``) for a resolved data config.

        Raises:
            BackboneError: a non-square input size or a crop mode other than center / squash.
        """
        _, height, width = config["input_size"]
        mode = config.get("crop_mode") or "center"
        if height != width or mode not in CROP_MODES:
            raise BackboneError(
                f"timm:{name} expects {height}x{width} inputs with crop mode {mode!r}; vidcls "
                f"feeds square frames (crop mode center or squash): give --image-size N"
            )
        crop_pct = float(config.get("crop_pct") or 0.875)
        return cls(
            int(height),
            math.floor(height / crop_pct),
            tuple(float(v) for v in config["mean"]),
            tuple(float(v) for v in config["std"]),
            _interpolation(config.get("interpolation")),
            True,
            mode,
        )

    @classmethod
    def from_open_clip(cls, config: dict, name: str) -> Preprocess:
        """open_clip's eval transform (``image_transform_v2`` with is_train False).

        Raises:
            BackboneError: a non-square size or the ``longest`` resize mode (pads, vidcls crops).
        """
        size = config["size"]
        height, width = (size, size) if isinstance(size, int) else size
        mode = {"shortest": "center", "squash": "squash"}.get(config.get("resize_mode") or "shortest")
        if height != width or mode is None:
            raise BackboneError(
                f"open_clip:{name} expects {height}x{width} inputs resized by "
                f"{config.get('resize_mode')!r}; vidcls feeds square centre crops: choose "
                f"another model or --image-size N"
            )
        return cls(
            int(height),
            int(height),
            tuple(float(v) for v in config["mean"]),
            tuple(float(v) for v in config["std"]),
            _interpolation(config.get("interpolation")),
            True,
            mode,
        )

    def geometry(self, frames: torch.Tensor) -> torch.Tensor:
        """Resize (short side, or both with squash) and centre-crop: uint8 (..., 3, H, W) -> (..., 3, S, S)."""
        size = [self.resize_size] if self.crop_mode == "center" else [self.resize_size, self.resize_size]
        frames = F.resize(
            frames, size, interpolation=InterpolationMode(self.interpolation), antialias=self.antialias
        )
        return F.center_crop(frames, [self.crop_size])

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32, scaled to [0, 1] and normalised by mean/std."""
        return F.normalize(
            F.convert_image_dtype(frames, torch.float), mean=list(self.mean), std=list(self.std)
        )

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.geometry(frames))

    def describe(self) -> dict:
        """The preprocessing keys of the extractor record (crop_mode only when not the centre crop, so a
        torchvision record reads as the previous release wrote it)."""
        out = {
            "image_size": self.crop_size,
            "resize_size": self.resize_size,
            "interpolation": self.interpolation,
            "antialias": self.antialias,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        return out if self.crop_mode == "center" else {**out, "crop_mode": self.crop_mode}


def _interpolation(name: object) -> str:
    name = str(name or "bicubic").lower()
    if name not in ("bilinear", "bicubic", "nearest"):
        name = "bicubic"  # timm's "random" (training only) and unknown modes: its eval default
    return InterpolationMode(name).value
