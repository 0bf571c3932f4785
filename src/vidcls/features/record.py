"""Reading a store's ``extractor`` record back: the weights to rebuild the frame encoder with (checked
against the recorded file, torchvision enum or weights fingerprint), and the frame sampling and quality filter."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BackboneError
from ..utils.fs import sha256_file
from .families import RANDOM_INIT_SEED, family_module, family_of
from .quality import FALLBACK_KEEP_SHARE, Quality
from .sampling import Sampling

__all__ = ["RANDOM_INIT_SEED", "plain", "recorded_weights", "selection_from_record"]


def plain(value: object) -> object:
    """A description value as JSON gives it back (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def recorded_weights(record: dict, weights: str | os.PathLike | None) -> str:
    """The ``weights`` argument that rebuilds the record's weights (see ``FrameEncoder.from_record``).

    Raises:
        BackboneError: weights given for a random network, a recorded file that is neither given nor
            at its recorded path, a file with other bytes than the recorded one.
    """
    backbone, recorded = record["backbone"], record.get("weights")
    given = None if weights is None else Path(weights)
    if given is not None and not given.is_file():
        raise BackboneError(
            f"--weights {given}: no such file; give the weights file the features were extracted with"
        )
    if recorded == "none":
        if given is not None:
            raise BackboneError(
                f"the features were extracted with a randomly initialised {backbone} "
                f"(--weights none); there are no weights to give, drop --weights {given}"
            )
        seed = record.get("random_init_seed", RANDOM_INIT_SEED)
        if seed != RANDOM_INIT_SEED:
            raise BackboneError(
                f"the features were extracted with a random {backbone} of seed {seed}; this "
                f"vidcls builds seed {RANDOM_INIT_SEED}: use the vidcls version that extracted them"
            )
        return "none"
    if recorded == "file":
        return str(_recorded_file(record, given))
    if family_of(record) == "torchvision":
        return family_module("torchvision").rebuild_weights(record, given)
    # timm / open_clip published weights: the download, or a local copy (checked by state_sha256 once loaded)
    return "DEFAULT" if given is None else str(given)


def _recorded_file(record: dict, given: Path | None) -> Path:
    """The weights file of a record made from one: ``given``, else the recorded path if still there."""
    backbone, name, sha = record["backbone"], record.get("weights_file"), record.get("weights_sha256") or ""
    wanted = f"{name} (sha256 {sha[:16]}...)"
    if given is None:
        at = Path(str(record.get("weights_path") or ""))
        if record.get("weights_path") and at.is_file() and sha and sha256_file(at) == sha:
            return at  # still where the features were extracted from, same bytes
        raise BackboneError(
            f"the features were extracted with {backbone} weights from {wanted}, which "
            f"is not given here; pass --weights PATH (Python: weights=PATH) with that file"
        )
    got = sha256_file(given)
    if sha and got != sha:
        raise BackboneError(
            f"--weights {given} has sha256 {got[:16]}... but the features were extracted "
            f"with {wanted}; other weights give other features, meaningless to the "
            f"run's model: pass --weights PATH with the same file"
        )
    return given


def selection_from_record(record: dict) -> tuple[Sampling, Quality]:
    """The frame sampling and quality filter an ``extractor`` record describes.

    Raises:
        BackboneError: the record lacks them, or uses a quality fallback this vidcls does not apply.
    """
    s, q = record.get("sampling"), record.get("quality")
    if not isinstance(s, dict) or not isinstance(q, dict):
        raise BackboneError(
            "the extractor record holds no frame sampling / quality settings; the features "
            "were not made by `vidcls extract`, so videos cannot be turned into the same features"
        )
    share = q.get("fallback_keep_share", FALLBACK_KEEP_SHARE)
    if share != FALLBACK_KEEP_SHARE:
        raise BackboneError(
            f"the features kept the best {share:.0%} of frames when all failed the quality "
            f"test; this vidcls keeps {FALLBACK_KEEP_SHARE:.0%}: use the version that extracted them"
        )
    max_frames = int(s.get("max_frames", 64))
    if s.get("mode") == "frames":
        sampling = Sampling(frames=int(s["frames"]), max_frames=max_frames)
    else:
        sampling = Sampling(fps=float(s["fps"]), max_frames=max_frames)
    return sampling, Quality(float(q.get("min_brightness", 25.0)), float(q.get("min_sharpness", 0.0)))
