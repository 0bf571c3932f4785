"""Request limits of the HTTP service: body size, body idle time, uploads in transfer, the inference queue.

- ``BodyLimit`` (ASGI middleware): a request whose Content-Length is over the limit gets 413 before
  any of its body is stored; a body without one (chunked) is counted as it arrives and stopped with
  413 as soon as it passes the limit; a body from which nothing arrives for ``timeout_s`` gets 408 and
  the connection is closed; an early answer waits until the client's body is read (and discarded),
  so that the client gets it, but never longer than the body keeps arriving.
- ``UploadSlots``: at most ``max_uploads`` uploads being received at once, apart from the inference
  queue (slow or stalled uploads never hold a place that feature requests need); one more gets 503.
- ``InferenceQueue``: at most ``max_queue`` requests waiting for or running inference; one more is
  refused with 503 and a Retry-After estimate. Inference runs on a bounded thread pool, off the event
  loop.

The multipart upload itself (streamed to a temporary file) is in :mod:`vidcls.serve.uploads`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError
from .uploads import UPLOAD_PREFIX, Upload, clean_filename, receive_upload  # noqa: F401  (their old home)

DRAIN_MAX = 256 * 2**20  # a refused body is read and discarded up to this size (see _drain)
UPLOAD_ADVICE = "(--max-upload-mb); send a shorter or more compressed video"
UPLOADS_RETRY_S = 5  # Retry-After of a refused upload: uploads in transfer end at unknown times

T = TypeVar("T")


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int, advice: str = UPLOAD_ADVICE):
        super().__init__(
            413,
            f"the request body is larger than the limit of {_mb(max_bytes)} {advice}",
            headers={"Connection": "close"},
        )


class BodyTimeout(HTTPException):
    def __init__(self, timeout_s: float):
        super().__init__(
            408,
            f"no part of the request body arrived for {timeout_s:g} s (--body-timeout); "
            f"the request was given up: send the body without pauses",
            headers={"Connection": "close"},
        )


class QueueFull(HTTPException):
    def __init__(self, retry_after: int, max_queue: int):
        super().__init__(
            503,
            f"the server is busy ({max_queue} requests waiting or running); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


class UploadsFull(HTTPException):
    def __init__(self, max_uploads: int):
        super().__init__(
            503,
            f"the server is busy receiving {max_uploads} other uploads (--max-uploads); "
            f"retry in {UPLOADS_RETRY_S} s",
            headers={"Retry-After": str(UPLOADS_RETRY_S)},
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MB"


async def _drain(receive: Receive, most: int, timeout_s: float) -> bool:
    """Read and discard the rest of a request body: True once it has ended; False when given up, past
    ``most`` bytes or after ``timeout_s`` without any of it arriving (the connection is then closed)."""
    seen = 0
    while seen <= most:
        try:
            message = await asyncio.wait_for(receive(), timeout_s)
        except asyncio.TimeoutError:
            return False
        if message["type"] != "http.request" or not message.get("more_body", False):
            return True
        seen += len(message.get("body", b""))
    return False


def _closing(message: Message) -> Message:
    """A response start with ``Connection: close`` (uvicorn then closes the connection after it)."""
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
    return {**message, "headers": headers + [(b"connection", b"close")]}


class BodyLimit:
    """ASGI middleware: the size limit and the idle timeout of request bodies, no answer before the body
    is read.

    - a Content-Length over the limit (``max_bytes``, or that of the path in ``path_limits``: path ->
      (bytes, advice)) gets 413 before the app runs; a body without one (chunked) is counted as the
      app reads it, and reading past the limit raises ``BodyTooLarge`` (413);
    - a body from which nothing arrives for ``timeout_s`` seconds while the app waits for it raises
      ``BodyTimeout`` (408, the connection closed), so a stalled client holds nothing for longer;
    - answering before the client has sent its whole body (413, 401, 415, 503 ...) and then closing
      makes the kernel reset the connection, and most clients lose the answer: the rest of the body
      is read and discarded first (never stored), up to DRAIN_MAX bytes and while it keeps arriving
      (``timeout_s``), past which the answer goes out with ``Connection: close``. A client that sent
      ``Expect: 100-continue`` (curl does for large bodies) and whose body was not asked for yet gets
      the answer at once, without sending the body;
    - on the paths of ``duplex_paths`` (``/v1/stream``) a 200 answer goes out while the body still
      arrives: it is read as the answer is written (refusals are still held until the body is read).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float = 30.0,
        path_limits: dict[str, tuple[int, str]] | None = None,
        duplex_paths: frozenset[str] = frozenset(),
    ):
        self.app, self.max_bytes, self.timeout_s = app, int(max_bytes), float(timeout_s)
        self.path_limits = dict(path_limits or {})
        self.duplex_paths = frozenset(duplex_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        limit, advice = self.path_limits.get(scope["path"], (self.max_bytes, UPLOAD_ADVICE))
        state = {
            "seen": 0,
            "done": False,
            "asked": False,
            "expect": headers.get(b"expect", b"").lower() == b"100-continue",
        }

        async def counted() -> Message:
            state["asked"] = True
            if state["done"]:  # the body has ended: a wait for the disconnect is no stalled body
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                state["done"] = True  # nothing to drain: the 408 goes out at once, and the connection closes
                raise BodyTimeout(self.timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["done"] = True
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    raise BodyTooLarge(limit, advice)
            return message

        duplex = scope["path"] in self.duplex_paths

        async def answer(message: Message) -> None:
            if (
                message["type"] == "http.response.start"
                and not state["done"]
                and not (duplex and message.get("status") == 200)
                and not (state["expect"] and not state["asked"])
            ):
                state["done"] = True
                if not await _drain(receive, DRAIN_MAX, self.timeout_s):
                    message = _closing(message)
            await send(message)

        refusal = self._refusal(headers, state, limit, advice)
        if refusal is not None:
            return await refusal(scope, receive, answer)
        return await self.app(scope, counted, answer)

    @staticmethod
    def _refusal(headers: dict, state: dict, limit: int, advice: str) -> JSONResponse | None:
        """The answer to a request refused on its headers alone (bad or too large Content-Length)."""
        length = headers.get(b"content-length")
        if length is None:
            if b"transfer-encoding" not in headers:
                state["done"] = True  # no body
            return None
        try:
            declared = int(length)
        except ValueError:
            return JSONResponse({"error": "invalid Content-Length header"}, 400)
        if declared == 0:
            state["done"] = True
        if declared <= limit:
            return None
        exc = BodyTooLarge(limit, advice)
        if declared > DRAIN_MAX:
            state["done"] = True  # not worth reading: the connection is closed after the answer
        return JSONResponse({"error": exc.detail}, 413, headers=exc.headers)


class UploadSlots:
    """At most ``max_uploads`` uploads being received at once; one more is refused at once (503)."""

    def __init__(self, max_uploads: int):
        self.max_uploads = int(max_uploads)
        self.held = 0  # only touched on the event loop

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``max_uploads`` places while the body arrives.

        Raises:
            UploadsFull: all places are taken (503 with Retry-After).
        """
        if self.held >= self.max_uploads:
            raise UploadsFull(self.max_uploads)
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1


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

    def check(self) -> None:
        """Refuse now (QueueFull) when every place is taken: an upload is then not received in vain."""
        with self._lock:
            if self.held >= self.max_queue:
                raise QueueFull(self.retry_after(), self.max_queue)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
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

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the inference threads; awaits its result."""

        def timed() -> T:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - t0)

        return await asyncio.get_running_loop().run_in_executor(self._executor, timed)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the inference threads, from a thread other than the event loop's
        (a stream's windows): blocks until it is done, in turn with the requests' work."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def check_bindable(host: str, port: int) -> None:
    """Refuse a ``--host``/``--port`` this process cannot bind (in use, not an address of this machine)
    before the run is loaded, rather than after. A free port may still be taken before uvicorn binds it.

    Raises:
        ConfigError: the address is in use or cannot be bound here.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(
            f"--host {host}: not an address or name this machine resolves ({err.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(address)
        except OSError as err:
            hint = (
                "another server (vidcls serve?) is using it: choose another --port"
                if err.errno == errno.EADDRINUSE
                else "choose an address of this machine or another --port"
            )
            raise ConfigError(f"cannot listen on {host} port {port} ({err.strerror}); {hint}") from None
