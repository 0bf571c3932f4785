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
import json
import re
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models import build_from_spec
from ..training.checkpoint import load_checkpoint
from ..training.data import make_loader
from ..utils.fs import atomic_write_json, atomic_write_text
from .metrics import classification_metrics
from .policy import FinalChoice, Policy, combine, decide_tta, ensemble_probs, score_choice
from .tta import TTA_MODES, predict_modes

FINAL_FILE = "final.json"
SNAPSHOT_RE = re.compile(r"snapshot_(\d+)\.pt")  # training/loop.py snapshot_name: snapshot_<epoch>.pt
CHECKPOINT_RE = re.compile(r"members/\d+/checkpoints/[^/\\]+\.pt")  # a recorded path: inside the run
FINAL_FORMAT = "vidcls-final-choice"
TTA_SETTINGS = ("auto", "on", "off")


def _names(names) -> str:
    return "[" + ", ".join(str(n) for n in names) + "]"


def check_checkpoint_matches(ckpt: dict, path: Path, store) -> None:
    """Refuse to score a checkpoint on features it was not trained on.

    Args:
        ckpt: a loaded checkpoint (``class_names``, ``feature_dim``, ``extractor``); path: its file.
        store: the FeatureStore to be scored (``class_names``, ``feature_dim``, ``extractor``, ``path``).
    Raises:
        CheckpointError: other class names (order included), another feature dimension, or another
            extractor backbone when both record one; the message names both sides and both files.
    """
    hint = "evaluate with the features the run was trained on"
    if list(ckpt.get("class_names") or []) != list(store.class_names):
        raise CheckpointError(f"{path} was trained on classes {_names(ckpt.get('class_names') or [])} but "
                              f"{store.path} has {_names(store.class_names)}; {hint}")
    if ckpt.get("feature_dim") != store.feature_dim:
        raise CheckpointError(f"{path} was trained on {ckpt.get('feature_dim')}-dimensional features but "
                              f"{store.path} holds {store.feature_dim}-dimensional ones; {hint}")
    trained = (ckpt.get("extractor") or {}).get("backbone")
    given = (store.extractor or {}).get("backbone")
    if trained and given and trained != given:
        raise CheckpointError(f"{path} was trained on {trained} features but {store.path} holds {given} "
                              f"features; {hint}")


# --- which file each model index means ---------------------------------------------------------

def best_checkpoint(member: int) -> str:
    """``members/<member>/checkpoints/best.pt``: a seed member's best checkpoint, relative to the run."""
    return f"members/{member}/checkpoints/best.pt"


def model_checkpoints(run_dir, cfg) -> list[str]:
    """The run's models, in order, as checkpoint paths relative to ``run_dir``; model index m is the
    m-th path.

    Without ``cfg.snapshots``: ``best.pt`` of members ``0 .. cfg.members - 1``. With it: for each
    member in turn, its ``snapshot_<epoch>.pt`` (one per finished warm-restart cycle) by increasing
    epoch; a member without any (trained for fewer than ``t0`` epochs) contributes its ``best.pt``.
    """
    out = []
    for i in range(cfg.members):
        ckpt_dir = Path(run_dir) / "members" / str(i) / "checkpoints"
        snaps = []
        if cfg.snapshots and ckpt_dir.is_dir():
            found = (SNAPSHOT_RE.fullmatch(p.name) for p in ckpt_dir.iterdir())
            snaps = sorted((int(m.group(1)), m.group(0)) for m in found if m)  # by epoch, as a number
        out.extend([f"members/{i}/checkpoints/{name}" for _, name in snaps] or [best_checkpoint(i)])
    return out


def checkpoint_path(run_dir, choice, m: int) -> Path:
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
        raise ConfigError(f"model {m} is not one of the {len(checkpoints)} checkpoints {FINAL_FILE} records; "
                          f"re-create it with `vidcls evaluate {run_dir} --split val`")
    return Path(run_dir) / checkpoints[m]


def checkpoint_member(path: str) -> int:
    """The seed member a checkpoint path (``members/<i>/checkpoints/...``) belongs to."""
    return int(PurePosixPath(path).parts[1])


def load_member(run_dir: Path, member: int, device: torch.device, stores=(), checkpoints=()) -> nn.Module:
    """Rebuild model ``member`` from its checkpoint (``checkpoint_path`` over ``checkpoints``: a
    ``FinalChoice`` or a list; empty: ``best.pt``), in eval mode on ``device``.

    Raises:
        CheckpointError: missing or damaged, or not trained on the features of ``stores``.
    """
    path = checkpoint_path(run_dir, checkpoints, member)
    ckpt = load_checkpoint(path, device)
    for store in stores:
        check_checkpoint_matches(ckpt, path, store)
    model = build_from_spec(ckpt["model"])
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval()


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

def write_final_choice(run_dir, choice: FinalChoice) -> Path:
    """Record what the run serves in ``RUN_DIR/final.json`` (atomically)."""
    return atomic_write_json(Path(run_dir) / FINAL_FILE, {"format": FINAL_FORMAT, "version": 1,
                                                         **choice.to_dict()})


def _recorded_choice(run_dir: Path) -> tuple[FinalChoice | None, str]:
    """The recorded final choice, or None when final.json is missing or damaged (evaluate re-makes
    and rewrites it then), and why it was set aside ("" when it was not)."""
    if not (run_dir / FINAL_FILE).is_file():
        return None, ""
    try:
        return load_final_choice(run_dir), ""
    except ConfigError:
        return None, f"{run_dir / FINAL_FILE} was damaged or not a final choice"


def load_final_choice(run_dir) -> FinalChoice:
    """The final choice ``fit`` recorded for ``run_dir``: which members, TTA or not, which modes.

    Raises:
        ConfigError: no ``final.json`` (training unfinished, or a run older than the file) or a damaged one;
            the message says how to (re)create it.
    """
    path = Path(run_dir) / FINAL_FILE
    if not path.is_file() and not (Path(run_dir) / "config.yaml").is_file():  # not a run at all
        raise ConfigError(f"{run_dir} holds no run (no config.yaml); give the RUN_DIR of `vidcls train`")
    redo = (f"record it with `vidcls evaluate {run_dir} --split val` (it makes the choice training makes, "
            f"on validation)")
    if not path.is_file():
        raise ConfigError(f"{path} not found: the run has no recorded final choice (training has not "
                          f"finished, or the run predates final.json); {redo}")
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(FinalChoice)}
        choice = FinalChoice(**{k: v for k, v in data.items() if k in known})
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is damaged ({type(exc).__name__}: {exc}); {redo}") from None
    members_ok = (isinstance(choice.members, list) and choice.members
                  and all(isinstance(m, int) and m >= 0 for m in choice.members))
    modes_ok = (isinstance(choice.tta_modes, list) and choice.tta_modes
                and all(m in TTA_MODES for m in choice.tta_modes))
    if data.get("format") != FINAL_FORMAT or not members_ok or not modes_ok \
            or not isinstance(choice.tta_used, bool) or not _checkpoints_ok(choice):
        raise ConfigError(f"{path} is not a valid vidcls final choice (format, members, tta_used, "
                          f"tta_modes or checkpoints); {redo}")
    return choice


def _checkpoints_ok(choice: FinalChoice) -> bool:
    """Recorded checkpoints are empty (an older record) or ``members/<i>/checkpoints/<name>.pt`` paths,
    one for every model index the choice names; nothing outside the run directory."""
    ckpts = choice.checkpoints
    if not isinstance(ckpts, list) or not all(isinstance(c, str) and CHECKPOINT_RE.fullmatch(c) for c in ckpts):
        return False
    return not ckpts or all(m < len(ckpts) for m in choice.members)


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
    from ..training.data import load_splits, run_features_dir
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
