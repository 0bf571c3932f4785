"""When not to trust a prediction: temperature scaling and an out-of-distribution score, both set on validation.

A run serves the mean softmax of some members, each over some views (the recorded final choice:
members, TTA or not). Everything here takes the raw logits of exactly that: ``(N, M, V, C)`` for N
videos, M served members, V served views (the TTA modes when TTA is used, else the original
sequence), C classes; ``(N, M, C)`` and ``(N, C)`` are read as one view / one member.

* Temperature: one ``T > 0`` divides every logit before its softmax; it is fitted by minimising the
  validation negative log-likelihood of the served probabilities (``fit_temperature``). Dividing
  every logit by the same T never changes a member's ranking of the classes, so a single member keeps
  its predicted class; calibration only makes the probabilities honest.
* Out-of-distribution score: the negative free energy ``T * logsumexp(logits / T)`` averaged over the
  served members and views (``energy_score``; higher is more in-distribution), or the largest served
  probability (``max_softmax_score``). The threshold is the 5th percentile of the validation scores,
  so about 95 % of validation videos pass; a video below it gets ``trusted: false`` and the reason.

``calibrate_run`` does all of it for a finished run and writes ``RUN_DIR/calibration.json``::

    {"temperature", "ece_before", "ece_after", "nll_before", "nll_after",
     "ood": {"score": "energy", "threshold", "val_pass_rate", "direction": "higher is more in-distribution"},
     ...}
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import ConfigError

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "vidcls-calibration"
T_BOUNDS = (0.05, 20.0)  # the temperature search range
VAL_PASS = 0.95  # share of validation videos above the OOD threshold
OOD_SCORES = ("energy", "max_softmax")
DEFAULT_OOD_SCORE = "energy"
DIRECTION = "higher is more in-distribution"
ECE_BINS = 15


# --- pure functions over logits ------------------------------------------------------------------

def as_4d(logits) -> np.ndarray:
    """``logits`` as float64 ``(N, M, V, C)``: ``(N, C)`` is one member and one view, ``(N, M, C)`` one view.

    Raises:
        ValueError: any other number of dimensions, or no class axis.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2:
        z = z[:, None, None, :]
    elif z.ndim == 3:
        z = z[:, :, None, :]
    if z.ndim != 4 or z.shape[-1] < 1:
        raise ValueError(f"logits must be (N, C), (N, M, C) or (N, M, V, C); got shape {np.shape(logits)}")
    return z


def _logsumexp(z: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(z - m), axis=axis))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def served_probs(logits, temperature: float = 1.0) -> np.ndarray:
    """The run's served probabilities ``(N, C)``: the mean over members and views of ``softmax(logits / T)``."""
    z = as_4d(logits)
    return _softmax(z / float(temperature)).mean(axis=(1, 2))


def nll(probs, labels, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at ``eps``)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    p = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p, eps, 1.0))))


def _golden_min(f, lo: float, hi: float, tol: float = 1e-5) -> float:
    """The minimiser of a unimodal ``f`` on ``[lo, hi]``."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit_temperature(logits, labels, bounds: tuple = T_BOUNDS, grid: int = 41) -> float:
    """The temperature that minimises the NLL of ``served_probs(logits, T)`` on ``labels``.

    A search over ``log T`` in ``bounds``: a grid of ``grid`` points (the NLL of an average of
    softmaxes need not be unimodal), then a golden-section refinement around the best grid point.
    The result never has a higher NLL than ``T = 1`` (it is returned instead when nothing beats it).

    Args:
        logits: (N, C), (N, M, C) or (N, M, V, C) raw logits; labels: (N,) class indices.
    Raises:
        ValueError: no videos, or labels that do not match the logits.
    """
    z = as_4d(logits)
    y = np.asarray(labels, dtype=np.int64)
    if len(z) == 0 or len(y) != len(z):
        raise ValueError(f"fit_temperature needs one label per video; got {len(z)} videos, {len(y)} labels")
    if y.min() < 0 or y.max() >= z.shape[-1]:
        raise ValueError(f"labels must lie in 0..{z.shape[-1] - 1}")

    def loss(log_t: float) -> float:
        return nll(served_probs(z, math.exp(log_t)), y)

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    points = np.linspace(lo, hi, grid)
    values = [loss(p) for p in points]
    k = int(np.argmin(values))
    best = _golden_min(loss, points[max(k - 1, 0)], points[min(k + 1, grid - 1)])
    if loss(best) > values[k]:
        best = float(points[k])
    if loss(best) > loss(0.0):  # T = 1, the uncalibrated model, is always a candidate
        return 1.0
    return float(math.exp(best))


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error with ``bins`` equal-width confidence bins.

    A video falls in bin ``b`` when its confidence (largest probability) lies in ``(b / bins, (b + 1) / bins]``
    (confidence 0 in the first bin). ECE = sum over bins of ``|B| / N * |accuracy(B) - mean confidence(B)|``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(probs) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy per video ``(N,)``: ``T * logsumexp(logits / T)`` averaged over members
    and views. Higher is more in-distribution."""
    z = as_4d(logits)
    t = float(temperature)
    return (t * _logsumexp(z / t, axis=-1)).mean(axis=(1, 2))


def max_softmax_score(logits, temperature: float = 1.0) -> np.ndarray:
    """The largest served probability per video ``(N,)``. Higher is more in-distribution."""
    return served_probs(logits, temperature).max(axis=1)


def ood_score(logits, temperature: float = 1.0, kind: str = DEFAULT_OOD_SCORE) -> np.ndarray:
    """The out-of-distribution score ``kind`` ("energy" or "max_softmax") per video; higher is more
    in-distribution. A non-finite logit gives a NaN score (never trusted)."""
    if kind not in OOD_SCORES:
        raise ConfigError(f"unknown OOD score {kind!r}; valid: {', '.join(OOD_SCORES)}")
    z = as_4d(logits)
    score = energy_score(z, temperature) if kind == "energy" else max_softmax_score(z, temperature)
    finite = np.isfinite(z).all(axis=(1, 2, 3))
    return np.where(finite, score, np.nan)


def calibration_score(logits, calibration: dict | None) -> np.ndarray | None:
    """The OOD score a run's ``calibration`` (``load_calibration``) asks for, at its temperature; None
    without a calibration."""
    if not calibration:
        return None
    kind = (calibration.get("ood") or {}).get("score", DEFAULT_OOD_SCORE)
    return ood_score(logits, calibration.get("temperature", 1.0), kind)


def ood_threshold(val_scores, pass_rate: float = VAL_PASS) -> tuple[float, float]:
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


def trust_verdict(score, calibration: dict | None) -> tuple[bool, str]:
    """Whether to trust one prediction with OOD score ``score``, and why.

    Returns:
        ``(True, "not calibrated")`` without a calibration; ``(False, reason)`` when the score is
        below the validation threshold (or not a finite number); else ``(True, "within the validation range")``.
    """
    ood = (calibration or {}).get("ood")
    if not ood or ood.get("threshold") is None:
        return True, "not calibrated"
    kind = ood.get("score", DEFAULT_OOD_SCORE)
    if score is None or not math.isfinite(float(score)):
        return False, f"the {kind} out-of-distribution score is not a finite number (broken features?)"
    threshold = float(ood["threshold"])
    if float(score) < threshold:
        rate = ood.get("val_pass_rate")
        share = f"{100 * rate:.0f} %" if isinstance(rate, (int, float)) else f"{100 * VAL_PASS:.0f} %"
        return False, (f"out-of-distribution score {float(score):.3f} is below the validation threshold "
                       f"{threshold:.3f} ({share} of validation videos pass; {kind} score)")
    return True, "within the validation range"


def calibration_record(logits, labels, kind: str = DEFAULT_OOD_SCORE) -> dict:
    """Everything ``calibration.json`` holds that follows from validation logits and labels alone."""
    z, y = as_4d(logits), np.asarray(labels, dtype=np.int64)
    t = fit_temperature(z, y)
    before, after = served_probs(z, 1.0), served_probs(z, t)
    threshold, passed = ood_threshold(ood_score(z, t, kind))
    return {"temperature": t,
            "ece_before": expected_calibration_error(before, y), "ece_after": expected_calibration_error(after, y),
            "nll_before": nll(before, y), "nll_after": nll(after, y),
            "ood": {"score": kind, "threshold": threshold, "val_pass_rate": passed, "direction": DIRECTION},
            "val_videos": int(len(y)), "ece_bins": ECE_BINS}


# --- a run's calibration -------------------------------------------------------------------------

def val_logits(run_dir, choice, dataset, batch_size: int, batch_frames, device) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits ``(N, M, V, C)`` of the served members and views of ``choice`` on ``dataset``
    (a ``FeatureDataset``, in its order), and its labels ``(N,)``."""
    import torch

    from ..training.data import make_loader
    from .evaluate import load_member
    from .tta import tta_batch

    views = list(choice.tta_modes) if choice.tta_used else ["original"]
    loader = make_loader(dataset, batch_size, batch_frames=batch_frames, workers=0)
    per_member = []
    for m in choice.members:
        model = load_member(run_dir, m, device, [dataset.store])
        out, positions = [], []
        with torch.inference_mode():
            for x, lengths, _, pos in loader:
                x = x.to(device).float()
                per_view = []
                for mode in views:
                    xm, lm = tta_batch(x, lengths, mode)
                    per_view.append(model(xm, lm.to(device)).float().double().cpu())
                out.append(torch.stack(per_view, dim=1))  # (B, V, C)
                positions.append(pos)
        order = torch.cat(positions).argsort()
        per_member.append(torch.cat(out)[order].numpy())
        del model
    return np.stack(per_member, axis=1), np.asarray(dataset.labels, dtype=np.int64)


def calibrate_run(run_dir, device: str = "auto", *, kind: str = DEFAULT_OOD_SCORE, log=None) -> dict:
    """Fit the temperature and the OOD threshold of a finished run on its validation split, and write
    ``RUN_DIR/calibration.json`` (atomically). ``summary.json``, when there, gets it under "calibration".

    The validation split is the one training used (``load_splits`` with the run's ``val_fraction``,
    ``seed`` and ``max_frames``); the logits are those of the recorded final choice (``final.json``).

    Returns:
        The calibration record (see the module docstring).
    Raises:
        ConfigError / StoreError / CheckpointError: no run there, no final choice, features moved.
        RunLockedError: another process is using ``run_dir`` (``fit``'s own call passes).
    """
    from ..config import load_config
    from ..training.data import load_splits
    from ..utils.device import resolve_device
    from ..utils.fs import atomic_write_json
    from ..utils.lock import run_lock
    from .evaluate import load_final_choice

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} holds no run (no config.yaml); train one with `vidcls train`")
    with run_lock(run_dir, "calibrate"):
        cfg = load_config(run_dir / "config.yaml")
        choice = load_final_choice(run_dir)
        splits = load_splits(cfg.features_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, augment=False,
                             max_frames=cfg.max_frames)
        logits, labels = val_logits(run_dir, choice, splits.val, cfg.batch_size, cfg.batch_frames,
                                    resolve_device(device))
        record = {"format": CALIBRATION_FORMAT, "version": 1, **calibration_record(logits, labels, kind),
                  "members": list(choice.members), "tta_used": bool(choice.tta_used),
                  "views": list(choice.tta_modes) if choice.tta_used else ["original"],
                  "val_source": splits.val_source}
        atomic_write_json(run_dir / CALIBRATION_FILE, record)
        summary_path = run_dir / "summary.json"
        if summary_path.is_file():
            try:
                summary = json.loads(summary_path.read_text())
            except (OSError, ValueError):
                summary = None
            if isinstance(summary, dict):
                atomic_write_json(summary_path, {**summary, "calibration": record})
    if log:
        log(describe(record))
    return record


def describe(record: dict) -> str:
    """One line on a calibration: temperature, ECE and NLL before/after, the OOD threshold."""
    ood = record["ood"]
    return (f"calibration: temperature {record['temperature']:.3f}; val ECE {record['ece_before']:.4f} -> "
            f"{record['ece_after']:.4f}, NLL {record['nll_before']:.4f} -> {record['nll_after']:.4f}; "
            f"OOD ({ood['score']}) threshold {ood['threshold']:.3f}, {100 * ood['val_pass_rate']:.1f} % of "
            f"validation videos pass")


def load_calibration(run_dir) -> dict | None:
    """``RUN_DIR/calibration.json``, or None when the run has none.

    Raises:
        ConfigError: the file is there but damaged or not a calibration; the message says how to redo it.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    redo = f"re-create it with `vidcls calibrate {run_dir}`"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is damaged ({type(exc).__name__}: {exc}); {redo}") from None
    ood = data.get("ood") if isinstance(data, dict) else None
    t = data.get("temperature") if isinstance(data, dict) else None
    ok = (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
          and isinstance(ood, dict) and isinstance(ood.get("threshold"), (int, float))
          and ood.get("score", DEFAULT_OOD_SCORE) in OOD_SCORES)
    if not ok:
        raise ConfigError(f"{path} is not a valid vidcls calibration (temperature, ood.threshold, ood.score); "
                          f"{redo}")
    return data
