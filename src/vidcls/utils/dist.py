"""torch.distributed, as vidcls uses it under ``torchrun``: who am I, start/stop the process group,
and the three collectives the training loop needs (broadcast, all-gather, barrier) as Python objects.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in every
worker's environment; a plain ``vidcls`` run has none of them and is world 1, rank 0, with no process
group at all. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from ..errors import ConfigError, RankLostError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (world 1: a plain run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes files (checkpoints, metrics, plots, summary, report)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def env_dist() -> Dist:
    """The rank and world size torchrun put in the environment (``Dist()`` without torchrun).

    Raises:
        ConfigError: the variables are present but not consistent (RANK outside [0, WORLD_SIZE)).
    """
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(
            f"WORLD_SIZE/RANK/LOCAL_RANK must be integers (torchrun sets them); got "
            f"{os.environ.get('WORLD_SIZE')!r}/{os.environ.get('RANK')!r}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={world}); launch with torchrun")
    return Dist(rank, world, local)


def init(dist: Dist, device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group when ``dist`` is more than one process; returns this rank's device
    (``cuda:LOCAL_RANK`` when ``device`` is CUDA, else ``device``)."""
    if not dist.active:
        return device
    if device.type == "cuda":
        gpus, local_world = torch.cuda.device_count(), int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
        if local_world > gpus:  # two ranks on one GPU: NCCL refuses it later, with a less clear message
            raise ConfigError(
                f"torchrun starts {local_world} processes on this machine but it has {gpus} "
                f"GPU(s); use --nproc_per_node={gpus} (one process per GPU) or --device cpu"
            )
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        cuda = device.type == "cuda"
        with lost_ranks(dist, timeout_s, "the same command once every node can start"):
            tdist.init_process_group(
                "nccl" if cuda else "gloo",
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=device if cuda else None,  # None: init_process_group's default
            )
    return device


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def broadcast(obj: T, dist: Dist) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not dist.active:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: T, dist: Dist) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.active:
        return [obj]
    out: list[Any] = [None] * dist.world
    tdist.all_gather_object(out, obj)
    return out


def barrier(dist: Dist) -> None:
    if dist.active:
        tdist.barrier()


# What a collective raises when a peer is gone: a DistError (NCCL, newer gloo) or gloo's RuntimeError
_LOST_PEER = ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out")


@contextlib.contextmanager
def lost_ranks(dist: Dist, timeout_s: float, resume_hint: str) -> Iterator[None]:
    """Turn a collective that failed because another rank died or hung (no answer within ``timeout_s``)
    into one line naming this rank (torchrun then stops the job and names the rank that died)."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if not dist.active or not (isinstance(exc, tdist.DistError) or any(s in text for s in _LOST_PEER)):
            raise
        first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
        raise RankLostError(
            f"rank {dist.rank}: the other ranks stopped answering ({first}); one died or hung "
            f"for more than --dist-timeout {timeout_s:g} s, so the job stops. Continue it with "
            f"{resume_hint}"
        ) from None
