"""Resource monitor: CPU / RAM / GPU memory samples, appended to a JSON log during a run.

The log (``RUN_DIR/results/resource_utilization_log.json``) is always a complete JSON array:
every record rewrites the whole file through :func:`vidcls.fsutil.atomic_write_json`, so a run
killed at any moment leaves the previous valid version behind, never a truncated one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import warnings
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from ..utils.fs import atomic_write_json

log = logging.getLogger(__name__)

FIELDS = (
    "timestamp",
    "cpu_percent",
    "ram_used_gb",
    "ram_total_gb",
    "ram_percent",
    "gpu_allocated_gb",
    "gpu_reserved_gb",
    "gpu_max_allocated_gb",
)
# Optional fields, present only when NVML (pynvml) is importable and finds a GPU.
NVML_FIELDS = ("gpu_utilization_percent", "gpu_memory_used_gb")

_GB = 1024**3  # "gb" fields are GiB, the unit torch and nvidia-smi report memory in

# psutil.cpu_percent(interval=None) measures since the previous call; the very first call has
# no reference point and returns a meaningless 0.0, so prime it once at import.
psutil.cpu_percent(interval=None)

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {"tried": False, "module": None, "handle": None}


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _torch_gpu_fields() -> dict[str, float]:
    out = {"gpu_allocated_gb": 0.0, "gpu_reserved_gb": 0.0, "gpu_max_allocated_gb": 0.0}
    # The caching-allocator stats are per process: if this process never imported torch it
    # cannot hold any torch GPU memory, so skip the (1-2 s) import instead of paying for zeros.
    torch = sys.modules.get("torch")
    if torch is None:
        return out
    try:
        # is_initialized() is checked so that a monitor thread never creates a CUDA context
        # (hundreds of MB of GPU memory) in a process that has not used the GPU yet.
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return out
        out["gpu_allocated_gb"] = torch.cuda.memory_allocated() / _GB
        out["gpu_reserved_gb"] = torch.cuda.memory_reserved() / _GB
        out["gpu_max_allocated_gb"] = torch.cuda.max_memory_allocated() / _GB
    except Exception as exc:  # a monitoring failure must never take the training run down
        log.debug("torch.cuda memory query failed: %s", exc)
    return out


def _nvml_device_index() -> int:
    # NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES; map the first visible
    # device back to its physical index when the variable holds plain integers.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(visible) if visible.isdigit() else 0


def _nvml_handle() -> tuple[Any, Any] | tuple[None, None]:
    with _nvml_lock:
        if not _nvml_state["tried"]:
            # Tried once per process: a missing package or driver will not appear later, and
            # retrying nvmlInit on every sample would cost time for nothing.
            _nvml_state["tried"] = True
            try:
                import pynvml  # optional dependency (nvidia-ml-py)

                pynvml.nvmlInit()
                _nvml_state["handle"] = pynvml.nvmlDeviceGetHandleByIndex(_nvml_device_index())
                _nvml_state["module"] = pynvml
            except Exception as exc:
                log.debug("NVML unavailable: %s", exc)
        return _nvml_state["module"], _nvml_state["handle"]


def _nvml_fields() -> dict[str, float]:
    pynvml, handle = _nvml_handle()
    if pynvml is None:
        return {}
    try:
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"gpu_utilization_percent": float(util.gpu), "gpu_memory_used_gb": mem.used / _GB}
    except Exception as exc:
        log.debug("NVML query failed: %s", exc)
        return {}


def sample(tag: str | None = None) -> dict:
    """Take one resource sample.

    Args:
        tag: optional label stored under ``"tag"`` (e.g. ``"start"``, ``"periodic"``).

    Returns:
        A dict with every key of :data:`FIELDS` (``timestamp`` an ISO 8601 UTC string, the rest
        floats; GPU fields 0.0 without CUDA), plus :data:`NVML_FIELDS` when NVML works and
        ``"tag"`` when given.
    """
    vm = psutil.virtual_memory()
    rec: dict[str, Any] = {
        "timestamp": _utc_now(),
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "ram_used_gb": vm.used / _GB,
        "ram_total_gb": vm.total / _GB,
        "ram_percent": float(vm.percent),
    }
    rec.update(_torch_gpu_fields())
    rec.update(_nvml_fields())
    if tag is not None:
        rec["tag"] = tag
    return rec


def load_log(path: str | os.PathLike) -> list[dict]:
    """Read a resource log written by :class:`ResourceMonitor`.

    Args:
        path: the JSON log file.

    Returns:
        The list of records.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a JSON array of objects (json.JSONDecodeError included).
    """
    with open(path, "rb") as fh:
        data = json.loads(fh.read().decode("utf-8"))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a JSON array of objects")
    return data


def _move_aside(path: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():  # never overwrite an earlier corrupt copy kept for inspection
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target


class ResourceMonitor:
    """Append resource samples to a JSON log: at start, every ``interval_s`` seconds, and at stop.

    Args:
        path: log file, normally ``RUN_DIR/results/resource_utilization_log.json``. An existing
            valid log (resumed run) is loaded and appended to; an unparsable one is renamed to
            ``<name>.corrupt-<timestamp>`` with a warning and a fresh log is started.
        interval_s: seconds between ``"periodic"`` records.

    Raises:
        ValueError: ``interval_s`` is not a positive finite number.
    """

    def __init__(self, path: str | os.PathLike, interval_s: float = 1800.0, rank: int = 0):
        if not (isinstance(interval_s, (int, float)) and math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a positive number, got {interval_s!r}")
        self.path = Path(path)
        self.interval_s = float(interval_s)
        self.rank = rank  # under torchrun: the rank whose resources these are (field "rank")
        self.records: list[dict] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        if self.path.exists():
            try:
                self.records = load_log(self.path)
            except ValueError as exc:
                moved = _move_aside(self.path)
                warnings.warn(
                    f"resource log {self.path} is unreadable ({exc}); moved to {moved.name}, "
                    "starting a fresh log",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def record(self, tag: str | None = None) -> dict:
        """Take a sample, append it, and rewrite the whole log atomically.

        Args:
            tag: optional label for the record.

        Returns:
            The new record.
        """
        rec = {**sample(tag), "rank": self.rank}
        # The lock keeps the in-memory list and the file in step when the periodic thread and
        # the training loop record at the same moment; the write happens under it so a slower
        # writer can never replace the file with an older, shorter list.
        with self._lock:
            self.records.append(rec)
            atomic_write_json(self.path, self.records)
        return rec

    def _run(self) -> None:
        # Event.wait returns True as soon as stop() sets it, so stopping never waits an interval.
        while not self._stop_event.wait(self.interval_s):
            try:
                self.record("periodic")
            except Exception as exc:  # e.g. disk full: keep monitoring, the next write may work
                log.warning("resource monitor could not record: %s", exc)

    def start(self) -> ResourceMonitor:
        """Record ``"start"`` and launch the periodic daemon thread (no-op if already running).

        Returns:
            self, so ``mon = ResourceMonitor(p).start()`` works.

        Raises:
            RuntimeError: the monitor was already stopped (create a new one to resume).
        """
        if self._stopped:
            raise RuntimeError("ResourceMonitor cannot be restarted after stop()")
        if self._thread is not None:
            return self
        self.record("start")
        self._thread = threading.Thread(target=self._run, name="vidcls-resource-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the periodic thread and record ``"end"``; later calls do nothing."""
        if self._stopped or self._thread is None:
            return
        self._stopped = True
        self._stop_event.set()
        # Join before the final record so "end" is guaranteed to be the last entry in the log.
        self._thread.join()
        self.record("end")

    def absorb(self, paths: Iterable[str | os.PathLike]) -> None:
        """Merge other ranks' logs (``rank_log_path``) into this one, in time order, and delete them.
        Called by rank 0 once every rank has stopped its monitor: the job's one resource log."""
        found = [Path(p) for p in paths if Path(p).is_file()]
        if not found:
            return
        with self._lock:
            for p in found:
                try:
                    self.records.extend(load_log(p))
                except ValueError as exc:  # a rank killed mid-write cannot do this (atomic); be safe anyway
                    log.warning("resource log %s unreadable (%s); left out", p, exc)
            self.records.sort(key=lambda r: r.get("timestamp", ""))
            atomic_write_json(self.path, self.records)
        for p in found:
            p.unlink(missing_ok=True)

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def summarize(records: list[dict]) -> dict:
    """Mean/min/max of every numeric field.

    Args:
        records: resource records (as from :func:`load_log`).

    Returns:
        ``{field: {"mean": x, "min": x, "max": x}}`` over the records that hold the field
        (``timestamp`` and ``tag`` skipped); ``{}`` for no records.
    """
    values: dict[str, list[float]] = {}
    for rec in records:
        for key, val in rec.items():
            if key in ("timestamp", "tag"):
                continue
            # bool is an int subclass but not a measurement
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                values.setdefault(key, []).append(float(val))
    return {key: {"mean": sum(v) / len(v), "min": min(v), "max": max(v)} for key, v in values.items()}


def rank_log_path(path: str | os.PathLike, rank: int) -> Path:
    """Where rank ``rank`` (> 0) keeps its records until rank 0 absorbs them into ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
