"""One command at a time per run directory: an exclusive ``fcntl.flock`` on ``<dir>/.lock``.

The OS drops a flock when its holder exits, however it exits (SIGKILL and power loss included), so
a crashed command never leaves a stale lock behind. The file records the holder (pid and command)
so that a refused command can say whom it waits for. The file is never deleted: unlinking a lock
file that another process has already opened would let two processes lock two different files.

Within one process the lock is re-entrant (``fit`` holds it and calls ``write_report``, which takes
it too): a per-process registry counts the nested holds of each directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import RunLockedError

LOCK_NAME = ".lock"

_held: dict[str, list[int]] = {}  # real path of the directory -> [fd, nesting depth]
_registry_guard = threading.Lock()


def _forget_in_child() -> None:
    # A forked child (a DataLoader worker) inherits the descriptor, and a flock lives until the last
    # descriptor of it is closed: without this, a killed trainer's orphaned workers would keep its
    # run locked. Closing (not unlocking) drops only the child's share of the lock.
    for fd, _ in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike, command: str, *, create: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` for the ``with`` block.

    Args:
        directory: the run (or feature) directory.
        command: what the holder is doing, e.g. "train"; shown to refused commands.
        create: make ``directory`` (and its parents) first; otherwise it must exist.

    Returns:
        A context manager that yields ``directory`` as a Path.

    Raises:
        RunLockedError: another process holds the lock; the message names its pid and command.
        OSError: the directory is missing (without ``create``) or ``.lock`` cannot be created there.
    """
    directory = Path(directory)
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(directory)
    _acquire(directory, key, command)
    try:
        yield directory
    finally:
        _release(key)


def _acquire(directory: Path, key: str, command: str) -> None:
    with _registry_guard:
        if key in _held:  # this process holds it already
            _held[key][1] += 1
            return
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLockedError(
                f"{directory} is in use by {_holder(directory)}; wait for it to finish or use another RUN_DIR"
            ) from None
        raise
    try:
        # written in place, not atomically: replacing the file would give it a new, unlocked inode
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} vidcls {command}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    with _registry_guard:
        _held[key] = [fd, 1]


def _release(key: str) -> None:
    with _registry_guard:
        entry = _held[key]
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
    fd = entry[0]
    try:
        os.ftruncate(fd, 0)  # a finished command leaves no holder behind in the file
    except OSError:
        pass
    os.close(fd)  # closing the last descriptor releases the flock


def _holder(directory: Path, attempts: int = 20) -> str:
    """``pid N (vidcls train)`` from the lock file; the holder writes it just after locking, so an
    empty file is retried briefly before settling for a vaguer answer."""
    for _ in range(attempts):
        try:
            text = (directory / LOCK_NAME).read_text().strip()
        except OSError:
            text = ""
        pid, _, what = text.partition(" ")
        if pid.isdigit():
            return f"pid {pid} ({what or 'vidcls'})"
        time.sleep(0.05)
    return "another process"
