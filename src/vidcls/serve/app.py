"""``vidcls serve``: a trained run behind HTTP (FastAPI + uvicorn) with a small upload page.

Endpoints: ``GET /health``; ``GET /v1/model`` (with the run's ``task`` and, multi-label, its
``thresholds``); ``POST /v1/predict`` (multipart, one video in the file field ``file``) -> the record of
``Predictor.predict_records`` (the JSON of ``vidcls predict --format json``; a multi-label run's holds
its label set, ``labels``) with ``input`` set to the uploaded file name, plus ``thumbnails`` (data URIs,
one per frame) with ``?thumbnails=1``; with ``segments`` (and ``stride``; query or form fields, the strings of
``vidcls predict --segments``, :mod:`vidcls.serve.segments`) the record of ``Predictor.predict_segments``
(``window``, ``segments``, ``spans``); ``POST /v1/predict/features`` ({"features": T x D}, JSON); ``POST /v1/stream`` (the body: a video
as it is recorded) -> one JSON line per window as the upload arrives (:mod:`vidcls.serve.stream`);
``GET /`` the page;
OpenAPI at ``/docs`` (:mod:`vidcls.serve.pages`).

Every error response is ``{"error": message}`` (a failed video: its record, whose ``error`` says why);
an unexpected exception is logged here and answered with a bare 500. Uploads are streamed to a
temporary file (:mod:`vidcls.serve.uploads`) that is removed on every path, and received before the
request takes its place in the inference queue: a slow or stalled upload holds only one of the
``max_uploads`` places of uploads in transfer, and is given up (408) once idle for ``body_timeout_s``.
Limits are in :mod:`vidcls.serve.limits`; stale uploads of a killed server are removed at start.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..errors import ConfigError, VidclsError
from ..run.rundir import RunDir
from .limits import BodyLimit, InferenceQueue, UploadSlots, check_bindable
from .pages import add_docs, add_page_routes
from .predicting import predict_upload
from .segments import FORM_FIELDS, check_window, merge_form, segments_query, stride_query
from .settings import (
    API_KEY_HEADER,
    ServeSettings,
    check_body_timeout,
    check_port,
    resolve_api_key,
    service_url,
)
from .stream import STREAM_PATH, stream_router
from .uploads import receive_upload, sweep_stale_uploads

log = logging.getLogger("vidcls.serve")

UPLOAD_FIELD = "file"
FEATURES_PATH = "/v1/predict/features"
FEATURES_ADVICE = (
    "for frame features; send fewer frames (a sequence longer than the run's max_frames "
    "is thinned to it anyway)"
)


def _upload_openapi() -> dict:
    """POST /v1/predict's body in /docs (a fresh dict per app): the upload is read from the stream, not
    declared as a parameter."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [UPLOAD_FIELD],
                        "properties": {
                            UPLOAD_FIELD: {"type": "string", "format": "binary"},
                            **{name: {"type": "string"} for name in FORM_FIELDS},  # or in the query
                        },
                    }
                }
            },
        }
    }


T = TypeVar("T")
D = TypeVar("D")


class ServedPredictor(Protocol):
    """What the service needs of a predictor: ``classes_`` and ``predict_records``; the other attributes
    /v1/model shows (``members_``, ``feature_dim_``, ...) are read with ``getattr`` where it has them."""

    @property
    def classes_(self) -> Sequence[str]: ...

    def predict_records(self, x: Any, top_k: int = 3) -> list[dict]: ...


class FeaturesRequest(BaseModel):
    features: list[list[float]] = Field(
        description="frame features of one video, T rows of D floats (D: the run's feature_dim)",
        json_schema_extra={"examples": [[[0.1, 0.2], [0.3, 0.4]]]},
    )


def _read(read: Callable[[], T | None], default: D) -> T | D:
    """A run file for /v1/model through its strict reader; a damaged one is left out with a warning."""
    try:
        value = read()
    except ConfigError as err:
        log.warning("%s; /v1/model leaves it out", err)
        return default
    return default if value is None else value


def _thresholds(predictor: ServedPredictor) -> dict | None:
    """A multi-label predictor's thresholds for /v1/model (``{"source", "rule", "per_class": {class: t}}``),
    None for a single-label one."""
    thresholds = getattr(predictor, "thresholds_", None)
    return None if thresholds is None else thresholds.describe(list(predictor.classes_))


def model_info(predictor: ServedPredictor, settings: ServeSettings) -> dict:
    """What GET /v1/model answers: the served model, its task (a multi-label run: with the decision
    thresholds it serves), its metrics and calibration, the limits."""
    run = RunDir(settings.run_dir) if settings.run_dir else None
    summary = _read(run.read_summary, {}) if run else {}
    calibration = _read(run.read_calibration, None) if run else None
    if calibration is None:
        calibration = getattr(predictor, "calibration_", None)
    return {
        "vidcls_version": __version__,
        "classes": list(predictor.classes_),
        "task": getattr(predictor, "task_", None) or "single",
        "thresholds": _thresholds(predictor),
        "members": list(getattr(predictor, "members_", [])),
        "tta_used": getattr(predictor, "tta_used_", None),
        "tta_modes": list(getattr(predictor, "tta_modes_", None) or []),
        "feature_dim": getattr(predictor, "feature_dim_", None),
        "max_frames": getattr(predictor, "max_frames_", None),
        "extractor": getattr(predictor, "extractor_", None),
        "final": summary.get("final"),
        "metrics": {"val": summary.get("val"), "test": summary.get("test")},
        "calibration": calibration,
        "limits": {
            "max_upload_mb": settings.max_upload_mb,
            "max_queue": settings.max_queue,
            "upload_field": UPLOAD_FIELD,
            "max_uploads": settings.max_uploads,
            "body_timeout_s": settings.body_timeout_s,
            "max_features_mb": round(settings.max_features_bytes / 2**20, 3),
        },
    }


class ApiKeyGuard:
    """ASGI middleware: /v1/* answers 401 unless the X-API-Key header holds ``api_key`` (None: open)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.key = app, None if api_key is None else api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is not None and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(API_KEY_HEADER.lower().encode(), b"")
            if not hmac.compare_digest(given, self.key):
                response = _error(
                    401, f"missing or wrong {API_KEY_HEADER} header", {"WWW-Authenticate": API_KEY_HEADER}
                )
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def features_array(rows: list, feature_dim: int | None) -> np.ndarray:
    """The (T, D) float32 array of a features request.

    Raises:
        HTTPException: 422 with what is wrong (no rows, ragged rows, wrong D, NaN/Inf).
    """
    if not rows:
        raise HTTPException(422, "features: no frames; send T >= 1 rows of D floats")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise HTTPException(
            422, f"features: rows of different lengths ({sorted(widths)[:5]}); every frame needs the same D"
        )
    x = np.asarray(rows, dtype=np.float64)
    if feature_dim is not None and x.shape[1] != feature_dim:
        raise HTTPException(
            422,
            f"features: D = {x.shape[1]}, but the run was trained on D = "
            f"{feature_dim} (features of its recorded extractor, see /v1/model)",
        )
    if not np.isfinite(x).all():
        raise HTTPException(422, "features: NaN or infinite values; send finite numbers")
    if np.abs(x).max() > np.finfo(np.float32).max:
        raise HTTPException(422, "features: values beyond float32 range")
    return x.astype(np.float32)


def create_app(predictor: ServedPredictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (a :class:`vidcls.predict.predictor.Predictor`, or any
    object with ``classes_`` and ``predict_records``)."""
    settings = settings or ServeSettings()
    queue = InferenceQueue(settings.max_queue, settings.workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweep_stale_uploads(settings.tmp_dir)
        yield
        queue.close()

    app = FastAPI(
        title="vidcls",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Video classification with a trained vidcls run. /v1/* needs the X-API-Key "
        "header when the server has a key.",
    )
    uploads = UploadSlots(settings.max_uploads)
    app.state.queue, app.state.uploads, app.state.settings = queue, uploads, settings
    app.add_middleware(ApiKeyGuard, api_key=settings.api_key)
    features_limit = (settings.max_features_bytes, FEATURES_ADVICE)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_upload_bytes,
        timeout_s=settings.body_timeout_s,
        path_limits={FEATURES_PATH: features_limit},
        duplex_paths=frozenset({STREAM_PATH}),
    )  # the outermost: see its docstring
    _add_error_handlers(app)
    add_page_routes(app)
    add_docs(app)
    app.include_router(_v1_router(predictor, settings, queue, uploads))
    app.include_router(stream_router(predictor, settings, queue, uploads, predictor.classes_))
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answered as ``{"error": message}``; an unexpected one is logged here first."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return _error(400, "the client closed the connection during the upload")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error (logged on the server)")


def _json_body(request: Request) -> None:
    """A features request must say that its body is JSON (else FastAPI takes it as bytes: a puzzling 422)."""
    mime = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not (mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))):
        raise HTTPException(
            415,
            'send the frame features as JSON, {"features": [[...], ...]}, with the header '
            "Content-Type: application/json",
        )


def _v1_router(
    predictor: ServedPredictor, settings: ServeSettings, queue: InferenceQueue, uploads: UploadSlots
) -> APIRouter:
    """``/v1/model``, ``/v1/predict`` and ``/v1/predict/features``."""
    info = model_info(predictor, settings)
    n_classes = len(predictor.classes_)
    # ApiKeyGuard enforces the key before any body is read; this dependency only documents it in /docs
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))])
    top_k_query = Query(3, ge=1, description="how many classes in top_k")

    @v1.get("/model", response_model=None)  # none inferred from the annotation: info as it is
    async def model() -> dict:
        return info

    @v1.post("/predict", openapi_extra=_upload_openapi())
    async def predict(
        request: Request,
        top_k: int = top_k_query,
        thumbnails: bool = Query(False, description="add frame thumbnails (data URIs)"),
        segments: str | None = segments_query(),
        stride: str | None = stride_query(),
    ) -> JSONResponse:
        """Classify one uploaded video (multipart field ``file``); with ``segments``, window by window
        (``segments`` and ``stride`` may also come as form fields)."""
        check_window(predictor, segments, stride)  # a bad window refuses before the body is received
        queue.check()  # a full queue refuses before the body is received, not after
        with uploads.slot():  # the body arrives outside the inference queue
            upload = await receive_upload(request, UPLOAD_FIELD, settings.tmp_dir, FORM_FIELDS)
        try:
            given = merge_form({"segments": segments, "stride": stride}, upload.fields)
            window = check_window(predictor, given["segments"], given["stride"])
            async with queue.slot():
                status, body = await queue.run(
                    predict_upload,
                    predictor,
                    upload.path,
                    upload.filename,
                    min(top_k, n_classes),
                    thumbnails,
                    window,
                )
        finally:
            upload.path.unlink(missing_ok=True)
        return JSONResponse(body, status)

    @v1.post("/predict/features", dependencies=[Depends(_json_body)])
    async def predict_features(body: FeaturesRequest, top_k: int = top_k_query) -> JSONResponse:
        """Classify one video given as its frame features (T x D, from the run's extractor)."""
        x = features_array(body.features, info["feature_dim"])
        async with queue.slot():
            record = await queue.run(lambda: predictor.predict_records([x], top_k=min(top_k, n_classes))[0])
        return JSONResponse(record, 422 if record.get("error") else 200)

    return v1


def serve(
    run_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 500.0,
    max_queue: int = 8,
    device: str = "auto",
    weights: str | None = None,
    log_level: str = "info",
    max_uploads: int = 8,
    body_timeout: float | str = 30.0,
) -> None:
    """Load the run and serve it until interrupted (``vidcls serve``).

    Raises:
        ConfigError: a non-loopback host without $VIDCLS_API_KEY, or a bad limit (checked before loading).
    """
    port = check_port(port)
    api_key = resolve_api_key(host)
    check_bindable(host, port)
    settings = ServeSettings(
        max_upload_mb=max_upload_mb,
        max_queue=max_queue,
        api_key=api_key,
        run_dir=str(run_dir),
        max_uploads=max_uploads,
        body_timeout_s=check_body_timeout(body_timeout),
    )
    import uvicorn  # after the checks: a refused start does not wait for torch

    from ..predict.predictor import load

    predictor = load(run_dir, device=device, weights=weights)
    try:  # the frame CNN of the run's extractor, built now rather than on the first upload
        _ = predictor.encoder_
    except VidclsError as err:
        log.warning("video uploads will be refused: %s", err)
        print(f"warning: video uploads will be refused ({err}); /v1/predict/features works", flush=True)
    app = create_app(predictor, settings)
    print(
        f"serving {run_dir} ({len(predictor.classes_)} classes) on {service_url(host, port)} "
        f"(API key {'required' if api_key else 'not required'}; Ctrl-C stops)",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
