"""The work of one uploaded video on an inference thread: check that it is a video, predict it (with
sliding windows when ``segments=`` was given), add thumbnails."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from ..errors import VidclsError
from ..features.video import VideoSkip, open_video
from .segments import WindowParams, param_message
from .thumbnails import frame_thumbnails

log = logging.getLogger("vidcls.serve")

NOT_A_VIDEO = {"cannot_open", "no_video_stream"}  # VideoSkip codes answered with 415


class _Segmenting(Protocol):
    def predict_segments(
        self, x: Any, window: Any = None, stride: Any = None, *, top_k: int = 3
    ) -> list[dict]: ...


def predict_upload(
    predictor: Any,
    path: Path,
    filename: str,
    top_k: int,
    thumbnails: bool,
    window: WindowParams | None = None,
) -> tuple[int, dict]:
    """(status, body) of the video stored at ``path`` (uploaded as ``filename``).

    ``window``: the checked ``segments`` / ``stride`` (None: one record for the whole video, as
    ``predict_records``; else ``predict_segments``'s record with ``window``, ``segments`` and ``spans``).
    """

    def named(text: object) -> str:
        return str(text).replace(str(path), filename)

    if filename.lower().endswith(".npy"):  # vidcls predict reads these as features; here they go as JSON
        return 415, {
            "error": f"{filename}: a .npy file holds features, not a video; send them as JSON "
            f'{{"features": [[...], ...]}} (T rows of D numbers) to /v1/predict/features'
        }
    try:
        container, _ = open_video(path)
        container.close()
    except VideoSkip as skip:
        status = 415 if skip.code in NOT_A_VIDEO else 422
        reason = "the uploaded file is empty" if skip.code == "empty" else named(skip)
        return status, {"error": reason}
    try:
        if window is None:
            record = predictor.predict_records([str(path)], top_k=top_k)[0]
        else:
            segmenting: _Segmenting = predictor
            record = segmenting.predict_segments([str(path)], window.segments, window.stride, top_k=top_k)[0]
    except VidclsError as err:  # the run's frame extractor cannot be built here (weights, dimension)
        log.warning("video upload refused: %s", err)
        return 503, {"error": f"this server cannot classify videos ({err}); /v1/predict/features works"}
    record["input"] = filename
    if record.get("error"):
        error = record["error"] if window is None else param_message(record["error"])
        record["error"], record["trust_reason"] = (
            named(error),
            named(record.get("trust_reason", "")),
        )
        return 422, record
    if thumbnails:
        record["thumbnails"] = frame_thumbnails(path, [f.get("timestamp_ms") for f in record["frames"]])
    return 200, record
