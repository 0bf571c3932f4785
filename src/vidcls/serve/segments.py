"""``segments=`` / ``stride=`` of the service (``/v1/predict`` and ``/v1/stream``): the strings of
``vidcls predict --segments`` / ``--stride`` ("10s" seconds, "16" frames, "run" or empty: the run's
typical window; the stride defaults to half the window), checked as the command line checks them, and
against the served run (whose features must have been sampled at a rate: a video of a run with N
frames per video cannot be cut into windows) before the upload is received.

A refused value is answered 422 with the one line of :func:`vidcls.predict.segments.parse_window`,
naming the service's parameter (``segments``) where the command line names its option
(``--segments``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import Query
from starlette.exceptions import HTTPException

from ..errors import ConfigError, VidclsError
from ..predict.segments import Window, frames_of, parse_window, run_default

__all__ = ["WindowParams", "check_window", "param_message", "segments_query", "stride_query", "merge_form"]

SEGMENTS_HELP = (
    "classify sliding windows of this length: seconds like 10s, frames like 16, or 'run' (the run's "
    "typical window); as vidcls predict --segments. The record gains window, segments and spans"
)
STRIDE_HELP = "the windows' step, in the window's unit (default: half the window); as --stride"
FORM_FIELDS = ("segments", "stride")  # the text fields of a /v1/predict form read as these parameters
_OPTION = re.compile(r"--(segments|stride|format|top-k|timeout|batch-size)\b")


def segments_query() -> Any:
    return Query(None, description=SEGMENTS_HELP, max_length=64)


def stride_query() -> Any:
    return Query(None, description=STRIDE_HELP, max_length=64)


@dataclass(frozen=True)
class WindowParams:
    """The checked strings (passed on as given) and their window."""

    segments: str
    stride: str | None
    window: Window


def param_message(err: VidclsError | str) -> str:
    """``err``'s line with the service's parameter names (``segments``) for the CLI's (``--segments``)."""
    return _OPTION.sub(lambda m: m.group(1).replace("-", "_"), str(err))


def check_window(predictor: Any, segments: str | None, stride: str | None) -> WindowParams | None:
    """The window of ``segments`` / ``stride`` (None without ``segments``), checked against the run.

    Raises:
        HTTPException: 422 a value ``parse_window`` refuses, or a window the run cannot cut (seconds
            without a sampling rate, a stride longer than the run's window); 501 a predictor that does
            not classify windows.
    """
    try:
        window = parse_window(segments, stride)
        if window is None:
            return None
        assert segments is not None  # parse_window gives None without it
        if not hasattr(predictor, "predict_segments"):
            raise HTTPException(501, "this server's predictor does not classify windows; leave out segments")
        fps = getattr(predictor, "fps_", None)
        if fps is None:  # predict_segments cuts only the features of a video taken at a rate
            raise HTTPException(
                422,
                "segments: the served run's features took a fixed number of frames per video, not frames "
                "at a rate, so a video cannot be cut into windows; serve a run extracted with --fps",
            )
        resolved = window if window.size is not None else run_default(window, predictor.window_, fps)
        frames_of(resolved, fps, where="segments")
    except ConfigError as err:
        raise HTTPException(422, param_message(err)) from None
    return WindowParams(segments, stride, window)


def merge_form(query: dict[str, str | None], form: dict[str, str]) -> dict[str, str | None]:
    """The parameters of ``query`` with those sent as form fields instead (``FORM_FIELDS``).

    Raises:
        HTTPException: 422 a parameter given both ways with different values.
    """
    out = dict(query)
    for name, value in form.items():
        if out.get(name) is not None and out[name] != value:
            raise HTTPException(
                422,
                f"{name} is given twice, {out[name]!r} in the query and {value!r} in the form; give it once",
            )
        out[name] = value
    return out
