"""Reading a store's ``extractor`` record back: the weights to rebuild the frame CNN with (checked
against the recorded file or torchvision enum), and the frame sampling and quality filter."""
from __future__ import annotations

import re
from pathlib import Path

import torchvision

from ..errors import BackboneError
from ..utils.fs import sha256_file
from .quality import FALLBACK_KEEP_SHARE, Quality
from .video import Sampling

RANDOM_INIT_SEED = 0  # --weights none: every process builds the same random network


def plain(value):
    """A description value as JSON gives it back (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def recorded_weights(record: dict, weights) -> str:
    """The ``weights`` argument that rebuilds the record's weights (see ``FrameEncoder.from_record``)."""
    backbone, recorded = record["backbone"], record.get("weights")
    given = None if weights is None else Path(weights)
    if given is not None and not given.is_file():
        raise BackboneError(f"--weights {given}: no such file; give the .pth the features were extracted with")
    if recorded == "none":
        if given is not None:
            raise BackboneError(f"the features were extracted with a randomly initialised {backbone} "
                                f"(--weights none); there are no weights to give, drop --weights {given}")
        seed = record.get("random_init_seed", RANDOM_INIT_SEED)
        if seed != RANDOM_INIT_SEED:
            raise BackboneError(f"the features were extracted with a random {backbone} of seed {seed}; this "
                                f"vidcls builds seed {RANDOM_INIT_SEED}: use the vidcls version that extracted them")
        return "none"
    if recorded == "file":
        name, sha = record.get("weights_file"), record.get("weights_sha256") or ""
        wanted = f"{name} (sha256 {sha[:16]}...)"
        if given is None:
            raise BackboneError(f"the features were extracted with {backbone} weights from {wanted}, which "
                                f"is not given here; pass --weights PATH.pth (Python: weights=PATH) with that file")
        got = sha256_file(given)
        if sha and got != sha:
            raise BackboneError(f"--weights {given} has sha256 {got[:16]}... but the features were extracted "
                                f"with {wanted}; other weights give other features, meaningless to the "
                                f"run's model: pass --weights PATH.pth with the same file")
        return str(given)
    enum_name, _, member = str(recorded).partition(".")
    enum = torchvision.models.get_model_weights(backbone)
    if enum_name != enum.__name__ or member not in enum.__members__:
        raise BackboneError(f"the extractor record names weights {recorded!r}, unknown to this torchvision "
                            f"for {backbone}; use the versions that extracted the features "
                            f"({record.get('torchvision')}) or pass --weights PATH.pth")
    if given is None:
        return member  # torchvision's cache (or a download); offline without it the error names --weights
    prefix = re.search(r"-([0-9a-f]{6,})\.pth?$", enum[member].url)
    got = sha256_file(given)
    if prefix and not got.startswith(prefix.group(1)):
        raise BackboneError(f"--weights {given} (sha256 {got[:16]}...) is not {recorded} (published file "
                            f"{enum[member].url.rsplit('/', 1)[-1]}); pass --weights PATH.pth with that file")
    return str(given)


def selection_from_record(record: dict) -> tuple[Sampling, Quality]:
    """The frame sampling and quality filter an ``extractor`` record describes.

    Raises:
        BackboneError: the record lacks them, or uses a quality fallback this vidcls does not apply.
    """
    s, q = record.get("sampling"), record.get("quality")
    if not isinstance(s, dict) or not isinstance(q, dict):
        raise BackboneError("the extractor record holds no frame sampling / quality settings; the features "
                            "were not made by `vidcls extract`, so videos cannot be turned into the same features")
    share = q.get("fallback_keep_share", FALLBACK_KEEP_SHARE)
    if share != FALLBACK_KEEP_SHARE:
        raise BackboneError(f"the features kept the best {share:.0%} of frames when all failed the quality "
                            f"test; this vidcls keeps {FALLBACK_KEEP_SHARE:.0%}: use the version that extracted them")
    max_frames = int(s.get("max_frames", 64))
    if s.get("mode") == "frames":
        sampling = Sampling(frames=int(s["frames"]), max_frames=max_frames)
    else:
        sampling = Sampling(fps=float(s["fps"]), max_frames=max_frames)
    return sampling, Quality(float(q.get("min_brightness", 25.0)), float(q.get("min_sharpness", 0.0)))
