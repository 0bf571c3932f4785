"""``TrainContext``: what the training of every member of a run shares, built once by ``fit``.

``fit`` -> ``parallel.train_members`` -> ``member.train_member`` hand it on whole; the leaves below them
(``train_one_epoch``, ``wrap_model``, ...) take only the values they use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..config import TrainConfig
from ..run.rundir import RunDir
from ..utils.dist import SINGLE, Dist

if TYPE_CHECKING:
    from ..data.dataset import Splits
    from ..reporting.monitor import ResourceMonitor


@dataclass(frozen=True, eq=False)
class TrainContext:
    """The same for every member of one run: the resolved config, the data, where it trains and what
    it writes to. Member ``i`` adds only its index (seed ``cfg.seed + i``, ``RUN_DIR/members/<i>``).

    Attributes:
        cfg: the resolved config (``--model auto`` already decided).
        splits: train / val / test datasets, class names, feature dim (``data.dataset.Splits``).
        weights: (C,) class weights: the weighted sampler's and the focal loss's alpha.
        stats: the train split's per-feature ``(mean, std)``; None unless ``--standardize feature``.
        device: where the members train (``--parallel-members``: each process its own, ``for_process``).
        run: the run directory; every file a member writes is one of its paths.
        resume: continue each member from its checkpoints; a finished member is not retrained.
        log: where progress lines go.
        monitor: the run's ``ResourceMonitor`` (``member i start`` / ``end`` records); None where no
            member is started by ``train_members`` (a member process, a caller of ``train_member``).
        dist: this process's place in a torchrun job (``SINGLE``: a plain run).
    """

    cfg: TrainConfig
    splits: Splits
    weights: torch.Tensor
    stats: tuple[np.ndarray, np.ndarray] | None
    device: torch.device
    run: RunDir
    resume: bool = False
    log: Callable[[str], None] = print
    monitor: ResourceMonitor | None = None
    dist: Dist = SINGLE

    def __post_init__(self) -> None:
        if not isinstance(self.run, RunDir):  # a path given: the run directory at that path
            object.__setattr__(self, "run", RunDir(self.run))

    def for_process(self, device: torch.device) -> TrainContext:
        """What a ``--parallel-members`` process trains a member with, picklable: on ``device``, one
        process of its own (no torchrun group), without the parent's monitor and log (a lock-holding
        thread and, often, a closure); the process sets its own log, which relays to the parent."""
        return dataclasses.replace(self, device=device, log=print, monitor=None, dist=SINGLE)
