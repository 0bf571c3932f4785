"""The final choice a run records in ``RUN_DIR/final.json`` (what it serves), and which checkpoint file
each model index means.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import MULTILABEL, SINGLE, TTA_MODES, TrainConfig
from ..errors import ConfigError
from ..utils.fs import atomic_write_json
from .calibration import valid_thresholds
from .layout import (
    BEST,
    CHECKPOINT_RE,
    CONFIG_FILE,
    FINAL_FILE,
    SNAPSHOT_RE,
    checkpoint_member,  # noqa: F401 - re-exported: training.fit imports it from here
    checkpoint_rel,
)


@dataclass(frozen=True)
class FinalChoice:
    """What a run serves: the mean softmax of ``members`` (the mean sigmoid for ``task`` "multilabel"),
    each seen with TTA (mean over ``tta_modes``) when ``tta_used``, else on the original sequence. One
    member is an ensemble of one.

    ``source`` is "ensemble" or "member <i>"; ``val_score`` is its validation ``select`` metric. The
    rest records how the choice came about: the ensemble's members and TTA decision, each member's
    TTA decision, the excluded members with their reasons, the TTA setting, and ``mcnemar``: the
    test of the best member against the ensemble, ``{"member", "b", "c", "p_value", "alpha"}`` (empty
    when the ensemble has a single member, and in records written before the test existed).

    Every index names a model: ``checkpoints[m]`` is model m's checkpoint file relative to the run
    directory (``evaluate.model_checkpoints``: a member's best.pt, or with ``--snapshots`` one of its
    cycle-end snapshots). Empty (records written before the list existed): model m is member m's
    ``best.pt``. ``evaluate.checkpoint_path`` applies this rule.

    ``task``: "single" (records written before multi-label runs say nothing and mean it) or "multilabel".
    ``thresholds``: a multi-label run's decision thresholds, chosen on validation on the served
    probabilities at T = 1 (``evaluation.multilabel.choose_thresholds``: ``{"rule", "global",
    "per_class": [C], "support": [C]}``); empty for a single-label run.
    """

    source: str
    members: list
    tta_used: bool
    tta_modes: list
    select: str
    reason: str
    val_score: float
    ensemble_members: list = field(default_factory=list)
    ensemble_tta_used: bool = False
    member_tta_used: list = field(default_factory=list)
    excluded: list = field(default_factory=list)
    tta: str = "auto"
    mcnemar: dict = field(default_factory=dict)
    checkpoints: list = field(default_factory=list)
    task: str = "single"
    thresholds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The record as final.json holds it; a single-label choice leaves out ``task`` and
        ``thresholds`` (absent means single-label: its final.json is what it was before multi-label runs)."""
        out = asdict(self)
        if self.task == SINGLE and not self.thresholds:
            del out["task"], out["thresholds"]
        return out


FINAL_FORMAT = "vidcls-final-choice"
TASKS = (SINGLE, MULTILABEL)  # the tasks of a trained run ("auto" is resolved by fit)


def best_checkpoint(member: int) -> str:
    """``members/<member>/checkpoints/best.pt``: a seed member's best checkpoint, relative to the run."""
    return checkpoint_rel(member, BEST)


def model_checkpoints(run_dir: str | os.PathLike, cfg: TrainConfig) -> list[str]:
    """The run's models, in order, as checkpoint paths relative to ``run_dir``; model index m is the
    m-th path.

    Without ``cfg.snapshots``: ``best.pt`` of members ``0 .. cfg.members - 1``. With it: for each
    member in turn, its ``snapshot_<epoch>.pt`` (one per finished warm-restart cycle) by increasing
    epoch; a member without any (trained for fewer than ``t0`` epochs) contributes its ``best.pt``.
    """
    out: list[str] = []
    for i in range(cfg.members):
        ckpt_dir = Path(run_dir) / checkpoint_rel(i, "")
        snaps: list[tuple[int, str]] = []
        if cfg.snapshots and ckpt_dir.is_dir():
            found = (SNAPSHOT_RE.fullmatch(p.name) for p in ckpt_dir.iterdir())
            snaps = sorted((int(m.group(1)), m.group(0)) for m in found if m)  # by epoch, as a number
        out.extend([checkpoint_rel(i, name) for _, name in snaps] or [best_checkpoint(i)])
    return out


def checkpoint_path(run_dir: str | os.PathLike, choice: FinalChoice | Sequence[str] | None, m: int) -> Path:
    """The file of model index ``m``: entry ``m`` of the recorded checkpoints (``choice``: a
    ``FinalChoice`` or its ``checkpoints`` list), or, when none are recorded (a final.json older than
    the list), ``members/<m>/checkpoints/best.pt``.

    Raises:
        ConfigError: ``m`` is not an index of the recorded list.
    """
    checkpoints = list(choice.checkpoints if isinstance(choice, FinalChoice) else choice or [])
    if not checkpoints:
        return Path(run_dir) / best_checkpoint(m)
    if not 0 <= m < len(checkpoints):
        raise ConfigError(
            f"model {m} is not one of the {len(checkpoints)} checkpoints {FINAL_FILE} records; "
            f"re-create it with `vidcls evaluate {run_dir} --split val`"
        )
    return Path(run_dir) / checkpoints[m]


def write_final_choice(run_dir: str | os.PathLike, choice: FinalChoice) -> Path:
    """Record what the run serves in ``RUN_DIR/final.json`` (atomically)."""
    return atomic_write_json(
        Path(run_dir) / FINAL_FILE, {"format": FINAL_FORMAT, "version": 1, **choice.to_dict()}
    )


def _recorded_choice(run_dir: Path) -> tuple[FinalChoice | None, str]:
    """The recorded final choice, or None when final.json is missing or damaged (evaluate re-makes
    and rewrites it then), and why it was set aside ("" when it was not)."""
    if not (run_dir / FINAL_FILE).is_file():
        return None, ""
    try:
        return load_final_choice(run_dir), ""
    except ConfigError:
        return None, f"{run_dir / FINAL_FILE} was damaged or not a final choice"


def load_final_choice(run_dir: str | os.PathLike) -> FinalChoice:
    """The final choice ``fit`` recorded for ``run_dir``: which members, TTA or not, which modes.

    Raises:
        ConfigError: no ``final.json`` (training unfinished, or a run older than the file) or a damaged one;
            the message says how to (re)create it.
    """
    path = Path(run_dir) / FINAL_FILE
    if not path.is_file() and not (Path(run_dir) / CONFIG_FILE).is_file():  # not a run at all
        raise ConfigError(f"{run_dir} holds no run (no {CONFIG_FILE}); give the RUN_DIR of `vidcls train`")
    redo = (
        f"record it with `vidcls evaluate {run_dir} --split val` (it makes the choice training makes, "
        f"on validation)"
    )
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: the run has no recorded final choice (training has not "
            f"finished, or the run predates final.json); {redo}"
        )
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(FinalChoice)}
        choice = FinalChoice(**{k: v for k, v in data.items() if k in known})
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is damaged ({type(exc).__name__}: {exc}); {redo}") from None
    members_ok = (
        isinstance(choice.members, list)
        and choice.members
        and all(isinstance(m, int) and m >= 0 for m in choice.members)
    )
    modes_ok = (
        isinstance(choice.tta_modes, list)
        and choice.tta_modes
        and all(m in TTA_MODES for m in choice.tta_modes)
    )
    if (
        data.get("format") != FINAL_FORMAT
        or not members_ok
        or not modes_ok
        or not isinstance(choice.tta_used, bool)
        or not _checkpoints_ok(choice)
        or not _thresholds_ok(choice)
    ):
        raise ConfigError(
            f"{path} is not a valid vidcls final choice (format, members, tta_used, "
            f"tta_modes, checkpoints, task or thresholds); {redo}"
        )
    return choice


def _thresholds_ok(choice: FinalChoice) -> bool:
    """A known task; a single-label choice records no thresholds, a multi-label one valid ones
    (``calibration.valid_thresholds``) or none (chosen again by ``vidcls evaluate``)."""
    if choice.task not in TASKS or not isinstance(choice.thresholds, dict):
        return False
    if choice.task == SINGLE or not choice.thresholds:
        return not choice.thresholds
    return valid_thresholds(choice.thresholds)


def run_task(cfg: TrainConfig) -> str:
    """The task a run was trained for: its config's ``task``; "auto" (a config.yaml written before
    multi-label runs, which always record the resolved task) is "single"."""
    return cfg.task if cfg.task in TASKS else "single"


def _checkpoints_ok(choice: FinalChoice) -> bool:
    """Recorded checkpoints are empty (an older record) or ``members/<i>/checkpoints/<name>.pt`` paths,
    one for every model index the choice names; nothing outside the run directory."""
    ckpts = choice.checkpoints
    if not isinstance(ckpts, list) or not all(
        isinstance(c, str) and CHECKPOINT_RE.fullmatch(c) for c in ckpts
    ):
        return False
    return not ckpts or all(m < len(ckpts) for m in choice.members)
