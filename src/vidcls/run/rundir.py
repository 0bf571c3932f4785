"""``RunDir``: every path and file of a run directory, with one strict reader per file.

The layout (written by ``vidcls train``, ``evaluate``, ``calibrate``, ``report``)::

    RUN_DIR/config.yaml          the resolved config (first file written; a directory without it holds no run)
            final.json           what the run serves (run.final)
            summary.json         the run's results; calibrate adds "calibration"
            calibration.json     temperature and OOD thresholds (run.calibration)
            typicality.npz       the training split's feature statistics (run.calibration)
            eval_<split>.json    scores of a split; eval_<split>.tta-<setting>.json with a forced --tta
            metrics_all.csv      every member's per-epoch metrics
            report.html
            results/resource_utilization_log.json
            members/<i>/{metrics.csv, history.json, plots/, checkpoints/{best,last,epoch_NNN,snapshot_NNN}.pt}
            .lock                one command at a time (utils.lock)

No other module builds one of these paths by hand. Readers raise ``ConfigError`` naming the file and
how to re-create it; a caller that can do without a file (the report) catches that and says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import TrainConfig, load_config
from ..errors import ConfigError
from ..utils.fs import atomic_write_json, atomic_write_text
from ..utils.lock import run_lock
from . import calibration, final
from . import layout as L
from .final import FinalChoice


class RunDir:
    """The files of one run directory. ``RunDir(path)`` touches nothing; paths are properties, readers
    and writers are methods.

    Args:
        root: the run directory (need not exist yet).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    # ---- paths ------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / L.CONFIG_FILE

    @property
    def final(self) -> Path:
        return self.root / L.FINAL_FILE

    @property
    def summary(self) -> Path:
        return self.root / L.SUMMARY_FILE

    @property
    def calibration(self) -> Path:
        return self.root / L.CALIBRATION_FILE

    @property
    def typicality(self) -> Path:
        return self.root / L.TYPICALITY_FILE

    @property
    def report(self) -> Path:
        return self.root / L.REPORT_FILE

    @property
    def metrics_all(self) -> Path:
        return self.root / L.METRICS_ALL_FILE

    @property
    def resource_log(self) -> Path:
        return self.root / L.RESOURCE_LOG

    def eval_file(self, split: str, tta: str | None = None) -> Path:
        """``eval_<split>.json``, or with ``tta`` (a --tta setting other than the run's own)
        ``eval_<split>.tta-<tta>.json``."""
        return self.root / (f"eval_{split}.json" if tta is None else f"eval_{split}.tta-{tta}.json")

    def member_dir(self, member: int) -> Path:
        return self.root / L.member_rel(member)

    def checkpoints_dir(self, member: int) -> Path:
        return self.member_dir(member) / L.CHECKPOINTS_DIR

    def history(self, member: int) -> Path:
        return self.member_dir(member) / L.HISTORY_FILE

    def member_metrics(self, member: int) -> Path:
        return self.member_dir(member) / L.MEMBER_METRICS_FILE

    def plots_dir(self, member: int) -> Path:
        return self.member_dir(member) / L.PLOTS_DIR

    def best(self, member: int) -> Path:
        return self.checkpoints_dir(member) / L.BEST

    def last(self, member: int) -> Path:
        return self.checkpoints_dir(member) / L.LAST

    def snapshot(self, member: int, epoch: int) -> Path:
        return self.checkpoints_dir(member) / L.snapshot_name(epoch)

    def periodic(self, member: int, epoch: int) -> Path:
        return self.checkpoints_dir(member) / L.periodic_name(epoch)

    def every_member(self, name: str = "*.pt") -> Path:
        """``RUN_DIR/members/*/checkpoints/<name>``: a glob over every member's checkpoints (what a
        message shows, e.g. where each member's last.pt is)."""
        return self.root / L.checkpoint_glob(name)

    def model_checkpoints(self, cfg: TrainConfig) -> list[str]:
        """The run's models in order, as checkpoint paths relative to the run (``final.model_checkpoints``)."""
        return final.model_checkpoints(self.root, cfg)

    def model_checkpoint(self, choice: FinalChoice | list, model: int) -> Path:
        """The file of model index ``model`` of a recorded choice (``final.checkpoint_path``)."""
        return final.checkpoint_path(self.root, choice, model)

    def member_indices(self) -> list[int]:
        """The seed members that have a directory, in order."""
        root = self.root / L.MEMBERS_DIR
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())

    def features_dir(self, recorded: str, override: str | os.PathLike | None = None) -> str:
        """Where the run's feature stores are now (``run_features_dir``)."""
        return run_features_dir(self.root, recorded, override)

    # ---- what the directory is ----------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run was started here (its config.yaml was written)."""
        return self.config.is_file()

    def has_checkpoints(self) -> bool:
        """Whether a member checkpoint was written here: training finished an epoch. A new run refuses
        such a directory; one with a config.yaml but no checkpoint yet (a run stopped in its first
        epoch) may be trained again from scratch."""
        return any(self.root.glob(L.checkpoint_glob()))

    def require(self, hint: str = "train one with `vidcls train`") -> RunDir:
        """This run directory, or ConfigError when it holds no run (no config.yaml)."""
        if not self.holds_run():
            raise ConfigError(f"{self.root} holds no run (no {L.CONFIG_FILE}); {hint}")
        return self

    def is_feature_dir(self) -> bool:
        """Whether this directory holds feature stores (train.h5 / val.h5 / test.h5)."""
        return any((self.root / name).exists() for name in L.SPLIT_FILES)

    @contextmanager
    def lock(self, command: str, *, create: bool = False) -> Iterator[Path]:
        """One command at a time here (``utils.lock.run_lock`` on ``RUN_DIR/.lock``)."""
        with run_lock(self.root, command, create=create) as path:
            yield path

    # ---- strict readers -----------------------------------------------------------------------
    def read_config(self) -> TrainConfig:
        """The run's ``TrainConfig`` (its config.yaml, possibly written by an earlier release)."""
        return load_config(self.require().config, saved_run=True)

    def read_final(self) -> FinalChoice:
        """The recorded final choice (``final.load_final_choice``)."""
        return final.load_final_choice(self.root)

    def read_calibration(self) -> dict | None:
        """``calibration.json``, None when the run has none (``calibration.load_calibration``)."""
        return calibration.load_calibration(self.root)

    def read_typicality(self, record: dict | None) -> dict | None:
        """The typicality statistics a calibration ``record`` refers to, None when it uses none."""
        return calibration.typicality_stats(self.root, record)

    def read_summary(self) -> dict:
        """``summary.json`` as a dict (``{}`` while training has not finished).

        Raises:
            ConfigError: the file is damaged or not a JSON object.
        """
        return _read_object(self.summary, f"re-create it with `vidcls train {self.root} --resume`", {})

    def read_eval(self, split: str) -> dict | None:
        """``eval_<split>.json``, None when the split was not scored."""
        return _read_object(
            self.eval_file(split), f"re-create it with `vidcls evaluate {self.root} --split {split}`", None
        )

    def read_history(self, member: int) -> list:
        """A member's per-epoch records (``[]`` before its first epoch).

        Raises:
            ConfigError: the file is damaged or not a JSON list.
        """
        data = _read_json(self.history(member), "it is rewritten at the member's next epoch (--resume)")
        if data is None:
            return []
        if not isinstance(data, list):
            raise ConfigError(f"{self.history(member)} is not a list of epochs")
        return data

    def read_resource_log(self) -> list | None:
        """The resource monitor's records, None without a log."""
        data = _read_json(self.resource_log, "it is rewritten by the next `vidcls train --resume`")
        if data is not None and not isinstance(data, list):
            raise ConfigError(f"{self.resource_log} is not a list of records")
        return data

    # ---- writers (atomic) ---------------------------------------------------------------------
    def write_config(self, text: str) -> Path:
        return atomic_write_text(self.config, text)

    def write_final(self, choice: FinalChoice) -> Path:
        return final.write_final_choice(self.root, choice)

    def write_summary(self, summary: dict) -> Path:
        return atomic_write_json(self.summary, summary)

    def add_to_summary(self, key: str, value: Any) -> Path | None:
        """Set ``key`` in an existing, readable summary.json; nothing when there is none or it is
        damaged (the run's next ``fit`` rewrites it whole)."""
        try:
            summary = self.read_summary() if self.summary.is_file() else None
        except ConfigError:
            summary = None
        return self.write_summary({**summary, key: value}) if summary is not None else None

    def write_member_metrics(self, member: int, text: str) -> Path:
        """A member's metrics.csv (rewritten whole each epoch: a kill never leaves a torn row)."""
        return atomic_write_text(self.member_metrics(member), text)

    def write_history(self, member: int, history: list) -> Path:
        return atomic_write_json(self.history(member), history)

    def write_calibration(self, record: dict) -> Path:
        return atomic_write_json(self.calibration, record)

    def write_eval(self, split: str, record: dict, tta: str | None = None) -> Path:
        return atomic_write_json(self.eval_file(split, tta), record)

    def write_report(self, html: str) -> Path:
        return atomic_write_text(self.report, html)


def _read_json(path: Path, redo: str) -> Any:
    """The JSON in ``path``, None when there is no such file.

    Raises:
        ConfigError: unreadable or not JSON; the message names the file and ``redo``.
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is damaged ({type(exc).__name__}: {exc}); {redo}") from None


def _read_object(path: Path, redo: str, missing: Any) -> Any:
    data = _read_json(path, redo)
    if data is None:
        return missing
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; {redo}")
    return data


def run_features_dir(
    run_dir: str | os.PathLike, recorded: str, override: str | os.PathLike | None = None
) -> str:
    """The features directory a saved run's evaluation and calibration read.

    ``override`` (``--features-dir``) wins. Otherwise the directory recorded at training: absolute
    since this release; a relative one (older runs) is tried from here, then from every folder above
    ``run_dir``, since training ran from one of them (``vidcls train runs/demo/features runs/demo/x``).

    Raises:
        ConfigError: the override is not a directory, or the recorded one is found nowhere.
    """
    if override:
        if not Path(override).is_dir():
            raise ConfigError(
                f"--features-dir {override} is not a directory; give the folder holding the "
                f"run's train.h5 [val.h5] [test.h5]"
            )
        return str(override)
    recorded = str(recorded or "")
    candidates = [Path(recorded)]
    if recorded and not Path(recorded).is_absolute():
        candidates += [up / recorded for up in Path(run_dir).resolve().parents]
    for c in candidates:
        if recorded and c.is_dir():
            return str(c)
    raise ConfigError(
        f"the features directory this run was trained on ({recorded or 'not recorded'}) is not "
        f"found from here or above {run_dir}; pass --features-dir DIR (the folder with its "
        f"train.h5 [val.h5] [test.h5])"
    )
