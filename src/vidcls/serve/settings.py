"""How ``vidcls serve`` runs and who may reach it: the service's settings and limits, the checks of
``--port`` and ``--body-timeout`` (made before the run is loaded), the API-key rule, and the address to open."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

API_KEY_ENV = "VIDCLS_API_KEY"
API_KEY_HEADER = "X-API-Key"
FEATURES_MAX_MB = 32.0  # a features body is parsed in memory (about 10x its size) on the event loop


@dataclass
class ServeSettings:
    """How the service runs. ``api_key``: required in X-API-Key on /v1/* when set. ``tmp_dir``: where
    uploads are streamed (None: the system's, i.e. $TMPDIR). ``run_dir``: where summary.json and
    calibration.json are read for /v1/model (None: no metrics). ``max_uploads``: uploads being received
    at once (apart from ``max_queue``); ``body_timeout_s``: a request body from which nothing arrives
    for this long gets 408 (a number, or its text as given on the command line)."""

    max_upload_mb: float = 500.0
    max_queue: int = 8
    api_key: str | None = None
    tmp_dir: str | None = None
    run_dir: str | None = None
    workers: int = 1
    max_uploads: int = 8
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not (self.max_upload_mb > 0 and math.isfinite(self.max_upload_mb)):
            raise ConfigError(f"--max-upload-mb must be a positive number, got {self.max_upload_mb}")
        if int(self.max_queue) < 1:
            raise ConfigError(f"--max-queue must be >= 1, got {self.max_queue}")
        if int(self.max_uploads) < 1:
            raise ConfigError(f"--max-uploads must be >= 1, got {self.max_uploads}")
        self.body_timeout_s = check_body_timeout(self.body_timeout_s)
        if self.tmp_dir is not None and not Path(self.tmp_dir).is_dir():
            raise ConfigError(f"upload directory {self.tmp_dir} does not exist")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_features_bytes(self) -> int:
        return min(self.max_upload_bytes, int(FEATURES_MAX_MB * 2**20))


def check_body_timeout(value: float | str) -> float:
    """``--body-timeout`` as a positive, finite number of seconds.

    Raises:
        ConfigError: anything else (checked before the run is loaded).
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"--body-timeout must be a positive number of seconds, got {value!r}")
    return seconds


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_api_key(host: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key /v1/* requires: $VIDCLS_API_KEY when set (None: open, loopback only).

    Raises:
        ConfigError: ``host`` is not a loopback address and no key is set.
    """
    key = environ.get(API_KEY_ENV) or None
    if key is not None and not (key.isascii() and key.isprintable() and not any(c.isspace() for c in key)):
        raise ConfigError(
            f"{API_KEY_ENV} holds characters an HTTP header cannot carry (non-ASCII, spaces or "
            f"control characters): browsers and most clients could never send it; use printable "
            f'ASCII, e.g. python -c "import secrets; print(secrets.token_urlsafe(24))"'
        )
    if key is None and not is_loopback(host):
        raise ConfigError(
            f"--host {host} exposes the service beyond this machine: set {API_KEY_ENV} to a "
            f"secret first (clients send it in the {API_KEY_HEADER} header), or bind 127.0.0.1"
        )
    return key


def check_port(port: int | str) -> int:
    """``--port`` as an int in 1..65535.

    Raises:
        ConfigError: anything else (checked before the run is loaded).
    """
    try:
        value = int(port)
    except (TypeError, ValueError):
        value = -1
    if isinstance(port, bool) or not 1 <= value <= 65535 or str(value) != str(port).strip():
        raise ConfigError(f"--port must be an integer from 1 to 65535, got {port!r}")
    return value


def service_url(host: str, port: int) -> str:
    """The address to open: IPv6 hosts in brackets (``http://[::1]:8000/``)."""
    return f"http://[{host.strip('[]')}]:{port}/" if ":" in host else f"http://{host}:{port}/"
