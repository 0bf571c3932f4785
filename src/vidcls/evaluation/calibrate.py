"""When not to trust a prediction: temperature scaling and an out-of-distribution score, both set on validation.

A run serves the mean softmax of some members, each over some views (the recorded final choice:
members, TTA or not). Everything here takes the raw logits of exactly that: ``(N, M, V, C)`` for N
videos, M served members, V served views (the TTA modes when TTA is used, else the original
sequence), C classes; ``(N, M, C)`` and ``(N, C)`` are read as one view / one member.

* Temperature: one ``T > 0`` divides every logit before its softmax; it is the maximum a posteriori
  fit of the validation negative log-likelihood of the served probabilities under a log-normal prior
  centred on T = 1 (``fit_temperature``), so that a validation split the model separates perfectly
  cannot drive T to its floor (every probability 1.000). Dividing
  every logit by the same T never changes a member's ranking of the classes, so a single member keeps
  its predicted class; calibration only makes the probabilities honest.
* Out-of-distribution scores, higher is more in-distribution: the negative free energy
  ``T * logsumexp(logits / T)`` averaged over the served members and views (``energy_score``), or the
  largest served probability (``max_softmax_score``); and a feature-space typicality
  (:mod:`vidcls.engine.typicality`, statistics of the training split in ``RUN_DIR/typicality.npz``)
  that catches what logits cannot (constant, zero, noise sequences). A video is trusted only when every
  score passes its threshold; the thresholds share one validation quantile, chosen so that about 95 %
  of validation videos pass them all (``joint_thresholds``).

``calibrate_run`` does all of it for a finished run and writes ``RUN_DIR/calibration.json``::

    {"temperature", "ece_before", "ece_after", "nll_before", "nll_after",
     "temperature_fit": {"method": "map_lognormal", "prior_sigma", "mle_temperature"},
     "ood": {"score": "energy", "threshold" (energy's), "val_pass_rate" (all scores together), "direction",
             "scores": ["energy", "typicality"], "thresholds": {name: float}, "pass_rates": {name: float},
             "typicality": {"file": "typicality.npz", ...}}, ...}

A calibration without "scores" (written before typicality) is read as energy alone.

Every record says its ``"task"``. A multi-label run (``"task": "multilabel"``, one sigmoid per class)
is calibrated with ONE scalar temperature for all classes, fitted by the same MAP rule, where the NLL
is the mean over videos of the summed binary cross-entropy of the served sigmoids (``temperature``'s
module docstring says why not one per class); its ECE is the label-wise one; its OOD logit scores are
the joint energy and the largest sigmoid (``engine.scores``). Its decision thresholds are then chosen
again on the calibrated validation probabilities (the run's ``--thresholds`` rule) and recorded as
``"thresholds"`` (``{"rule", "global", "per_class", "support"}``): prediction uses them when the
calibration is that of the served choice, else final.json's.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from ..config import MULTILABEL, TrainConfig
from ..data.dataset import FeatureDataset, Splits
from ..engine.forward import Outputs, forward
from ..engine.members import load_members
from ..engine.probs import as_4d, served_probs
from ..engine.scores import ood_score
from ..engine.typicality import (
    TYPICALITY_METHOD,
    fit_typicality,
    seen_videos,
    typicality_score,
)
from ..run.calibration import (
    CALIBRATION_FORMAT,
    DEFAULT_OOD_SCORE,
    DIRECTION,
    VAL_PASS,
    ood_checks,
    save_typicality,
)
from ..run.final import FinalChoice, run_task
from ..run.rundir import RunDir
from .multilabel import choose_thresholds
from .temperature import (  # noqa: F401  (expected_calibration_error, nll: re-exported for the tests)
    ECE_BINS,
    T_PRIOR_SIGMA,
    expected_calibration_error,
    fit_temperature,
    nll,
    served_ece,
    served_nll,
)

# --- pure functions over logits ------------------------------------------------------------------


def ood_threshold(val_scores: np.ndarray, pass_rate: float = VAL_PASS) -> tuple[float, float]:
    """``(threshold, share of val_scores >= threshold)``: the ``1 - pass_rate`` quantile of the
    validation scores (the lower neighbour, so at least ``pass_rate`` of them pass).

    Raises:
        ValueError: no finite validation score.
    """
    s = np.asarray(val_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite validation OOD score to set a threshold on")
    threshold = float(np.quantile(s, 1.0 - pass_rate, method="lower"))
    return threshold, float(np.mean(s >= threshold))


def joint_thresholds(
    val_scores: dict, pass_rate: float = VAL_PASS, steps: int = 200
) -> tuple[dict, float, dict]:
    """Thresholds for several scores judged together (a video passes when it passes them all):
    every score at the same quantile ``q`` of its validation scores, the largest ``q <= 1 - pass_rate``
    with which at least ``pass_rate`` of the validation videos pass them all.

    Returns:
        ``({name: threshold}, share passing all, {name: share passing that one})``.
    Raises:
        ValueError: a score without any finite validation value.
    """
    s = {k: np.asarray(v, dtype=np.float64) for k, v in val_scores.items()}
    for q in np.linspace(1.0 - pass_rate, 0.0, steps + 1):
        thresholds = {k: ood_threshold(v, 1.0 - q)[0] for k, v in s.items()}
        passed = np.all([v >= thresholds[k] for k, v in s.items()], axis=0)
        if passed.mean() >= pass_rate or q == 0.0:
            break
    return thresholds, float(passed.mean()), {k: float(np.mean(v >= thresholds[k])) for k, v in s.items()}


def calibration_record(
    logits: np.ndarray,
    labels: np.ndarray | None,
    kind: str = DEFAULT_OOD_SCORE,
    extra: dict | None = None,
    *,
    task: str = "single",
    rule: str = "per_class",
    fixed: float = 0.5,
) -> dict:
    """Everything ``calibration.json`` holds that follows from validation logits and labels, and the
    ``extra`` validation scores (``{"typicality": (N,)}``) judged together with ``kind``.

    ``task`` "multilabel": ``labels`` are (N, C) 0/1 label sets; the record also holds the decision
    ``"thresholds"`` chosen on the calibrated validation probabilities (``choose_thresholds`` with
    ``rule`` and ``fixed``)."""
    z, y = as_4d(logits), np.asarray(labels, dtype=np.int64)
    t = fit_temperature(z, y, task=task)
    before, after = served_probs(z, 1.0, task), served_probs(z, t, task)
    scores = {kind: ood_score(z, t, kind, task), **(extra or {})}
    thresholds, passed, rates = joint_thresholds(scores)
    record = {
        "task": task,
        "temperature": t,
        "ece_before": served_ece(before, y, task),
        "ece_after": served_ece(after, y, task),
        "nll_before": served_nll(before, y, task),
        "nll_after": served_nll(after, y, task),
        "temperature_fit": {
            "method": "map_lognormal",
            "prior_sigma": T_PRIOR_SIGMA,
            "mle_temperature": fit_temperature(z, y, prior_sigma=None, task=task),
        },
        "ood": {
            "score": kind,
            "threshold": thresholds[kind],
            "val_pass_rate": passed,
            "direction": DIRECTION,
            "scores": list(scores),
            "thresholds": thresholds,
            "pass_rates": rates,
        },
        "val_videos": int(len(y)),
        "ece_bins": ECE_BINS,
    }
    if task == MULTILABEL:
        record["thresholds"] = choose_thresholds(y, after, rule=rule, fixed=fixed)
    return record


# --- a run's calibration -------------------------------------------------------------------------


def served_views(choice: FinalChoice) -> list:
    """The views ``choice`` (a ``FinalChoice``) averages per member: its TTA modes, else the original."""
    return list(choice.tta_modes) if choice.tta_used else ["original"]


def served_outputs(
    run_dir: str | os.PathLike,
    choice: FinalChoice,
    dataset: FeatureDataset,
    *,
    cfg: TrainConfig,
    device: torch.device,
    outputs: Outputs | None = None,
) -> Outputs:
    """The ``Outputs`` of the served members and views of ``choice`` on ``dataset`` (a
    ``FeatureDataset``, in its order, with its labels): selected from ``outputs`` when given (those of
    every model on ``dataset``, as ``evaluate_run`` computed them), else one ``forward`` of the files
    ``final.json`` says the members are, checked against the dataset's store.

    Raises:
        ValueError: ``outputs`` of other videos than ``dataset``'s (their labels differ).
    """
    labels = dataset.labels if dataset.targets is None else dataset.targets
    if outputs is not None:
        if outputs.labels is None or not np.array_equal(outputs.labels, labels):
            raise ValueError("the outputs given to calibrate are not those of the run's validation split")
        return outputs.select(members=choice.members, views=served_views(choice))
    models, _ = load_members(run_dir, choice, choice.members, device, [dataset.store])
    return forward(
        models,
        served_views(choice),
        dataset,
        batch_size=cfg.batch_size,
        batch_frames=cfg.batch_frames,
        device=device,
        members=choice.members,
        shortest_first=True,
        task=choice.task,
    )


def _record(
    choice: FinalChoice,
    splits: Splits,
    val: Outputs,
    kind: str,
    stats: dict,
    *,
    cfg: TrainConfig,
    typicality_file: str,
) -> dict:
    """calibration.json's content: ``calibration_record`` of the served validation outputs ``val``
    with the validation typicality under ``stats`` (a multi-label run's thresholds by ``cfg``'s
    rule), and what it was fitted for."""
    typ = {"typicality": typicality_score(list(seen_videos(splits.val)), stats)}
    fitted = calibration_record(
        val.logits, val.labels, kind, typ, task=val.task, rule=cfg.thresholds, fixed=cfg.threshold
    )
    record = {
        "format": CALIBRATION_FORMAT,
        "version": 2,
        **fitted,
        "members": list(choice.members),
        "tta_used": bool(choice.tta_used),
        "views": served_views(choice),
        "val_source": splits.val_source,
    }
    record["ood"]["typicality"] = {
        "file": typicality_file,
        "train_videos": len(splits.train),
        "method": TYPICALITY_METHOD,
    }
    return record


def calibrate_run(
    run_dir: str | os.PathLike,
    device: str = "auto",
    *,
    kind: str = DEFAULT_OOD_SCORE,
    log: Callable[[str], object] | None = None,
    features_dir: str | os.PathLike | None = None,
    outputs: Outputs | None = None,
) -> dict:
    """Fit the temperature and the OOD thresholds of a finished run on its validation split, the
    typicality statistics on its training split (``RUN_DIR/typicality.npz``), and write
    ``RUN_DIR/calibration.json`` (atomically). ``summary.json``, when there, gets it under "calibration".

    The validation split is the one training used (``load_splits`` with the run's ``val_fraction``,
    ``seed`` and ``max_frames``); the logits are those of the recorded final choice (``final.json``):
    selected from ``outputs`` (every model's validation ``Outputs``, as ``evaluate_run`` returns them
    under ``"outputs"``) when given, else computed (``served_outputs``).

    Returns:
        The calibration record (see the module docstring).
    Raises:
        ConfigError / StoreError / CheckpointError: no run there, no final choice, features moved.
        RunLockedError: another process is using ``run_dir`` (``fit``'s own call passes).
    """
    from ..data.dataset import load_splits
    from ..utils.device import resolve_device

    run = RunDir(run_dir).require()
    with run.lock("calibrate"):
        cfg = run.read_config()
        choice = run.read_final()
        splits = load_splits(
            run.features_dir(cfg.features_dir, features_dir),
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            augment=False,
            max_frames=cfg.max_frames,
            task=run_task(cfg),
        )
        val = served_outputs(run, choice, splits.val, cfg=cfg, device=resolve_device(device), outputs=outputs)
        stats = fit_typicality(seen_videos(splits.train), splits.train.labels, len(splits.class_names))
        save_typicality(run.typicality, stats)  # before the calibration that refers to it
        record = _record(choice, splits, val, kind, stats, cfg=cfg, typicality_file=run.typicality.name)
        run.write_calibration(record)
        run.add_to_summary("calibration", record)
    if log:
        log(describe(record))
    return record


def describe(record: dict) -> str:
    """One line on a calibration: temperature, ECE and NLL before/after, the OOD threshold."""
    ood = record["ood"]
    checks = ", ".join(f"{k} {v:.3f}" for k, v in ood_checks(record).items())
    fit = record.get("temperature_fit") or {}
    how = (
        f" (log-normal prior, sd {fit['prior_sigma']:g} in log T; the NLL alone gives "
        f"{fit['mle_temperature']:.3f})"
        if "mle_temperature" in fit and "prior_sigma" in fit
        else ""
    )
    th = record.get("thresholds") or {}
    decision = f"; decision thresholds {th['rule']} (global {th['global']:.2f})" if "rule" in th else ""
    return (
        f"calibration: temperature {record['temperature']:.3f}{how}; val ECE {record['ece_before']:.4f} -> "
        f"{record['ece_after']:.4f}, NLL {record['nll_before']:.4f} -> {record['nll_after']:.4f}; "
        f"OOD thresholds {checks}, {100 * ood['val_pass_rate']:.1f} % of validation videos pass{decision}"
    )
