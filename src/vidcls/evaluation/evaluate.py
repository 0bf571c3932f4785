"""Scoring a trained run: every member with and without TTA, the ensemble, and the run's final choice.

Two callers. ``fit`` (its last step, ``evaluate_run``) makes the choices on val, scores val and test,
and records the choice in ``RUN_DIR/final.json`` (``write_final_choice``). ``vidcls evaluate``
(``evaluate_saved_run``) reads that record (``load_final_choice``) and scores exactly that choice;
members, ensemble and TTA views are reported beside it for information. Writes
``RUN_DIR/eval_<split>.json`` and ``metrics_all.csv``. The models' outputs come from one
``engine.forward.forward`` per split, over every model and every view the policy reads, with the
task the members' checkpoints record (absent: "single").

A multi-label run's ``eval_<split>.json`` holds ``multilabel_metrics`` dicts wherever a single-label
run's holds ``classification_metrics`` ones (members and ensemble at threshold 0.5, the final choice
at its recorded thresholds), plus ``"task": "multilabel"`` and ``final.thresholds``; each of its
``predictions`` is ``{"video_id", "label": "a|b" (the true set), "pred": "a|c" (the set at the
thresholds, "" when empty), "confidence" (the largest probability), "correct" (the sets are equal),
"hit_at_1"}``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import MULTILABEL, TTA_SETTINGS, TrainConfig, resolve_select
from ..data.dataset import FeatureDataset, Splits
from ..engine.forward import Outputs, forward
from ..engine.members import load_members
from ..engine.views import views_to_predict
from ..errors import CheckpointError, ConfigError
from ..run import layout as L
from ..run.final import (  # noqa: F401  (model_checkpoints, write_final_choice: re-exported for fit and tests)
    FinalChoice,
    _recorded_choice,
    best_checkpoint,
    model_checkpoints,
    run_task,
    write_final_choice,
)
from ..run.rundir import RunDir
from ..utils.fs import atomic_write_text
from .multilabel_policy import headline, label_set_predictions, split_metrics
from .policy import Policy, combine, decide_tta, ensemble_probs, labels_of, score_choice, with_thresholds

# --- the models' outputs -------------------------------------------------------------------------


def model_outputs(
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    datasets: dict[str, FeatureDataset],
    *,
    device: torch.device,
    modes: Sequence[str],
    checkpoints: Sequence[str] | None = None,
) -> dict[str, Outputs]:
    """``{split: Outputs}`` of every model of ``checkpoints`` (default: ``RunDir.model_checkpoints``)
    on ``views_to_predict(modes)`` of ``datasets`` (``{split: FeatureDataset}``), with their labels.
    Every checkpoint is first checked against the stores, in that order, and its task (absent:
    "single") against the run's (``run_task``).

    Raises:
        CheckpointError: (besides ``load_members``'s) a checkpoint of another task than config.yaml's.
    """
    run = RunDir(run_dir)
    checkpoints = run.model_checkpoints(cfg) if checkpoints is None else list(checkpoints)
    stores = list({id(ds.store): ds.store for ds in datasets.values()}.values())
    models, meta = load_members(run, checkpoints, range(len(checkpoints)), device, stores)
    task = run_task(cfg)
    for path, m in zip(checkpoints, meta):
        if m.get("task", "single") != task:
            raise CheckpointError(
                f"{run.root / path} was trained with task {m.get('task', 'single')!r} but "
                f"{run.config} says {task!r}; the run directory mixes two runs: retrain it"
            )
    views = views_to_predict(modes)
    return {
        s: forward(
            models,
            views,
            ds,
            batch_size=cfg.batch_size,
            batch_frames=cfg.batch_frames,
            device=device,
            shortest_first=True,
            task=task,
        )
        for s, ds in datasets.items()
    }


def run_policy(cfg: TrainConfig, tta: str | None = None) -> Policy:
    """The ``Policy`` of a run's config: its ``select`` (``auto`` resolved for its task), ``tta`` (or the
    one given), TTA modes and multi-label threshold rule."""
    return Policy(
        resolve_select(cfg.select, run_task(cfg)),
        cfg.tta if tta is None else tta,
        tuple(cfg.tta_modes),
        cfg.thresholds,
        cfg.threshold,
    )


def _with_checkpoints(results: dict, checkpoints: list[str]) -> dict:
    """``combine``'s ``results`` told which file each model index means: every row of ``"members"``
    gets ``"checkpoint"`` and the choice records the whole list (``FinalChoice.checkpoints``)."""
    for row, path in zip(results["members"], checkpoints):
        row["checkpoint"] = path
    results["choice"] = dataclasses.replace(results["choice"], checkpoints=list(checkpoints))
    return results


def evaluate_run(cfg: TrainConfig, run_dir: str | os.PathLike, splits: Splits, device: torch.device) -> dict:
    """Members (with and without TTA), their ensemble and the final choice on val and, when present, test.

    The models are ``model_checkpoints(run_dir, cfg)`` (each member's best checkpoint, or with
    ``cfg.snapshots`` its cycle-end snapshots). Every choice (excluded models, TTA, ensemble or one
    model) is made on val; test is only scored. Writes ``RUN_DIR/eval_<split>.json`` for each split and
    returns ``policy.combine``'s result, each member row with its ``"checkpoint"``; its ``"choice"``
    (what ``write_final_choice`` records) lists the checkpoints its indices mean, and ``"outputs"``
    holds the ``{split: Outputs}`` it was made from (every model, every view; calibration reuses them).
    """
    run = RunDir(run_dir)
    datasets = {"val": splits.val, **({"test": splits.test} if splits.test is not None else {})}
    checkpoints = run.model_checkpoints(cfg)
    outputs = model_outputs(cfg, run, datasets, device=device, modes=cfg.tta_modes, checkpoints=checkpoints)
    results = combine(outputs, splits.class_names, run_policy(cfg))
    _with_checkpoints(results, checkpoints)
    for split, ds in datasets.items():
        run.write_eval(split, _eval_record(split, ds, results))
    results["outputs"] = outputs
    return results


def _predictions(ds: FeatureDataset, probs: np.ndarray, choice: FinalChoice) -> list[dict]:
    """Per video of ``ds``: its label(s), the prediction, the confidence and whether it is right."""
    names = ds.store.class_names
    if choice.task != MULTILABEL:
        pred, labels = probs.argmax(1), ds.labels
        return [
            {
                "video_id": vid,
                "label": names[int(y)],
                "pred": names[int(p)],
                "confidence": float(pr.max()),
                "correct": bool(y == p),
            }
            for vid, y, p, pr in zip(ds.video_ids(), labels, pred, probs)
        ]
    return label_set_predictions(ds.video_ids(), names, np.asarray(ds.targets), probs, choice.thresholds)


def _eval_record(split: str, ds: FeatureDataset, results: dict, note: str | None = None) -> dict:
    probs = results["predictions"][split]
    choice = results["choice"]
    record: dict = {
        "split": split,
        "tta": results["tta"]["mode"],
        "tta_modes": results["tta"]["modes"],
        "select": choice.select,
        "members": [
            {
                "member": m["member"],
                "checkpoint": m.get("checkpoint"),
                "tta_used": m["tta_used"],
                "without_tta": m[split],
                "with_tta": m[f"{split}_tta"],
            }
            for m in results["members"]
        ],
        "ensemble": {k: results["ensemble"][k] for k in ("members_used", "excluded", "tta_used")}
        | {"metrics": results["ensemble"][split]},
        "final": {
            "source": choice.source,
            "members": choice.members,
            "checkpoints": choice.checkpoints,
            "tta_used": choice.tta_used,
            "tta_modes": choice.tta_modes,
            "reason": choice.reason,
            "metrics": results["final"][split],
        },
        "tta_per_mode": {mode: v[split] for mode, v in results["tta"]["per_mode"].items()},
        "predictions": _predictions(ds, probs, choice),
    }
    if choice.task == MULTILABEL:  # a single-label record stays as it was (runs' files are a contract)
        record = {"split": split, "task": choice.task, **record}
        record["final"]["thresholds"] = choice.thresholds
    if note:
        record["note"] = note
    return record


def write_run_tables(run_dir: str | os.PathLike, cfg: TrainConfig, splits: Splits, results: dict) -> Path:
    """``RUN_DIR/metrics_all.csv``: every seed member's per-epoch metrics in one table (column ``member``:
    the seed member, also with ``--snapshots``, whose models are checkpoints of these same epochs)."""
    run = RunDir(run_dir)
    out = io.StringIO()
    writer = None
    for i in range(cfg.members):
        with open(run.member_metrics(i), newline="") as fh:
            for row in csv.DictReader(fh):
                if writer is None:
                    writer = csv.DictWriter(out, ["member", *row])
                    writer.writeheader()
                writer.writerow({"member": i, **row})
    return atomic_write_text(run.metrics_all, out.getvalue())


# --- the recorded final choice -------------------------------------------------------------------


def _saved_checkpoints(
    run_dir: str | os.PathLike, cfg: TrainConfig, recorded: FinalChoice | None
) -> list[str]:
    """The models ``vidcls evaluate`` loads: the recorded list, so every index means the file it meant
    when the choice was made; for a record older than the list the members' best.pt (the rule then);
    without a record, the run's models now (``model_checkpoints``)."""
    if recorded is None:
        return RunDir(run_dir).model_checkpoints(cfg)
    return list(recorded.checkpoints) or [best_checkpoint(i) for i in range(cfg.members)]


def _served_choice(
    recorded: FinalChoice | None,
    computed: FinalChoice,
    outputs: dict[str, Outputs],
    names: list,
    policy: Policy,
) -> tuple[FinalChoice, str | None]:
    """The choice ``vidcls evaluate`` scores, and a note when it is not exactly the recorded one.

    ``policy.tta`` is the requested setting, already known to differ from the run's when it is not
    ``recorded.tta``: TTA of the recorded members is then forced (on/off) or decided on val (auto).
    A multi-label choice whose TTA changes that way (or that records no thresholds) gets its
    thresholds chosen again on validation for what it now serves.

    Raises:
        ConfigError: the record names more members than the run has, or another task than its members'.
    """
    tta, task = policy.tta, outputs["val"].task
    if recorded is None:
        return computed, (
            f"the run has no {L.FINAL_FILE} (it predates the file): the final choice was "
            f"recomputed on validation"
        )
    _check_recorded(recorded, outputs)
    if tta == recorded.tta:
        if task == MULTILABEL and not recorded.thresholds:
            return with_thresholds(
                outputs, recorded, policy
            ), "the recorded choice had no thresholds: chosen on validation"
        return recorded, None
    val = {
        used: split_metrics(
            labels_of(outputs, "val"),
            ensemble_probs(outputs, recorded.members, "val", recorded.tta_modes, used),
            names,
            task,
        )
        for used in (False, True)
    }
    tta_used = decide_tta(val[False], val[True], recorded.select, tta)
    note = (
        f"--tta {tta}: the run's final choice ({recorded.source}, members {recorded.members}) scored "
        f"with TTA {'on' if tta_used else 'off'}; the run chose {'on' if recorded.tta_used else 'off'} "
        f"under --tta {recorded.tta}"
    )
    choice = dataclasses.replace(recorded, tta_used=tta_used, tta=tta)
    if task == MULTILABEL and tta_used != recorded.tta_used:
        choice = with_thresholds(outputs, choice, policy)
        note += "; its thresholds chosen again on validation for that view"
    return choice, note


def _check_recorded(recorded: FinalChoice, outputs: dict[str, Outputs]) -> None:
    """Refuse a recorded choice of members the run does not have, or of another task than theirs."""
    n_models, task = len(outputs["val"].members), outputs["val"].task
    if any(m >= n_models for m in recorded.members):
        raise ConfigError(
            f"{L.FINAL_FILE} names members {recorded.members} but the run has "
            f"{n_models}; re-create it with `vidcls train ... --resume`"
        )
    if recorded.task != task:
        raise ConfigError(
            f"{L.FINAL_FILE} records a {recorded.task} choice but the run's members are {task}; "
            f"delete it and re-create it with `vidcls evaluate RUN_DIR --split val`"
        )


def _saved_splits(
    run: RunDir, cfg: TrainConfig, split: str, features_dir: str | os.PathLike | None
) -> Splits:
    """The splits of a saved run as training made them, from where its features are now.

    Raises:
        ConfigError: ``split`` is test and the features have none; the features are not found.
    """
    from ..data.dataset import load_splits

    features = run.features_dir(cfg.features_dir, features_dir)
    splits = load_splits(
        features,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        augment=False,
        max_frames=cfg.max_frames,
        task=run_task(cfg),
    )
    if split == "test" and splits.test is None:
        raise ConfigError(f"{features} has no test.h5; use --split val")
    return splits


def _rescore(
    run: RunDir, cfg: TrainConfig, splits: Splits, *, split: str, tta: str, device: torch.device
) -> tuple[dict, str | None, str]:
    """``combine``'s result on ``split`` (and val, where every choice is made) with the choice
    ``vidcls evaluate`` scores (``_served_choice``) in ``"choice"``, recorded in final.json when the run
    had none and ``tta`` is the run's own setting; the note on it (None: exactly the recorded choice);
    and the run's own --tta setting (the recorded one, else the config's)."""
    recorded, damaged = _recorded_choice(run.root)
    datasets = {split: getattr(splits, split), "val": splits.val}  # the scored split's store is checked first
    modes = tuple(dict.fromkeys([*cfg.tta_modes, *(recorded.tta_modes if recorded else [])]))
    checkpoints = _saved_checkpoints(run, cfg, recorded)
    outputs = model_outputs(cfg, run, datasets, device=device, modes=modes, checkpoints=checkpoints)
    policy = run_policy(cfg, tta)
    results = combine(outputs, splits.class_names, policy)
    _with_checkpoints(results, checkpoints)
    choice, note = _served_choice(recorded, results["choice"], outputs, splits.class_names, policy)
    results["predictions"], results["final"] = score_choice(outputs, choice, splits.class_names)
    results["choice"] = choice
    run_tta = recorded.tta if recorded else cfg.tta
    if recorded is None and tta == run_tta:
        # a run older than final.json: record the choice fit would have made, so prediction can use it
        run.write_final(choice)
        note = f"{note}; recorded in {run.final}" if note else note
        if damaged:
            note = f"{damaged}: the final choice was recomputed on validation; recorded in {run.final}"
    return results, note, run_tta


def evaluate_saved_run(
    run_dir: str | os.PathLike,
    split: str = "test",
    tta: str | None = None,
    device: str = "auto",
    log: Callable[[str], object] = print,
    *,
    features_dir: str | os.PathLike | None = None,
) -> dict:
    """``vidcls evaluate``: score a finished run's recorded final choice on ``split``, with every member
    and the ensemble (re-derived on val) for information.

    Writes only ``RUN_DIR/eval_<split>.json``, or, when ``tta`` differs from the run's own setting,
    ``RUN_DIR/eval_<split>.tta-<tta>.json`` (the files ``fit`` wrote stay as they are).

    Args:
        tta: auto | on | off; None: the run's own setting.
        features_dir: where the run's stores are now, when not where training found them.
    Returns:
        ``{"split", "members", "ensemble", "tta", "final", "choice", "note", "path"}``.
    Raises:
        ConfigError / StoreError / CheckpointError: no run there, features moved or not the ones the
            run was trained on, bad checkpoints or final.json.
        RunLockedError: another process (a train) is using ``run_dir``.
    """
    from ..utils.device import resolve_device

    run = RunDir(run_dir).require()
    with run.lock("evaluate"):  # not while a train (or another evaluate) writes this run
        cfg = run.read_config()
        tta = tta or cfg.tta
        if tta not in TTA_SETTINGS:
            raise ConfigError(f"--tta must be one of {', '.join(TTA_SETTINGS)}; got {tta!r}")
        splits = _saved_splits(run, cfg, split, features_dir)
        results, note, run_tta = _rescore(
            run, cfg, splits, split=split, tta=tta, device=resolve_device(device)
        )
        scored = getattr(splits, split).store
        if run_task(cfg) == MULTILABEL and not scored.multilabel:  # one-vs-rest, as training allows
            one = f"{scored.path} holds one label per video: scored as one-label sets"
            note = f"{note}; {one}" if note else one
        record = _eval_record(split, getattr(splits, split), results, note)
        path = run.write_eval(split, record, None if tta == run_tta else tta)
    choice = results["choice"]
    if note:
        log(f"note: {note}")
    log(
        f"final: {choice.source} (members {choice.members}, TTA {'on' if choice.tta_used else 'off'}): "
        f"{split} {headline(results['final'][split])}"
    )
    return {
        "split": split,
        "members": results["members"],
        "ensemble": results["ensemble"],
        "tta": results["tta"],
        "final": results["final"],
        "choice": choice.to_dict(),
        "note": note,
        "path": str(path),
    }
