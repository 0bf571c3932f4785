"""Frozen torchvision backbones as frame encoders: build, strip the classifier, preprocess, encode.

``FrameEncoder`` turns uint8 RGB frames into pooled CNN features. Extraction and (later) prediction
use the same object, so both preprocess and encode frames the same way:

- ``Preprocess`` is the backbone's own torchvision transform (resize, centre crop, ImageNet
  normalisation), split in two: ``geometry`` (resize + crop, uint8, done in the decode workers)
  and ``normalize`` (float, done next to the CNN). Composed, they equal ``weights.transforms()``.
- The classifier is removed: the head module (``fc`` / ``classifier`` / ``heads`` / ``head``) is
  cut at its first Linear layer, keeping what comes before it (dropout, convnext's LayerNorm), so
  the output is the pooled feature (efficientnet_v2_s 1280, resnet50 2048, mobilenet_v3_large 960).
- ``encode`` always runs batches of exactly ``batch_size`` frames (the last one zero-padded):
  CPU kernels may round differently for different batch sizes, but at a fixed size a frame's
  features do not depend on which other frames share its batch (tested), so features are
  reproducible whatever mix of videos a batch holds.
"""
from __future__ import annotations

import ctypes
import sys
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from ..errors import BackboneError
from ..utils.device import resolve_device
from ..utils.fs import sha256_file
from .record import RANDOM_INIT_SEED, plain, recorded_weights

HEAD_ATTRS = ("fc", "classifier", "heads", "head")
# description keys that decide the features besides backbone and weights: a rebuilt encoder must match them
# (the feature dimension is the caller's to check, against what its model was trained on)
RECORD_KEYS = ("image_size", "resize_size", "interpolation", "antialias", "mean", "std")


@dataclass(frozen=True)
class Preprocess:
    """The torchvision classification preset (``ImageClassification``) as two halves."""

    crop_size: int
    resize_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    antialias: bool = True

    @classmethod
    def from_weights(cls, entry, image_size: int | str | None = None) -> "Preprocess":
        """The preset of a torchvision weights entry; ``image_size`` rescales crop and resize.

        Args:
            entry: a torchvision ``WeightsEnum`` member (only its metadata is used: no download).
            image_size: crop size to use instead of the entry's (resize scales along), or None / "AUTO".

        Returns:
            Preprocess.
        """
        t = entry.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        if image_size is not None and str(image_size).upper() != "AUTO":
            try:
                size = int(image_size)
            except ValueError:
                size = 0
            if size < 8:
                raise BackboneError(f"--image-size must be an integer >= 8 or AUTO, got {image_size!r}")
            crop, resize = size, int(round(size * resize / crop))
        return cls(crop, resize, tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std),
                   InterpolationMode(t.interpolation).value, bool(t.antialias))

    def geometry(self, frames: torch.Tensor) -> torch.Tensor:
        """Resize the short side and centre-crop: uint8 (..., 3, H, W) -> uint8 (..., 3, S, S)."""
        frames = F.resize(frames, [self.resize_size], interpolation=InterpolationMode(self.interpolation),
                          antialias=self.antialias)
        return F.center_crop(frames, [self.crop_size])

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32, scaled to [0, 1] and normalised by mean/std."""
        return F.normalize(F.convert_image_dtype(frames, torch.float), mean=list(self.mean),
                           std=list(self.std))

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.geometry(frames))

    def describe(self) -> dict:
        return {"image_size": self.crop_size, "resize_size": self.resize_size,
                "interpolation": self.interpolation, "antialias": self.antialias,
                "mean": list(self.mean), "std": list(self.std)}


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

    def __init__(self, backbone: str = "efficientnet_v2_s", weights: str = "DEFAULT", *,
                 image_size: int | str | None = None, device: str = "auto", batch_size: int = 32):
        """Build the encoder.

        Args:
            backbone: any torchvision classification model name.
            weights: "DEFAULT" or another member of the model's weights enum (downloaded by
                torchvision), "none" (random, seeded with RANDOM_INIT_SEED), or a .pth state dict.
            image_size: crop size, or None / "AUTO" for the weights' own.
            device: "auto", "cpu", "cuda", "cuda:N".
            batch_size: frames per CNN batch (fixed: see the module docstring).

        Raises:
            BackboneError: unknown backbone or weights, unloadable weights, unusable device or
                image size; the message says what to use instead.
        """
        if int(batch_size) < 1:
            raise BackboneError(f"--batch-size must be >= 1, got {batch_size}")
        self.backbone, self.batch_size = backbone, int(batch_size)
        self.device = resolve_device(device)
        entry, kind, path = _resolve_weights(backbone, weights)
        model, weights_info = _build_model(backbone, kind, entry, path)
        self.preprocess = Preprocess.from_weights(entry, image_size)
        self.autocast = None
        if self.device.type == "cuda":
            self.autocast = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # channels_last: oneDNN's fast convolution layout on CPU (1.4x here), and tensor cores' on GPU
        self.model = model.eval().requires_grad_(False).to(self.device, memory_format=torch.channels_last)
        self.feature_dim = self._probe_dim()
        self.description = {"backbone": backbone, **weights_info, "feature_dim": self.feature_dim,
                            **self.preprocess.describe(), "torch": torch.__version__,
                            "torchvision": torchvision.__version__}

    def _probe_dim(self) -> int:
        s = self.preprocess.crop_size
        try:
            out = self._forward(torch.zeros(1, 3, s, s, dtype=torch.uint8))
        except RuntimeError as err:
            raise BackboneError(f"backbone {self.backbone} cannot run at image size {s} ({err}); "
                                f"use --image-size AUTO") from None
        if out.ndim != 2:
            raise BackboneError(f"backbone {self.backbone} gives outputs of shape {tuple(out.shape)}"
                                f" after removing its classifier, not one vector per frame")
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
            raise ValueError(f"encode expects uint8 frames of shape (N, 3, {s}, {s}), got "
                             f"{frames.dtype} {tuple(frames.shape)}; pass them through preprocess.geometry")
        out = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch_size - n, *chunk.shape[1:]))])
            out.append(self._forward(chunk)[:n])
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)


    @classmethod
    def from_record(cls, record: dict, weights: str | Path | None = None, *, device: str = "auto",
                    batch_size: int = 32) -> "FrameEncoder":
        """Rebuild exactly the encoder a feature store's ``extractor`` record describes.

        Args:
            record: the store's (or a checkpoint's) ``extractor`` dict.
            weights: a local .pth to use for the recorded weights: required when they were a file
                (its sha256 must be the recorded one), optional for torchvision weights (a copy of
                the published file; its sha256 must start with the published hash prefix), refused
                for random weights (``none``, nothing to load).
            device: where to run it. batch_size: frames per CNN batch.

        Returns:
            The FrameEncoder; on CUDA it runs in the precision the record names (float32 when the
            features were extracted on CPU).

        Raises:
            BackboneError: the record names no frame CNN (synthetic or imported features), weights
                that are not on this machine or a file with other bytes (the message says to pass
                ``--weights PATH.pth``), or the rebuilt encoder differs from the record (image
                size, normalisation).
        """
        backbone = record.get("backbone")
        if not backbone or backbone not in torchvision.models.list_models(module=torchvision.models):
            raise BackboneError(f"the features were made by {backbone or 'an unrecorded extractor'!s}, not by a "
                                f"torchvision frame CNN vidcls can run on videos; give feature arrays instead, "
                                f"or train on features from `vidcls extract`")
        spec = recorded_weights(record, weights)
        try:
            encoder = cls(backbone, spec, image_size=record.get("image_size"), device=device, batch_size=batch_size)
        except BackboneError:
            if weights is not None or spec == "none":
                raise
            name = torchvision.models.get_model_weights(backbone)[spec].url.rsplit("/", 1)[-1]
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            if (cache / name).is_file():
                raise  # the weights are there: something else failed
            raise BackboneError(f"the features were extracted with the {record.get('weights')} weights of "
                                f"{backbone}, which are not on this machine and could not be downloaded; copy "
                                f"{name} into {cache} or pass --weights PATH.pth (Python: weights=PATH) "
                                f"with that file") from None
        diff = [f"{k}: {record[k]!r} recorded, {encoder.description[k]!r} rebuilt" for k in RECORD_KEYS
                if k in record and plain(record[k]) != plain(encoder.description[k])]
        if diff:
            raise BackboneError(f"the {backbone} encoder rebuilt from the extractor record does not match it "
                                f"({'; '.join(diff)}); nothing is patched over: use the vidcls/torchvision "
                                f"versions the features were extracted with ({record.get('torchvision')})")
        if encoder.device.type == "cuda":
            half = {"bfloat16": torch.bfloat16, "float16": torch.float16}
            encoder.autocast = half.get(str(record.get("precision", "float32")))
        return encoder


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


def _resolve_weights(backbone: str, weights: str):
    """(weights entry for the preset, kind "torchvision" | "none" | "file", path or None)."""
    known = torchvision.models.list_models(module=torchvision.models)  # classification only
    if backbone not in known:
        raise BackboneError(f"unknown backbone {backbone!r}; torchvision classification models: "
                            f"{', '.join(known)}")
    enum = torchvision.models.get_model_weights(backbone)
    w = str(weights)
    if w.lower() == "none":
        return enum.DEFAULT, "none", None
    if w in enum.__members__:
        return enum[w], "torchvision", None
    path = Path(w)
    if path.suffix in (".pth", ".pt") or path.exists():
        if not path.is_file():
            raise BackboneError(f"--weights {w}: no such file; give a .pth state dict of "
                                f"{backbone}, DEFAULT or none")
        return enum.DEFAULT, "file", path
    raise BackboneError(f"--weights {w!r} for {backbone}: use DEFAULT, none, one of "
                        f"{', '.join(enum.__members__)} or the path of a .pth state dict")


def _build_model(backbone: str, kind: str, entry, path: Path | None) -> tuple[nn.Module, dict]:
    """The model without its classifier, and the weights part of the description."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet/inception warn about their default init
        if kind == "torchvision":
            try:
                model = torchvision.models.get_model(backbone, weights=entry)
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                raise BackboneError(
                    f"cannot get the {entry} weights of {backbone} ({err}). Without internet, copy "
                    f"the file into the torch hub cache ({torch.hub.get_dir()}/checkpoints), or pass"
                    f" --weights PATH.pth, or --weights none for a random network") from None
            strip_classifier(model)
            return model, {"weights": f"{type(entry).__name__}.{entry.name}"}
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
            torch.manual_seed(RANDOM_INIT_SEED)
            model = torchvision.models.get_model(backbone, weights=None)
    removed = strip_classifier(model)
    if kind == "none":
        return model, {"weights": "none", "random_init_seed": RANDOM_INIT_SEED}
    _load_state_dict(model, path, removed, backbone)
    return model, {"weights": "file", "weights_file": path.name, "weights_sha256": sha256_file(path)}


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
        raise BackboneError(f"cannot find the classifier of {type(model).__name__} (no child "
                            f"named {', '.join(HEAD_ATTRS)}); choose another backbone")
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
    raise BackboneError(f"cannot remove the classifier of {type(model).__name__} ({name} is a "
                        f"{type(head).__name__}); choose another backbone")


def _load_state_dict(model: nn.Module, path: Path, removed: list[str], backbone: str) -> None:
    """Load a local state dict into the classifier-less model; the old head's keys are ignored."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean the same to the user
        raise BackboneError(f"--weights {path}: not a loadable PyTorch state dict ({err}); save "
                            f"one with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model_state_dict", "model_state", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]  # a training checkpoint that wraps the state dict
            break
    if not isinstance(state, dict):
        raise BackboneError(f"--weights {path}: holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    state = {k: v for k, v in state.items() if not any(k == p or k.startswith(p + ".") for p in removed)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise BackboneError(f"--weights {path} does not fit {backbone}: {err}") from None
    if missing or unexpected:
        raise BackboneError(f"--weights {path} does not fit {backbone}: missing keys "
                            f"{list(missing)[:5]}, unexpected keys {list(unexpected)[:5]}; is it a "
                            f"{backbone} state dict?")
