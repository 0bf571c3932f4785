"""Request limits of the HTTP service: body size, the inference queue, and uploads streamed to disk.

- ``BodyLimit`` (ASGI middleware): a request whose Content-Length is over the limit gets 413 before
  any of its body is stored; a body without one (chunked) is counted as it arrives and stopped with
  413 as soon as it passes the limit; an early answer waits until the client's body is read (and
  discarded), so that the client gets it.
- ``receive_upload``: parses a multipart/form-data body as it streams in and writes the one file field
  to a temporary file in chunks; nothing holds the whole body in memory, and the file is removed on
  every error path.
- ``InferenceQueue``: at most ``max_queue`` requests waiting for or running inference; one more is
  refused with 503 and a Retry-After estimate. Inference runs on a bounded thread pool, off the event
  loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ..features.video import VIDEO_EXTENSIONS

UPLOAD_PREFIX = "vidcls-upload-"
MAX_FILENAME = 255
DRAIN_MAX = 256 * 2 ** 20  # a refused body is read and discarded up to this size (see _drain)


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int):
        super().__init__(413, f"the request body is larger than the limit of {_mb(max_bytes)} "
                              f"(--max-upload-mb); send a shorter or more compressed video",
                         headers={"Connection": "close"})


class QueueFull(HTTPException):
    def __init__(self, retry_after: int, max_queue: int):
        super().__init__(503, f"the server is busy ({max_queue} requests waiting or running); "
                              f"retry in {retry_after} s", headers={"Retry-After": str(retry_after)})


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.3g} MB"


async def _drain(receive, most: int) -> None:
    """Read and discard the rest of a request body (at most ``most`` bytes)."""
    seen = 0
    while seen <= most:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        seen += len(message.get("body", b""))


class BodyLimit:
    """ASGI middleware: the size limit of request bodies, and no answer before the body is read.

    - a Content-Length over ``max_bytes`` gets 413 before the app runs; a body without one (chunked)
      is counted as the app reads it, and reading past the limit raises ``BodyTooLarge`` (413);
    - answering before the client has sent its whole body (413, 401, 415, 503 ...) and then closing
      makes the kernel reset the connection, and most clients lose the answer: the rest of the body
      is read and discarded first (never stored), up to DRAIN_MAX bytes, past which the connection is
      simply closed. A client that sent ``Expect: 100-continue`` (curl does for large bodies) and whose
      body was not asked for yet gets the answer at once, without sending the body.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        state = {"seen": 0, "done": False, "asked": False,
                 "expect": headers.get(b"expect", b"").lower() == b"100-continue"}

        async def counted():
            state["asked"] = True
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["done"] = True
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def answer(message):
            if message["type"] == "http.response.start" and not state["done"] \
                    and not (state["expect"] and not state["asked"]):
                state["done"] = True
                await _drain(receive, DRAIN_MAX)
            await send(message)

        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await JSONResponse({"error": "invalid Content-Length header"}, 400)(scope, receive, answer)
            if declared == 0:
                state["done"] = True
            if declared > self.max_bytes:
                exc = BodyTooLarge(self.max_bytes)
                if declared > DRAIN_MAX:
                    state["done"] = True  # not worth reading: the connection is closed after the answer
                return await JSONResponse({"error": exc.detail}, 413, headers=exc.headers)(scope, receive, answer)
        elif b"transfer-encoding" not in headers:
            state["done"] = True  # no body
        return await self.app(scope, counted, answer)


@dataclass
class Upload:
    path: Path
    filename: str
    size: int


def clean_filename(raw: str | None) -> str:
    """The base name of a client's file name, without control characters, at most 255 characters."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:MAX_FILENAME] or "upload"


def _suffix(filename: str) -> str:
    """The upload's extension when it is a video one (FFmpeg takes it as a hint), else .mp4."""
    ext = Path(filename).suffix.lower()
    return ext if ext in VIDEO_EXTENSIONS else ".mp4"


class _FilePart:
    """python-multipart callbacks that write the first part named ``field`` to a temporary file."""

    def __init__(self, field: str, tmp_dir: str | None):
        self.field, self.tmp_dir = field, tmp_dir
        self.fields_seen: list[str] = []
        self.upload: Upload | None = None
        self._file = None
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""
        self._writing = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
                "on_header_end": self._hend, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self):
        self._headers, self._name, self._value = {}, b"", b""

    def _hfield(self, data, start, end):
        self._name += data[start:end]

    def _hvalue(self, data, start, end):
        self._value += data[start:end]

    def _hend(self):
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name = self._value = b""

    def _headers_done(self):
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self.fields_seen.append(name)
        self._writing = name == self.field and self.upload is None and b"filename" in options
        if self._writing:
            filename = clean_filename(options[b"filename"].decode("utf-8", "replace"))
            fd, path = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=_suffix(filename), dir=self.tmp_dir)
            self._file = os.fdopen(fd, "wb")
            self.upload = Upload(Path(path), filename, 0)

    def _data(self, data, start, end):
        if self._writing:
            self._file.write(data[start:end])
            self.upload.size += end - start

    def _end(self):
        if self._writing:
            self._file.close()
            self._writing = False

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.upload is not None:
            self.upload.path.unlink(missing_ok=True)


async def receive_upload(request, field: str = "file", tmp_dir: str | None = None) -> Upload:
    """Stream the multipart body of ``request`` and store its file field ``field`` in ``tmp_dir``.

    The caller removes ``Upload.path``; on any error here it is already removed.

    Raises:
        HTTPException: 415 not multipart/form-data, 400 a malformed body, 422 no such file field;
            413 (from ``BodyLimit``) a body over the limit.
    """
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise HTTPException(415, f"send the video as multipart/form-data with a file field named '{field}'")
    part = _FilePart(field, tmp_dir)
    parser = MultipartParser(boundary, part.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if part.upload is None:
            seen = ", ".join(repr(n) for n in part.fields_seen) or "none"
            raise HTTPException(422, f"no file field named '{field}' in the form (fields sent: {seen}); "
                                     f"send the video as {field}=@VIDEO")
        if part._writing:
            raise HTTPException(400, "the multipart body ends inside the file; the upload is incomplete")
        return part.upload
    except MultipartParseError as err:
        part.discard()
        raise HTTPException(400, f"malformed multipart/form-data body ({err})") from None
    except BaseException:
        part.discard()
        raise


class InferenceQueue:
    """At most ``max_queue`` requests holding a slot; their work runs on ``workers`` threads."""

    def __init__(self, max_queue: int, workers: int = 1):
        self.max_queue, self.workers = int(max_queue), int(workers)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vidcls-infer")
        self._lock = threading.Lock()
        self.held = 0
        self._mean_s = 1.0  # running mean of one job's duration, for Retry-After

    def retry_after(self) -> int:
        return max(1, math.ceil(self._mean_s * self.held / self.workers))

    @contextlib.asynccontextmanager
    async def slot(self):
        """Hold one of the ``max_queue`` places while the request waits and runs.

        Raises:
            QueueFull: all places are taken (503 with Retry-After).
        """
        with self._lock:
            if self.held >= self.max_queue:
                raise QueueFull(self.retry_after(), self.max_queue)
            self.held += 1
        try:
            yield
        finally:
            with self._lock:
                self.held -= 1

    async def run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the inference threads; awaits its result."""
        def timed():
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - t0)

        return await asyncio.get_running_loop().run_in_executor(self._executor, timed)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
