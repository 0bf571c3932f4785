"""Frozen image encoders as frame encoders: build by family, preprocess, encode.

``FrameEncoder`` turns uint8 RGB frames into one feature vector each. Extraction, prediction and
the service use the same object, so they preprocess and encode frames the same way. Three
families build the network (:mod:`vidcls.features.families`):

- torchvision classification models by plain name (``efficientnet_v2_s``), classifier cut at its
  first Linear layer (efficientnet_v2_s 1280, resnet50 2048, mobilenet_v3_large 960);
- timm models as ``timm:NAME`` (``timm:vit_small_patch14_dinov2.lvd142m``), pre-logits features;
- open_clip image towers as ``open_clip:ARCH/TAG`` (``open_clip:ViT-B-32/openai``), the projected
  ``encode_image`` embedding (optional extra).

Each family gives its own preprocessing (:class:`vidcls.features.preprocess.Preprocess`, split
into a uint8 ``geometry`` half for the decode workers and a float ``normalize`` half). Loaded
weights are checked finite and fingerprinted (``state_sha256``), so an encoder rebuilt from a
store's record is known to be the one that made its features.

``encode`` always runs batches of exactly ``batch_size`` frames (the last one zero-padded): CPU
kernels may round differently for different batch sizes, but at a fixed size a frame's features do
not depend on which other frames share its batch (tested), so features are reproducible whatever
mix of videos a batch holds.
"""

from __future__ import annotations

import ctypes
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torchvision

from ..errors import BackboneError
from ..utils.device import resolve_device
from .families import family_module, family_of, split_spec
from .families.tv import strip_classifier
from .preprocess import Preprocess
from .record import plain, recorded_weights
from .weights import check_finite, state_sha256, weights_kind

__all__ = ["FrameEncoder", "Preprocess", "keep_freed_memory", "strip_classifier"]

# description keys that decide the features besides backbone and weights: a rebuilt encoder must match them
# (the feature dimension is the caller's to check, against what its model was trained on)
RECORD_KEYS = (
    "image_size",
    "resize_size",
    "interpolation",
    "antialias",
    "mean",
    "std",
    "crop_mode",
    "pooling",
    "state_sha256",
)


class FrameEncoder:
    """A frozen, classifier-less torchvision model: uint8 frames in, pooled features out.

    Attributes:
        backbone: model name. model: the nn.Module (eval, no grad). preprocess: Preprocess.
        feature_dim: D. device: torch.device. batch_size: frames per CNN batch.
        autocast: torch dtype of CUDA autocast, or None (float32). description: JSON-able dict
        of everything that determines the features (for the store's ``extractor`` attribute).

    On CPU, a process that does mostly this should call ``keep_freed_memory()`` first (``extract``
    does): about 2.5x the throughput for efficientnet_v2_s at 384 px.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_v2_s",
        weights: str = "DEFAULT",
        *,
        image_size: int | str | None = None,
        device: str = "auto",
        batch_size: int = 32,
    ):
        """Build the encoder.

        Args:
            backbone: a torchvision classification model name, ``timm:NAME`` or ``open_clip:ARCH/TAG``.
            weights: "DEFAULT" (torchvision's enum default, timm's pretrained tag, open_clip's TAG: a
                download), a torchvision enum member, "none" (random, seeded with RANDOM_INIT_SEED), or
                a local state dict (.pth / .pt / .safetensors).
            image_size: crop size, or None / "AUTO" for the encoder's own.
            device: "auto", "cpu", "cuda", "cuda:N".
            batch_size: frames per encoder batch (fixed: see the module docstring).

        Raises:
            BackboneError: unknown backbone or weights, unloadable, misfitting or non-finite weights,
                a missing optional package, unusable device or image size; the message says what to
                use instead.
        """
        if int(batch_size) < 1:
            raise BackboneError(f"--batch-size must be >= 1, got {batch_size}")
        self.backbone, self.batch_size = str(backbone), int(batch_size)
        family, name = split_spec(self.backbone)
        self.device = resolve_device(device)
        built = family_module(family).build(name, weights, image_size)
        # a local file was checked as read, by its own names
        if weights_kind(weights)[0] in ("default", "name"):
            check_finite(
                built.model if built.weights_module is None else built.weights_module,
                f"the {weights} weights of {self.backbone}",
            )
        self.preprocess = built.preprocess
        self.autocast = None
        if self.device.type == "cuda":
            self.autocast = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # channels_last: oneDNN's fast convolution layout on CPU (1.4x here), and tensor cores' on GPU
        self.model = (
            built.model.eval().requires_grad_(False).to(self.device, memory_format=torch.channels_last)
        )
        self.feature_dim = self._probe_dim()
        fingerprint = {} if family == "torchvision" else {"state_sha256": state_sha256(self.model)}
        self.description = {
            "backbone": self.backbone,
            "family": family,
            **built.info,
            **fingerprint,
            "feature_dim": self.feature_dim,
            **self.preprocess.describe(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        }

    def _probe_dim(self) -> int:
        s = self.preprocess.crop_size
        try:
            out = self._forward(torch.zeros(1, 3, s, s, dtype=torch.uint8))
        except RuntimeError as err:
            raise BackboneError(
                f"backbone {self.backbone} cannot run at image size {s} ({err}); use --image-size AUTO"
            ) from None
        if out.ndim != 2:
            raise BackboneError(
                f"backbone {self.backbone} gives outputs of shape {tuple(out.shape)}"
                f" after removing its classifier, not one vector per frame"
            )
        return int(out.shape[1])

    @property
    def precision(self) -> str:
        return "float32" if self.autocast is None else str(self.autocast).replace("torch.", "")

    def _forward(self, frames: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            x = frames.to(self.device, non_blocking=True)
            x = self.preprocess.normalize(x).contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast("cuda", dtype=self.autocast) if self.autocast else nullcontext()
            with ctx:
                y = self.model(x)
            return y.float().cpu().numpy()

    def encode(self, frames: torch.Tensor) -> np.ndarray:
        """Features of ``frames``, computed in zero-padded batches of exactly ``batch_size``.

        Args:
            frames: uint8 (N, 3, S, S), already through ``preprocess.geometry``.

        Returns:
            (N, feature_dim) float32.
        """
        s = self.preprocess.crop_size
        if frames.dtype != torch.uint8 or frames.ndim != 4 or tuple(frames.shape[1:]) != (3, s, s):
            raise ValueError(
                f"encode expects uint8 frames of shape (N, 3, {s}, {s}), got "
                f"{frames.dtype} {tuple(frames.shape)}; pass them through preprocess.geometry"
            )
        out = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch_size - n, *chunk.shape[1:]))])
            out.append(self._forward(chunk)[:n])
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

    @classmethod
    def from_record(
        cls, record: dict, weights: str | Path | None = None, *, device: str = "auto", batch_size: int = 32
    ) -> FrameEncoder:
        """Rebuild exactly the encoder a feature store's ``extractor`` record describes.

        Args:
            record: the store's (or a checkpoint's) ``extractor`` dict.
            weights: a local weights file to use for the recorded weights: needed when they were a
                file no longer at its recorded path (its sha256 must be the recorded one), optional for
                published weights (torchvision: its sha256 must start with the published hash prefix;
                timm / open_clip: the loaded tensors must give the recorded ``state_sha256``), refused
                for random weights (``none``, nothing to load).
            device: where to run it. batch_size: frames per encoder batch.

        Returns:
            The FrameEncoder; on CUDA it runs in the precision the record names (float32 when the
            features were extracted on CPU).

        Raises:
            BackboneError: the record names no frame encoder (synthetic or imported features), weights
                that are not on this machine or a file with other bytes (the message says to pass
                ``--weights PATH``), or the rebuilt encoder differs from the record (preprocessing,
                pooling, weights fingerprint).
        """
        family = family_of(record)
        backbone = record.get("backbone")
        if family is None:
            raise BackboneError(
                f"the features were made by {backbone or 'an unrecorded extractor'!s}, not by a "
                f"frame encoder vidcls can run on videos; give feature arrays instead, "
                f"or train on features from `vidcls extract`"
            )
        spec = recorded_weights(record, weights)
        try:  # str(): __init__ makes the backbone a str anyway
            encoder = cls(
                str(backbone), spec, image_size=record.get("image_size"), device=device, batch_size=batch_size
            )
        except BackboneError:
            hint = None  # torchvision's enum weights, neither cached nor downloadable: say where they go
            if weights is None and family == "torchvision" and record.get("weights") not in ("none", "file"):
                hint = family_module(family).download_hint(record)
            if hint is None:
                raise
            raise BackboneError(hint) from None
        _check_rebuilt(record, encoder)
        if encoder.device.type == "cuda":
            half = {"bfloat16": torch.bfloat16, "float16": torch.float16}
            encoder.autocast = half.get(str(record.get("precision", "float32")))
        return encoder


def _check_rebuilt(record: dict, encoder: FrameEncoder) -> None:
    """Refuse an encoder rebuilt from ``record`` whose description differs from it: nothing is patched over."""
    diff = [
        f"{k}: {record[k]!r} recorded, {encoder.description.get(k)!r} rebuilt"
        for k in RECORD_KEYS
        if k in record and plain(record[k]) != plain(encoder.description.get(k))
    ]
    if diff:
        raise BackboneError(
            f"the {record.get('backbone')} encoder rebuilt from the extractor record does not match it "
            f"({'; '.join(diff)}); nothing is patched over: use the weights and the "
            f"library versions the features were extracted with "
            f"({_versions(record)})"
        )


def _versions(record: dict) -> str:
    return ", ".join(
        f"{k} {record[k]}" for k in ("torch", "torchvision", "timm", "open_clip") if record.get(k)
    )


def keep_freed_memory() -> bool:
    """Make glibc keep freed large buffers in the process instead of unmapping them (Linux).

    glibc serves every allocation above its mmap threshold (32 MiB at most by default) with fresh
    pages and unmaps them on free, so each layer of a CPU batch page-faults its activations anew.
    On the 2-core development machine efficientnet_v2_s at 384 px, batch 32, ran at 7.8 frames/s
    with 14 of 32 CPU-seconds spent in the kernel; with the mmap threshold at 1 GiB and the trim
    threshold at 2 GiB it runs at 20 frames/s. The price: the process keeps its peak heap size.

    Returns:
        Whether the settings were applied (False on other C libraries / platforms).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: leave the allocator alone
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))
