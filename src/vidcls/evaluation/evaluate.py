"""Scoring a trained run: every member with and without TTA, the ensemble, and the run's final choice.

Two callers. ``fit`` (its last step, ``evaluate_run``) makes the choices on val, scores val and test,
and records the choice in ``RUN_DIR/final.json`` (``write_final_choice``). ``vidcls evaluate``
(``evaluate_saved_run``) reads that record (``load_final_choice``) and scores exactly that choice;
members, ensemble and TTA views are reported beside it for information. Writes
``RUN_DIR/eval_<split>.json`` and ``metrics_all.csv``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import torch

from ..config import TTA_SETTINGS
from ..data.dataset import make_loader
from ..engine.members import load_member
from ..engine.views import predict_modes
from ..errors import ConfigError
from ..run.final import (
    FINAL_FILE,
    FinalChoice,
    _recorded_choice,
    best_checkpoint,
    model_checkpoints,
    write_final_choice,
)
from ..utils.fs import atomic_write_json, atomic_write_text
from .metrics import classification_metrics
from .policy import Policy, combine, decide_tta, ensemble_probs, score_choice

# --- which file each model index means ---------------------------------------------------------


def predict_members(cfg, run_dir, datasets: dict, device: torch.device, modes, checkpoints=None) -> list[dict]:
    """Per model of ``checkpoints`` (default: ``model_checkpoints(run_dir, cfg)``) ``{split: {"original":
    (N, C), <mode>: (N, C), "labels": (N,)}}`` for ``datasets`` (``{split: FeatureDataset}``); every
    checkpoint is first checked against the stores, in that order."""
    checkpoints = model_checkpoints(run_dir, cfg) if checkpoints is None else list(checkpoints)
    loaders = {s: make_loader(ds, cfg.batch_size, batch_frames=cfg.batch_frames, workers=0)
               for s, ds in datasets.items()}
    stores = list({id(ds.store): ds.store for ds in datasets.values()}.values())
    member_probs = []
    for i in range(len(checkpoints)):
        model = load_member(run_dir, i, device, stores, checkpoints)
        member_probs.append({s: predict_modes(model, ld, device, modes) for s, ld in loaders.items()})
        del model
    return member_probs


def _with_checkpoints(results: dict, checkpoints: list[str]) -> dict:
    """``combine``'s ``results`` told which file each model index means: every row of ``"members"``
    gets ``"checkpoint"`` and the choice records the whole list (``FinalChoice.checkpoints``)."""
    for row, path in zip(results["members"], checkpoints):
        row["checkpoint"] = path
    results["choice"] = dataclasses.replace(results["choice"], checkpoints=list(checkpoints))
    return results


def evaluate_run(cfg, run_dir, splits, device: torch.device) -> dict:
    """Members (with and without TTA), their ensemble and the final choice on val and, when present, test.

    The models are ``model_checkpoints(run_dir, cfg)`` (each member's best checkpoint, or with
    ``cfg.snapshots`` its cycle-end snapshots). Every choice (excluded models, TTA, ensemble or one
    model) is made on val; test is only scored. Writes ``RUN_DIR/eval_<split>.json`` for each split and
    returns ``policy.combine``'s result, each member row with its ``"checkpoint"``; its ``"choice"``
    (what ``write_final_choice`` records) lists the checkpoints its indices mean.
    """
    datasets = {"val": splits.val, **({"test": splits.test} if splits.test is not None else {})}
    checkpoints = model_checkpoints(run_dir, cfg)
    member_probs = predict_members(cfg, run_dir, datasets, device, cfg.tta_modes, checkpoints)
    results = combine(member_probs, splits.class_names, Policy(cfg.select, cfg.tta, tuple(cfg.tta_modes)))
    _with_checkpoints(results, checkpoints)
    for split, ds in datasets.items():
        atomic_write_json(Path(run_dir) / f"eval_{split}.json", _eval_record(split, ds, results))
    return results


def _eval_record(split: str, ds, results: dict, note: str | None = None) -> dict:
    probs = results["predictions"][split]
    names = ds.store.class_names
    pred, labels = probs.argmax(1), ds.labels
    choice = results["choice"]
    record = {
        "split": split, "tta": results["tta"]["mode"], "tta_modes": results["tta"]["modes"],
        "select": choice.select,
        "members": [{"member": m["member"], "checkpoint": m.get("checkpoint"), "tta_used": m["tta_used"],
                     "without_tta": m[split], "with_tta": m[f"{split}_tta"]} for m in results["members"]],
        "ensemble": {k: results["ensemble"][k] for k in ("members_used", "excluded", "tta_used")}
        | {"metrics": results["ensemble"][split]},
        "final": {"source": choice.source, "members": choice.members, "checkpoints": choice.checkpoints,
                  "tta_used": choice.tta_used,
                  "tta_modes": choice.tta_modes, "reason": choice.reason, "metrics": results["final"][split]},
        "tta_per_mode": {mode: v[split] for mode, v in results["tta"]["per_mode"].items()},
        "predictions": [{"video_id": vid, "label": names[int(y)], "pred": names[int(p)],
                         "confidence": float(pr.max()), "correct": bool(y == p)}
                        for vid, y, p, pr in zip(ds.video_ids(), labels, pred, probs)],
    }
    if note:
        record["note"] = note
    return record


def write_run_tables(run_dir, cfg, splits, results) -> Path:
    """``RUN_DIR/metrics_all.csv``: every seed member's per-epoch metrics in one table (column ``member``:
    the seed member, also with ``--snapshots``, whose models are checkpoints of these same epochs)."""
    out = io.StringIO()
    writer = None
    for i in range(cfg.members):
        path = Path(run_dir) / "members" / str(i) / "metrics.csv"
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if writer is None:
                    writer = csv.DictWriter(out, ["member", *row])
                    writer.writeheader()
                writer.writerow({"member": i, **row})
    return atomic_write_text(Path(run_dir) / "metrics_all.csv", out.getvalue())


# --- the recorded final choice -------------------------------------------------------------------


def _saved_checkpoints(run_dir, cfg, recorded: FinalChoice | None) -> list[str]:
    """The models ``vidcls evaluate`` loads: the recorded list, so every index means the file it meant
    when the choice was made; for a record older than the list the members' best.pt (the rule then);
    without a record, the run's models now (``model_checkpoints``)."""
    if recorded is None:
        return model_checkpoints(run_dir, cfg)
    return list(recorded.checkpoints) or [best_checkpoint(i) for i in range(cfg.members)]


def _served_choice(recorded: FinalChoice | None, computed: FinalChoice, member_probs: list[dict],
                   names: list, tta: str) -> tuple[FinalChoice, str | None]:
    """The choice ``vidcls evaluate`` scores, and a note when it is not exactly the recorded one.

    ``tta`` is the requested setting, already known to differ from the run's when it is not
    ``recorded.tta``: TTA of the recorded members is then forced (on/off) or decided on val (auto).
    """
    if recorded is None:
        return computed, (f"the run has no {FINAL_FILE} (it predates the file): the final choice was "
                          f"recomputed on validation")
    if any(m >= len(member_probs) for m in recorded.members):
        raise ConfigError(f"{FINAL_FILE} names members {recorded.members} but the run has "
                          f"{len(member_probs)}; re-create it with `vidcls train ... --resume`")
    if tta == recorded.tta:
        return recorded, None
    val = {used: classification_metrics(
        member_probs[0]["val"]["labels"],
        ensemble_probs(member_probs, recorded.members, "val", recorded.tta_modes, used), names)
        for used in (False, True)}
    tta_used = decide_tta(val[False], val[True], recorded.select, tta)
    note = (f"--tta {tta}: the run's final choice ({recorded.source}, members {recorded.members}) scored "
            f"with TTA {'on' if tta_used else 'off'}; the run chose {'on' if recorded.tta_used else 'off'} "
            f"under --tta {recorded.tta}")
    return dataclasses.replace(recorded, tta_used=tta_used, tta=tta), note


def evaluate_saved_run(run_dir, split: str = "test", tta: str | None = None, device: str = "auto",
                       log=print, *, features_dir=None) -> dict:
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
    from ..config import load_config
    from ..data.dataset import load_splits
    from ..run.rundir import run_features_dir
    from ..utils.device import resolve_device
    from ..utils.lock import run_lock

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} holds no run (no config.yaml); train one with `vidcls train`")
    with run_lock(run_dir, "evaluate"):  # not while a train (or another evaluate) writes this run
        cfg = load_config(cfg_path, saved_run=True)
        tta = tta or cfg.tta
        if tta not in TTA_SETTINGS:
            raise ConfigError(f"--tta must be one of {', '.join(TTA_SETTINGS)}; got {tta!r}")
        features = run_features_dir(run_dir, cfg.features_dir, features_dir)
        splits = load_splits(features, val_fraction=cfg.val_fraction, seed=cfg.seed, augment=False,
                             max_frames=cfg.max_frames)
        if split == "test" and splits.test is None:
            raise ConfigError(f"{features} has no test.h5; use --split val")
        recorded, damaged = _recorded_choice(run_dir)
        datasets = {split: getattr(splits, split), "val": splits.val}  # the scored split's store is checked first
        modes = tuple(dict.fromkeys([*cfg.tta_modes, *(recorded.tta_modes if recorded else [])]))
        checkpoints = _saved_checkpoints(run_dir, cfg, recorded)
        member_probs = predict_members(cfg, run_dir, datasets, resolve_device(device), modes, checkpoints)
        results = combine(member_probs, splits.class_names, Policy(cfg.select, tta, tuple(cfg.tta_modes)))
        _with_checkpoints(results, checkpoints)
        choice, note = _served_choice(recorded, results["choice"], member_probs, splits.class_names, tta)
        results["predictions"], results["final"] = score_choice(member_probs, choice, splits.class_names)
        results["choice"] = choice
        run_tta = recorded.tta if recorded else cfg.tta
        if recorded is None and tta == run_tta:
            # a run older than final.json: record the choice fit would have made, so prediction can use it
            write_final_choice(run_dir, choice)
            note = f"{note}; recorded in {run_dir / FINAL_FILE}" if note else note
            if damaged:
                note = f"{damaged}: the final choice was recomputed on validation; recorded in {run_dir / FINAL_FILE}"
        name = f"eval_{split}.json" if tta == run_tta else f"eval_{split}.tta-{tta}.json"
        path = atomic_write_json(run_dir / name, _eval_record(split, datasets[split], results, note))
    if note:
        log(f"note: {note}")
    m = results["final"][split]
    log(f"final: {choice.source} (members {choice.members}, TTA {'on' if choice.tta_used else 'off'}): "
        f"{split} acc {m['accuracy']:.3f}, macro F1 {m['f1_macro']:.3f}")
    return {"split": split, "members": results["members"], "ensemble": results["ensemble"],
            "tta": results["tta"], "final": results["final"], "choice": choice.to_dict(), "note": note,
            "path": str(path)}
