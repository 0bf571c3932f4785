"""The names inside a run directory, in one place (``RunDir`` turns them into paths).

Checkpoint paths are recorded relative to the run (``final.json``'s ``checkpoints``), as POSIX paths
``members/<i>/checkpoints/<name>.pt``, so a run directory can be moved or copied whole.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

CONFIG_FILE = "config.yaml"
FINAL_FILE = "final.json"
SUMMARY_FILE = "summary.json"
CALIBRATION_FILE = "calibration.json"
TYPICALITY_FILE = "typicality.npz"
REPORT_FILE = "report.html"
METRICS_ALL_FILE = "metrics_all.csv"
RESOURCE_LOG = "results/resource_utilization_log.json"  # every rank's records, field "rank"
MEMBERS_DIR = "members"
CHECKPOINTS_DIR = "checkpoints"
HISTORY_FILE = "history.json"
MEMBER_METRICS_FILE = "metrics.csv"
PLOTS_DIR = "plots"
BEST = "best.pt"  # a member's best epoch on validation
LAST = "last.pt"  # a member's last finished epoch, with everything a resume needs
SNAPSHOT_RE = re.compile(r"snapshot_(\d+)\.pt")  # a warm-restart cycle's last epoch (--snapshots)
PERIODIC_RE = re.compile(r"^epoch_(\d+)\.pt$")  # --checkpoint-every
CHECKPOINT_RE = re.compile(r"members/\d+/checkpoints/[^/\\]+\.pt")  # a recorded path: inside the run
SPLIT_FILES = ("train.h5", "val.h5", "test.h5")  # a directory holding one is a feature store, not a run


def member_rel(member: int) -> str:
    """``members/<member>``, relative to the run."""
    return f"{MEMBERS_DIR}/{int(member)}"


def checkpoint_rel(member: int, name: str) -> str:
    """``members/<member>/checkpoints/<name>``, relative to the run (as recorded in final.json)."""
    return f"{member_rel(member)}/{CHECKPOINTS_DIR}/{name}"


def checkpoint_member(path: str) -> int:
    """The seed member a recorded checkpoint path (``members/<i>/checkpoints/...``) belongs to."""
    return int(PurePosixPath(path).parts[1])


def checkpoint_glob(name: str = "*.pt") -> str:
    """``members/*/checkpoints/<name>``, relative to the run: ``name`` (a glob itself) in every member."""
    return f"{MEMBERS_DIR}/*/{CHECKPOINTS_DIR}/{name}"


def snapshot_name(epoch: int) -> str:
    """``snapshot_<epoch>.pt``: the checkpoint of a warm-restart cycle's last epoch."""
    return f"snapshot_{epoch:03d}.pt"


def periodic_name(epoch: int) -> str:
    """``epoch_<epoch>.pt``: a --checkpoint-every checkpoint."""
    return f"epoch_{epoch:03d}.pt"
