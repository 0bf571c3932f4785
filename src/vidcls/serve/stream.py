"""``POST /v1/stream``: a video classified window by window as its upload arrives (chunked NDJSON).

The request body is the video itself (not a form), in a container that can be read as it arrives
(MPEG-TS, Matroska/WebM, fragmented MP4), sent as it is recorded (``Transfer-Encoding: chunked``) or
as a file. It is read as it arrives into a blocking reader (:class:`BodyReader`) that
:func:`vidcls.predict.live.watch` decodes, and every window's record (that of ``vidcls watch``:
``window_index``, ``start_frame``, ``end_frame``, ``start_s``, ``end_s``, the decision fields,
``latency_s``) is one JSON line of the answer (``application/x-ndjson``), sent as soon as it is made.
Query: ``segments`` / ``stride`` (as ``vidcls watch --segments`` / ``--stride``: default the run's typical
window and half of it), ``top_k``, ``format`` (FFmpeg's input format, e.g. ``mpegts``, where the first
bytes do not tell). A video shorter than one window gets an empty answer. From a camera, e.g.::

    ffmpeg -f v4l2 -i /dev/video0 -f mpegts - | curl -sN -X POST -T - -H 'Content-Type: video/mp2t' \
        'http://127.0.0.1:8000/v1/stream?segments=4s'

Limits: a stream holds one of the ``max_uploads`` places while it runs and one of the ``max_queue``
places; each window's model call takes its turn on the inference threads with the other requests'
work; its body counts against ``max_upload_mb``, and a body from which nothing arrives for
``body_timeout_s`` ends the stream. Bad parameters, a full server, a run whose features were not taken
at a rate: the usual error answer (``{"error": ...}``, 4xx/5xx) before anything is streamed. Once
streaming, anything that ends it early (a stalled or broken upload, a body over the limit, bytes that
are no video) is one last line ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import ConfigError, VidclsError
from ..predict.live import check_options, watch
from ..predict.outputs import to_json
from .limits import DRAIN_MAX, InferenceQueue, UploadSlots
from .segments import param_message
from .settings import API_KEY_HEADER, ServeSettings

log = logging.getLogger("vidcls.serve")

__all__ = ["STREAM_PATH", "MEDIA_TYPE", "BodyReader", "UploadBroken", "stream_router"]

STREAM_PATH = "/v1/stream"
MEDIA_TYPE = "application/x-ndjson"
BUFFER_BYTES = 4 * 2**20  # body bytes held for the decoder; past this the body is read no further for now
STALL_MARGIN_S = 2.0  # the decoder's stall timeout is the body's plus this: a stalled body says so first
SOURCE_NAME = "upload"  # the records' ``source``


class UploadBroken(OSError):
    """The request body stopped before its end; the message says why."""


class BodyReader:
    """A blocking binary file (``read(n)``) for FFmpeg in the decoder's thread, fed on the event loop.

    ``read`` waits for bytes: b"" once the body has ended (or the reader was closed); raises
    :class:`UploadBroken` once the body broke off (``failure``: why), or after ``timeout_s`` without
    any. ``room()``: whether more may be fed (``max_buffer``); ``on_room`` is called after each read.
    """

    def __init__(self, timeout_s: float, *, max_buffer: int = BUFFER_BYTES, name: str = SOURCE_NAME) -> None:
        self.name, self.timeout_s, self.max_buffer = name, float(timeout_s), int(max_buffer)
        self.failure: str | None = None
        self.on_room: Callable[[], None] | None = None
        self.received = self.dropped = 0  # bytes fed; of them, dropped after ``close``
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._ended = self._closed = False

    def feed(self, data: bytes) -> None:
        with self._cond:
            self.received += len(data)
            if self._closed:
                self.dropped += len(data)
            elif data:
                self._chunks.append(bytes(data))
                self._held += len(data)
                self._cond.notify_all()

    def end(self, failure: str | None = None) -> None:
        """The body has ended (``failure``: broken off, and why)."""
        with self._cond:
            self._ended, self.failure = True, self.failure or failure
            self._cond.notify_all()

    def close(self) -> None:
        """The reader is given up: ``read`` returns b"", what is fed is dropped."""
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._held = 0
            self._cond.notify_all()
        if self.on_room is not None:
            self.on_room()

    def room(self) -> bool:
        with self._cond:
            return self._closed or self._held < self.max_buffer

    def read(self, n: int = -1) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while not (self._chunks or self._ended or self._closed):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UploadBroken(f"no part of the upload arrived for {self.timeout_s:g} s")
                self._cond.wait(left)
            if self._closed or not self._chunks:
                if self.failure and not self._closed:
                    raise UploadBroken(self.failure)
                return b""
            data = self._take(n)
        if self.on_room is not None:
            self.on_room()
        return data

    def _take(self, n: int) -> bytes:
        out, size = [], 0
        while self._chunks and (n < 0 or size < n):
            chunk = self._chunks.popleft()
            if n >= 0 and size + len(chunk) > n:
                chunk, rest = chunk[: n - size], chunk[n - size :]
                self._chunks.appendleft(rest)
            out.append(chunk)
            size += len(chunk)
        self._held -= size
        return b"".join(out)


class _Queued:
    """The predictor, its model calls made on the inference threads (in turn with the requests')."""

    def __init__(self, predictor: Any, queue: InferenceQueue) -> None:
        self._predictor, self._queue = predictor, queue

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def predict_records(self, x: Any, top_k: int = 3) -> list[dict]:
        return self._queue.call(self._predictor.predict_records, x, top_k=top_k)


def _line(record: dict) -> bytes:
    return (to_json(record) + "\n").encode()


def _lines(watcher: Iterator[dict], reader: BodyReader) -> Generator[bytes, None, None]:
    """The JSON lines of ``watcher``'s records; anything that ends it early: one line ``{"error"}``."""
    try:
        for record in watcher:
            yield _line(record)
    except Exception as err:  # the body's own reason first: the decoder only saw its bytes stop
        if reader.failure is not None:
            why = reader.failure
        elif isinstance(err, VidclsError):
            why = param_message(err)
        else:
            log.error("%s failed", STREAM_PATH, exc_info=err)
            why = "internal error (logged on the server)"
        yield _line({"error": why})
    finally:
        getattr(watcher, "close", lambda: None)()


async def _feed(receive: Receive, reader: BodyReader, room: asyncio.Event, body_done: asyncio.Event) -> None:
    """Move the request body into ``reader`` as it arrives (waiting while it is full), then wait for the
    client to leave; a client gone, a body over the limit or stalled (``BodyLimit``) ends the reader."""
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                reader.end("the client closed the connection during the upload")
                reader.close()
                return
            while not reader.room():
                room.clear()
                if not reader.room():
                    await room.wait()
            reader.feed(message.get("body", b""))
            if reader.dropped > DRAIN_MAX:  # the stream has ended long ago: no more of the body is read
                break
            if not message.get("more_body", False):
                break
        reader.end()
    except HTTPException as exc:  # BodyLimit: 413 over the limit, 408 stalled
        reader.end(str(exc.detail))
        return
    finally:
        body_done.set()
    while (await receive())["type"] != "http.disconnect":  # the body has ended: the client's leaving
        pass
    reader.close()


class NdjsonStream(Response):
    """The answer of a stream: ``watcher``'s records as JSON lines while the body goes to ``reader``;
    ``held`` (the places the stream holds) is let go when it ends."""

    media_type = MEDIA_TYPE

    def __init__(self, watcher: Iterator[dict], reader: BodyReader, held: contextlib.AsyncExitStack) -> None:
        self.watcher, self.reader, self.held = watcher, reader, held
        self.status_code, self.background = 200, None
        self.init_headers(
            {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        )  # chunked: no body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        room, body_done = asyncio.Event(), asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(room.set)

        self.reader.on_room = wake
        feeder = asyncio.create_task(_feed(receive, self.reader, room, body_done))
        lines = _lines(self.watcher, self.reader)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            while (line := await anyio.to_thread.run_sync(next, lines, None)) is not None:
                await send({"type": "http.response.body", "body": line, "more_body": True})
            self.reader.close()  # the watch has ended: the rest of the body is read and dropped
            await body_done.wait()  # (bounded by BodyLimit's idle timeout and DRAIN_MAX)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.reader.close()  # a decoder still reading gets the end
            await anyio.to_thread.run_sync(lines.close)  # the watch lets its decoder go
            feeder.cancel()
            await self.held.aclose()


def _raw_body(request: Request) -> None:
    """The body must be the video itself: not a form, not empty."""
    mime = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mime in ("multipart/form-data", "application/json"):  # (curl --data-binary's urlencoded is let be)
        raise HTTPException(
            415,
            f"send the video itself as the request body (e.g. Content-Type: video/mp2t), not as "
            f"{mime}; a form upload goes to /v1/predict",
        )
    if request.headers.get("content-length", "").strip() == "0":
        raise HTTPException(422, "the request body is empty; send the video as it is recorded")


def _stream_openapi() -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"video/*": {"schema": {"type": "string", "format": "binary"}}},
        },
    }


def stream_router(
    predictor: Any,
    settings: ServeSettings,
    queue: InferenceQueue,
    uploads: UploadSlots,
    classes: Sequence[str],
) -> APIRouter:
    """``POST /v1/stream`` (module docstring)."""
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))])

    @v1.post(
        STREAM_PATH.removeprefix("/v1"),
        openapi_extra=_stream_openapi(),
        response_class=NdjsonStream,
        status_code=200,
        response_description="one JSON line per window, as each is made",
    )
    async def stream(
        request: Request,
        segments: str | None = Query(None, max_length=64, description="window length: 10s, 16 frames"),
        stride: str | None = Query(None, max_length=64, description="the windows' step (default half)"),
        top_k: int = Query(3, ge=1, description="how many classes in top_k"),
        fmt: str | None = Query(None, alias="format", max_length=32, description="FFmpeg input format"),
    ) -> Response:
        """Classify a video window by window as it is uploaded (the body); one JSON line per window."""
        _raw_body(request)
        try:
            check_options(segments, stride, fmt=fmt, top_k=top_k)
        except ConfigError as err:
            raise HTTPException(422, param_message(err)) from None
        if not hasattr(predictor, "fps_"):
            raise HTTPException(501, "this server's predictor does not classify streams")
        queue.check()
        held = contextlib.AsyncExitStack()
        held.enter_context(uploads.slot())
        try:
            await held.enter_async_context(queue.slot())
            reader = BodyReader(settings.body_timeout_s + 2 * STALL_MARGIN_S)
            watcher = await queue.run(
                watch,
                _Queued(predictor, queue),
                reader,
                window=segments,
                stride=stride,
                fmt=fmt,
                timeout_s=settings.body_timeout_s + STALL_MARGIN_S,
                top_k=min(top_k, len(classes)),
            )
        except BaseException as err:
            await held.aclose()
            if isinstance(err, ConfigError):
                raise HTTPException(422, param_message(err)) from None
            if isinstance(err, VidclsError):  # the run's frame CNN cannot be built here
                raise HTTPException(503, f"this server cannot classify videos ({err})") from None
            raise
        return NdjsonStream(watcher, reader, held)

    return v1
