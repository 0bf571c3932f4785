"""``train_members``: the seed ensemble's members one after another, or spread over K processes at once
(``--parallel-members K``, one member per GPU where there are GPUs).

A member is the same whichever path trains it: ``member.train_member`` seeds everything from ``seed + i``,
draws its batches from private generators and writes only ``RUN_DIR/members/<i>/``, so a process of
its own changes nothing but the wall time (tested: equal weights and histories).

The parallel path is a ``ProcessPoolExecutor`` over ``spawn`` processes: fork after torch (or CUDA)
is initialised is unsafe, and spawn gives every member a clean interpreter. Since Python 3.9 the
pool's processes are not daemonic, so each may start its own ``--workers`` DataLoader workers.
Each task is the run's ``TrainContext`` pickled (``for_process``: the member's device, without the
parent's log, monitor and torchrun group) and the member's index; a ``FeatureStore`` of the splits
drops its HDF5 handle when pickled and reopens the file in the process that reads it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import gc
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from ..errors import ConfigError
from .context import TrainContext
from .loop import TrainState
from .member import train_member

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

    from ..reporting.monitor import ResourceMonitor

TORCHRUN_CLASH = "--parallel-members and torchrun are two ways to use several processes; pick one"

# After Ctrl-C the members get this long to stop by themselves (a terminal sends SIGINT to every
# process of the group) before the parent signals the ones still running.
INTERRUPT_GRACE_S = 1.0

# What a member process sends the parent: ("start", member, pid) once it begins, ("log", member, line).
Message = tuple[str, int, Any]


def check_parallel(parallel_members: int, world: int) -> None:
    """Refuse ``--parallel-members`` > 1 inside a torchrun job of ``world`` > 1 processes.

    Raises:
        ConfigError: both asked for at once.
    """
    if parallel_members > 1 and world > 1:
        raise ConfigError(TORCHRUN_CLASH)


def member_device(device: torch.device, member: int, n_gpus: int) -> torch.device:
    """Where member ``member`` trains: round-robin over the ``n_gpus`` GPUs for a plain ``cuda``
    (``auto``), so K = n_gpus gives one member per GPU; a device with an index (``cuda:1``) is the
    user's choice and holds every member; CPU stays CPU."""
    if device.type != "cuda" or device.index is not None or n_gpus < 1:
        return device
    return torch.device("cuda", member % n_gpus)


def worker_threads(k: int, cpus: int, current: int) -> int:
    """CPU threads of each of ``k`` member processes. Each would otherwise start as many intra-op
    threads as the machine has cores: k x cores threads fighting over the cores run slower than one
    member alone. ``current`` (this process's count) is a cap the user may have set (OMP_NUM_THREADS)."""
    return max(1, min(current, cpus // k))


def train_members(ctx: TrainContext) -> list[TrainState]:
    """Train members ``0 .. cfg.members - 1`` (seeds ``seed + i``), in ``cfg.parallel_members`` processes.

    Args:
        ctx: what every member trains with; ``ctx.monitor`` (the run's ``ResourceMonitor``) gets
            ``member i start`` / ``member i end`` records; the sequential path hands ``ctx.dist`` (the
            torchrun job) to ``train_member``.
    Returns:
        Every member's ``TrainState``, in member order.
    Raises:
        ConfigError: ``--parallel-members`` > 1 under torchrun.
        The first failing member's error, its message prefixed ``member i:`` (parallel path); the
        other members' finished epochs stay on disk for ``--resume``.
        KeyboardInterrupt: Ctrl-C, once every member process has stopped.
    """
    check_parallel(ctx.cfg.parallel_members, ctx.dist.world)
    k = min(ctx.cfg.parallel_members, ctx.cfg.members)
    if k <= 1:
        return _train_sequential(ctx)
    return _train_parallel(ctx, k)


def _train_sequential(ctx: TrainContext) -> list[TrainState]:
    monitor = _run_monitor(ctx)
    states = []
    for i in range(ctx.cfg.members):
        monitor.record(f"member {i} start")
        states.append(train_member(ctx, i))
        # the spec: without this, reserved GPU memory stays with the caching allocator between members
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        monitor.record(f"member {i} end")
    return states


def _run_monitor(ctx: TrainContext) -> ResourceMonitor:
    """The run's monitor: ``fit`` gives ``train_members`` one (only a member process's context has none)."""
    assert ctx.monitor is not None, "train_members records every member in the run's ResourceMonitor"
    return ctx.monitor


def _train_parallel(ctx: TrainContext, k: int) -> list[TrainState]:
    """One pool task per member, in member order; the parent relays the members' log lines."""
    members = ctx.cfg.members
    n_gpus = torch.cuda.device_count() if ctx.device.type == "cuda" else 0
    devices = [member_device(ctx.device, i, n_gpus) for i in range(members)]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = worker_threads(k, cpus, torch.get_num_threads())
    where = (
        ", ".join(f"{i}: {d}" for i, d in enumerate(devices)) if n_gpus else f"cpu, {threads} threads each"
    )
    ctx.log(f"--parallel-members {k}: {members} members in {k} processes ({where})")
    # The parent trains nothing: the spec's gc.collect/empty_cache between members runs in the member processes.

    spawn = mp.get_context("spawn")
    lines, stop = spawn.Queue(), spawn.Event()
    interruptible = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    pool = cf.ProcessPoolExecutor(
        k,
        mp_context=spawn,
        initializer=_init_worker,
        initargs=(lines, stop, threads, interruptible, mp.get_start_method()),
    )
    # each task is pickled to its process: the context without the parent's log, monitor and group
    futures = {pool.submit(_member_task, ctx.for_process(devices[i]), i): i for i in range(members)}
    tasks = _Members(futures, lines, stop, ctx.log, _run_monitor(ctx))
    try:
        failure = tasks.wait()
    except KeyboardInterrupt:
        tasks.interrupt()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        tasks.drain(0.0)  # the workers have exited: their last lines are all in the queue now
        lines.close()
    if failure is not None:
        _raise_member_error(*failure)
    states = []
    for f in futures:
        state = f.result()
        # None: skipped once the stop event was set, which only a failure or Ctrl-C does (both raised above)
        assert state is not None
        states.append(state)
    return states


# ---------------------------------------------------------------- parent side


@dataclass
class _Members:
    """The parent's view of the member tasks: relays their log lines, records start and end, and stops
    them on the first failure or on Ctrl-C."""

    futures: dict[cf.Future[TrainState | None], int]  # Future -> member index
    lines: Queue[Message]  # spawn Queue of ("start", i, pid) and ("log", i, line)
    stop: Event  # spawn Event: set, a member not yet started returns None at once
    log: Callable[[str], None]
    monitor: ResourceMonitor
    pids: dict[int, int] = field(default_factory=dict)  # member -> pid of the process training it
    ended: set[int] = field(default_factory=set)

    def drain(self, timeout: float) -> None:
        """Handle every queued message, waiting up to ``timeout`` seconds for the first."""
        block = timeout > 0
        while True:
            try:
                kind, i, payload = self.lines.get(timeout=timeout) if block else self.lines.get_nowait()
            except queue.Empty:
                return
            block = False
            if kind == "start":
                self.pids[i] = payload
                self.monitor.record(f"member {i} start")
            else:
                for part in payload.splitlines() or [""]:
                    self.log(f"[member {i}] {part}")

    def wait(self) -> tuple[int, BaseException] | None:
        """Until every task is done; returns the first failure as ``(member, exception)``, or None.
        After a failure the members not yet started are skipped and the running ones finish."""
        failure = None
        while len(self.ended) < len(self.futures):
            self.drain(0.2)
            for f, i in self.futures.items():
                if i in self.ended or not f.done():
                    continue
                self.ended.add(i)
                exc = None if f.cancelled() else f.exception()
                if i in self.pids:
                    self.monitor.record(f"member {i} end")
                if exc is not None:
                    self.log(f"[member {i}] failed: {type(exc).__name__}: {exc}")
                    if failure is None:
                        failure = (i, exc)
                        self._skip_pending()
                        self.log(
                            "members not started yet are skipped; the running ones finish (Ctrl-C stops "
                            "them); every finished epoch stays on disk for --resume"
                        )
        return failure

    def interrupt(self) -> None:
        """Ctrl-C: skip the members not started, give the running ones ``INTERRUPT_GRACE_S`` to stop by
        themselves, SIGINT the rest (they stop after the epoch writes in hand), and wait for them."""
        self.log("interrupted: stopping the member processes")
        self._skip_pending()
        running = [f for f in self.futures if not f.done()]
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while time.monotonic() < deadline and not all(f.done() for f in running):
            self.drain(0.1)
        self.drain(0.0)
        for f, i in self.futures.items():
            if not f.done() and i in self.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pids[i], signal.SIGINT)
        cf.wait(running)

    def _skip_pending(self) -> None:
        self.stop.set()  # the pool may already have handed a task to a process: that task sees this
        for f in self.futures:
            f.cancel()


def _raise_member_error(member: int, exc: BaseException) -> NoReturn:
    """Raise ``exc`` with ``member i:`` in its message (same type, so the CLI still prints a VidclsError
    or a diverged loss as one line); an exception that cannot be rebuilt that way (an OSError with its
    errno, say) is raised as it is, with a note naming the member."""
    if isinstance(exc, KeyboardInterrupt):
        raise KeyboardInterrupt
    if isinstance(exc, BrokenProcessPool):
        raise BrokenProcessPool(
            f"member {member}: its process died without a Python error ({exc}); killed for memory? (lower "
            f"--parallel-members or --batch-size). A script that calls vidcls with parallel_members > 1 "
            f"must do so under `if __name__ == '__main__':` (spawn imports the script again). Finished "
            f"epochs are kept: continue with --resume"
        ) from exc
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        try:
            named = type(exc)(f"member {member}: {exc.args[0]}")
        except Exception:  # noqa: BLE001 - a constructor with another signature: raise it as it is
            named = None
        if named is not None:
            raise named from exc
    if sys.version_info >= (3, 11):  # add_note is new in 3.11: on 3.10 the error goes without the note
        exc.add_note(f"raised while training member {member} in its --parallel-members process")
    raise exc


# ---------------------------------------------------------------- member process side

# Set by ``_init_worker`` in every pool process before it runs a task.
_LINES: Queue[Message] | None = None
_STOP: Event | None = None
_INTERRUPTIBLE = False


def _init_worker(
    lines: Queue[Message], stop: Event, threads: int, interruptible: bool, start_method: str
) -> None:
    global _LINES, _STOP, _INTERRUPTIBLE
    _LINES, _STOP, _INTERRUPTIBLE = lines, stop, interruptible
    # A spawned process makes "spawn" its default start method, so its DataLoader workers would each
    # import torch and vidcls again (~3 s per loader and member); the parent's default (fork on Linux)
    # starts them as a plain run does.
    mp.set_start_method(start_method, force=True)
    # Between members SIGINT is ignored: an idle pool process that dies of a KeyboardInterrupt breaks
    # the pool and prints a traceback. While a member trains, Ctrl-C stops it as in a plain run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _interrupt_once(signum: int, frame: FrameType | None) -> NoReturn:
    # Ctrl-C reaches a member twice (the terminal signals the whole process group, then the parent
    # signals the members still running): a second KeyboardInterrupt must not cut the first one's cleanup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _member_task(ctx: TrainContext, member: int) -> TrainState | None:
    """Train one member in this pool process (``ctx``: ``TrainContext.for_process``); None when the parent
    has stopped the run before it began."""
    assert _LINES is not None and _STOP is not None  # _init_worker ran first in this process
    lines, stop = _LINES, _STOP
    if stop.is_set():
        return None
    lines.put(("start", member, os.getpid()))
    device = ctx.device
    if device.type == "cuda":
        torch.cuda.set_device(device)  # CUDA work without an explicit device (handles, caches) goes there too

    def log(line: object) -> None:
        lines.put(("log", member, str(line)))

    if _INTERRUPTIBLE:
        signal.signal(signal.SIGINT, _interrupt_once)
    try:
        return train_member(dataclasses.replace(ctx, log=log), member)
    except BaseException:
        stop.set()  # at once, not when the parent notices: no further member starts after a failure
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # as between sequential members: this process may train another member next
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
