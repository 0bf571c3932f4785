"""Uploads of the HTTP service: a multipart/form-data body streamed to a temporary file, and the sweep of
the temporary files that a killed server left behind.

- ``receive_upload``: parses the body as it streams in and writes its one file part to a temporary file
  in chunks; nothing holds the whole body in memory, and the file is removed on every error path. The
  file name may come as ``filename="..."`` or as RFC 5987 ``filename*=UTF-8''...`` (which wins, RFC
  6266); a second file part in the same form is refused (422): one file per request. The text fields
  asked for (``text_fields``, e.g. ``segments``) are kept, each up to ``MAX_TEXT`` bytes.
- ``sweep_stale_uploads``: at start, removes this module's own temporary files that a killed server
  left (``vidcls-upload-<pid>-XXXXXXXX.<video extension>``, older than this process); nothing else.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import psutil
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..features.video import VIDEO_EXTENSIONS

if TYPE_CHECKING:  # a TypedDict python-multipart defines for type checkers only
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger("vidcls.serve")

UPLOAD_PREFIX = "vidcls-upload-"
MAX_FILENAME = 255
FIELDS_LISTED = 10  # the fields a "no file field" message names; the others are counted
MAX_TEXT = 256  # bytes of a kept text field
# The names tempfile.mkstemp gives with prefix UPLOAD_PREFIX + "<pid>-" and a video suffix (8 characters
# of its alphabet between them), and the same without "<pid>-" (uploads of vidcls before the pid was added).
_OURS = re.compile(re.escape(UPLOAD_PREFIX) + r"(?:(?P<pid>[0-9]+)-)?[a-z0-9_]{8}(?P<ext>\.[a-z0-9]+)")
# one parameter of a header value: ; key=value or ; key="quoted \"value\""
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass
class Upload:
    path: Path
    filename: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)  # the kept text fields


def clean_filename(raw: str | None) -> str:
    """The base name of a client's file name, without control characters, at most 255 characters."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:MAX_FILENAME] or "upload"


def _suffix(filename: str) -> str:
    """The upload's extension when it is a video one (FFmpeg takes it as a hint), else .mp4."""
    ext = Path(filename).suffix.lower()
    return ext if ext in VIDEO_EXTENSIONS else ".mp4"


def _utf8(text: str) -> str:
    """A header value read as Latin-1 (byte for byte), as the UTF-8 that clients send."""
    return text.encode("latin-1").decode("utf-8", "replace")


def _extended(value: str) -> str:
    """An RFC 5987 ext-value (``charset'language'percent-encoded``) as text."""
    parts = value.split("'", 2)
    if len(parts) != 3:
        return _utf8(value)
    raw = unquote_to_bytes(parts[2])
    try:
        return raw.decode(parts[0] or "utf-8", "replace")
    except LookupError:  # an unknown charset
        return raw.decode("utf-8", "replace")


def disposition(header: bytes) -> tuple[str, str | None]:
    """(field name, file name or None for a text field) of a part's Content-Disposition header."""
    params: dict[str, str] = {}
    for key, value in _PARAM.findall(header.decode("latin-1")):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(key.lower(), value)
    name = _utf8(params.get("name", ""))
    if "filename*" in params:
        return name, _extended(params["filename*"])
    return name, _utf8(params["filename"]) if "filename" in params else None


class _FilePart:
    """python-multipart callbacks that write the file part named ``field`` to a temporary file."""

    def __init__(self, field: str, tmp_dir: str | None, text_fields: Iterable[str] = ()):
        self.field, self.tmp_dir = field, tmp_dir
        self.text_fields = frozenset(text_fields)
        self.text: dict[str, bytes] = {}
        self._text: str | None = None  # the kept text field being read
        self.fields_seen: list[str] = []  # the first FIELDS_LISTED of the ``parts``
        self.parts = self.files = 0
        self.upload: Upload | None = None
        self._file: IO[bytes] | None = None
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""
        self._writing = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._hfield,
            "on_header_value": self._hvalue,
            "on_header_end": self._hend,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._name, self._value = {}, b"", b""

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]  # python-multipart caps a part's headers (about 4 KB)

    def _hend(self) -> None:
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name = self._value = b""

    def _headers_done(self) -> None:
        name, filename = disposition(self._headers.get(b"content-disposition", b""))
        self.parts += 1
        if len(self.fields_seen) < FIELDS_LISTED:
            self.fields_seen.append(f"{name!r} ({'text' if filename is None else 'file'})")
        if filename is None:
            self._text = name if name in self.text_fields else None
            if self._text is not None:
                if self._text in self.text:
                    raise HTTPException(422, f"the form has the field {name!r} twice; send it once")
                self.text[self._text] = b""
            return
        self._text = None
        self.files += 1
        if self.files > 1:
            raise HTTPException(
                422,
                f"send one file per request: this form has a second file (in the field "
                f"{name!r}); upload each video in its own request, as {self.field}=@VIDEO",
            )
        self._writing = name == self.field
        if self._writing:
            filename = clean_filename(filename)
            fd, path = tempfile.mkstemp(
                prefix=f"{UPLOAD_PREFIX}{os.getpid()}-", suffix=_suffix(filename), dir=self.tmp_dir
            )
            self._file = os.fdopen(fd, "wb")
            self.upload = Upload(Path(path), filename, 0)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._text is not None:
            self.text[self._text] += data[start:end]
            if len(self.text[self._text]) > MAX_TEXT:
                raise HTTPException(422, f"the form field {self._text!r} is longer than {MAX_TEXT} bytes")
        if self._writing:
            assert self._file is not None and self.upload is not None  # opened when writing began
            self._file.write(data[start:end])
            self.upload.size += end - start

    def _end(self) -> None:
        self._text = None
        if self._writing:
            assert self._file is not None  # opened when writing began
            self._file.close()
            self._writing = False

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.upload is not None:
            self.upload.path.unlink(missing_ok=True)


async def receive_upload(
    request: Request, field: str = "file", tmp_dir: str | None = None, text_fields: Iterable[str] = ()
) -> Upload:
    """Stream the multipart body of ``request`` and store its file field ``field`` in ``tmp_dir``; the
    text fields named in ``text_fields`` that the form has go in ``Upload.fields`` (UTF-8 text).

    The caller removes ``Upload.path``; on any error here it is already removed.

    Raises:
        HTTPException: 415 not multipart/form-data, 400 a malformed body, 422 no such file field or more
            than one file; 413 (``BodyLimit``) a body over the limit, 408 (``BodyLimit``) one that stalls.
    """
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise HTTPException(415, f"send the video as multipart/form-data with a file field named '{field}'")
    part = _FilePart(field, tmp_dir, text_fields)
    parser = MultipartParser(boundary, part.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if part.upload is None:
            more = part.parts - len(part.fields_seen)
            seen = ", ".join(part.fields_seen + ([f"{more} more"] if more else [])) or "none"
            raise HTTPException(
                422,
                f"no file field named '{field}' in the form (fields sent: {seen}); "
                f"send the video as {field}=@VIDEO",
            )
        if part._writing:
            raise HTTPException(400, "the multipart body ends inside the file; the upload is incomplete")
        part.upload.fields = {k: v.decode("utf-8", "replace").strip() for k, v in part.text.items()}
        return part.upload
    except MultipartParseError as err:
        part.discard()
        raise HTTPException(400, f"malformed multipart/form-data body ({err})") from None
    except BaseException:
        part.discard()
        raise


def _is_stale(entry: os.DirEntry, started: float) -> bool:
    """``entry`` is an upload of ours that no running server is writing or reading."""
    match = _OURS.fullmatch(entry.name)
    if match is None or match["ext"] not in VIDEO_EXTENSIONS:
        return False
    pid = match["pid"]
    if pid is not None and int(pid) != os.getpid() and psutil.pid_exists(int(pid)):
        return False  # another server that is still running (same pid as ours: a previous incarnation)
    st = entry.stat(follow_symlinks=False)
    mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return stat.S_ISREG(st.st_mode) and mine and st.st_mtime < started


def sweep_stale_uploads(tmp_dir: str | None = None, started: float | None = None) -> int:
    """Remove the uploads that a killed server left in ``tmp_dir`` (None: the system's temporary folder).

    Only regular files named as ``receive_upload`` names them, owned by this user, last modified before
    ``started`` (None: this process's start), and not of a server that is still running (the pid in
    the name). Any other file is left alone. Returns how many were removed.
    """
    folder = tmp_dir or tempfile.gettempdir()
    started = psutil.Process().create_time() if started is None else started
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError as err:
        log.warning("cannot look for stale uploads in %s (%s)", folder, err)
        return 0
    for entry in entries:
        try:
            if _is_stale(entry, started):
                os.unlink(entry.path)
                removed += 1
        except OSError as err:
            log.warning("cannot remove the stale upload %s (%s)", entry.path, err)
    if removed:
        log.warning("removed %d stale upload(s) left by a stopped server in %s", removed, folder)
    return removed
