"""What a loaded run needs beside its models: the frame encoder of its extractor, whether its
calibration fits what it serves, its sampling rate and typical window, and a whole video's features
at that rate (for segments)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BackboneError, CheckpointError
from . import verdict

if TYPE_CHECKING:
    import torch

    from ..features.backbone import FrameEncoder
    from ..features.quality import Quality
    from ..features.sampling import Sampling

# extractor records written by this vidcls carry this rule (features/extract.py FRAME_RULE)
FRAME_RULE_KEY = "frame_rule"


def build_encoder(
    extractor: dict, weights: str | os.PathLike | None, device: torch.device, feature_dim: int
) -> FrameEncoder:
    """The frame CNN of the run's ``extractor`` record.

    Raises:
        BackboneError: another frame rule, or the recorded weights are not on this machine.
        CheckpointError: the encoder gives features of another dimension than ``feature_dim``.
    """
    from ..features.backbone import FrameEncoder
    from ..features.extract import FRAME_RULE

    rule = extractor.get(FRAME_RULE_KEY)
    if rule is not None and rule != FRAME_RULE:
        raise BackboneError(
            f"the run's features took frames by the rule {rule!r}; this vidcls "
            f"takes {FRAME_RULE!r}: use the vidcls version that extracted them"
        )
    encoder = FrameEncoder.from_record(
        extractor, None if weights is None else Path(weights), device=str(device)
    )
    if encoder.feature_dim != feature_dim:
        raise CheckpointError(
            f"the run was trained on {feature_dim}-dimensional features but its "
            f"recorded extractor ({extractor.get('backbone')}) gives "
            f"{encoder.feature_dim}-dimensional ones; nothing is patched over: "
            f"predict from the run's own kind of features"
        )
    return encoder


def usable_calibration(
    calibration: dict | None,
    run_dir: str | os.PathLike,
    *,
    task: str,
    members: Sequence[int],
    views: Sequence[str],
) -> tuple[dict | None, str, str | None]:
    """(the calibration, or None when there is none or it was fitted on other members or views
    than served; the trust reason to give without one; the warning to log then)."""
    if not calibration:
        return (None, *verdict.not_calibrated(run_dir))
    fitted = (calibration.get("members", list(members)), calibration.get("views", list(views)))
    if calibration.get("task", "single") != task:
        why = f"calibration.json was fitted for a {calibration.get('task', 'single')} run, not {task}"
        return (None, *verdict.not_calibrated(run_dir, why))
    if list(fitted[0]) != list(members) or list(fitted[1]) != list(views):
        why = (
            f"calibration.json was fitted for members {list(fitted[0])} with views {list(fitted[1])}, "
            f"this predictor serves members {list(members)} with views {list(views)}"
        )
        return (None, *verdict.not_calibrated(run_dir, why))
    return calibration, "", None


def sampling_rate(extractor: dict) -> float | None:
    """The frames per second the run's features were sampled at (None: N frames per video, or imported)."""
    sampling = extractor.get("sampling") or {}
    if sampling.get("mode", "fps") != "fps" or not sampling.get("fps"):
        return None
    return float(sampling["fps"])


def run_window(checkpoint: dict) -> tuple[float, str]:
    """(length, unit "s" | "frames") of the window the run was trained on (checkpoint "window",
    :mod:`vidcls.data.window`): its seconds when known, else frames; runs older than the record: its
    ``max_frames`` (else 64) frames."""
    window = checkpoint.get("window") or {}
    if window.get("seconds"):
        return float(window["seconds"]), "s"
    frames = window.get("frames") or checkpoint.get("max_frames") or 64
    return float(int(frames)), "frames"


def stream_video(
    path: str | os.PathLike, encoder: FrameEncoder, sampling: Sampling, quality: Quality
) -> dict:
    """{"features" (T, D), "timestamps_ms" (T,), "decode_s", "features_s"} of the whole video at the
    sampling's rate (no frame cap: the caller's windows are thinned each), streamed so that memory
    holds the features, never the decoded video.

    Raises:
        ConfigError: the run samples N frames per video, not at a rate. VidclsError: the video cannot be read.
    """
    from ..errors import ConfigError
    from ..features.stream import stream_features

    if sampling.fps is None:
        raise ConfigError(
            f"{path}: the run's features took {sampling.frames} frames per video, not frames at a rate, so "
            f"a video cannot be cut into windows of its features; extract at a rate (--fps) to use --segments"
        )
    t0 = time.perf_counter()
    feats, stamps = [], []
    for chunk in stream_features(path, encoder, fps=float(sampling.fps), quality=quality):
        feats.append(chunk.features)
        stamps.append(chunk.timestamps_ms)
    if not feats:
        from ..errors import ExtractError

        raise ExtractError(f"{path}: no usable frame (all too dark or blurry, or none decoded)")
    features = np.concatenate(feats)
    return {
        "features": features,
        "timestamps_ms": np.concatenate(stamps),
        "decode_s": 0.0,  # decoding and the CNN run interleaved: their time is features_s
        "features_s": time.perf_counter() - t0,
    }
