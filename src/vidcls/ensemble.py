"""Test-time augmentation, seed ensembles and the choices between them, made on validation data only.

The source system averaged every ensemble member, including collapsed ones, and always applied TTA.
Here a member far below the others is excluded (with the reason recorded), and TTA is used for a
member or the ensemble only when it improved that model's validation metric (``--tta auto``).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint
from .data import make_loader
from .evaluate import classification_metrics
from .fsutil import atomic_write_json, atomic_write_text
from .models import build_model

TTA_MODES = ("original", "reverse", "speed_up", "speed_down")
COLLAPSE_MARGIN = 0.10  # a member this far below the members' median validation score is excluded


def tta_indices(n_frames: int, mode: str) -> torch.Tensor:
    """Frame indices that turn a video of ``n_frames`` into its ``mode`` view.

    ``reverse`` flips time; ``speed_up`` (only when > 10 frames) keeps ``linspace`` over the frames
    to ``n // 2`` indices; ``speed_down`` (only when > 5 frames) stretches to ``int(1.5 n)`` indices,
    clamped to the last frame. Other lengths, and ``original``, keep the video as it is.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; valid modes: {', '.join(TTA_MODES)}")
    if mode == "reverse":
        return torch.arange(n_frames - 1, -1, -1)
    if mode == "speed_up" and n_frames > 10:
        return torch.linspace(0, n_frames - 1, n_frames // 2).long()
    if mode == "speed_down" and n_frames > 5:
        return torch.linspace(0, n_frames - 1, int(1.5 * n_frames)).long().clamp(max=n_frames - 1)
    return torch.arange(n_frames)


def tta_batch(x: torch.Tensor, lengths: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``mode`` to every video of a padded batch.

    Args:
        x: (B, T, D) zero-padded; lengths: (B,) valid frames per row.
    Returns:
        x' (B, T', D) zero-padded, lengths' (B,).
    """
    if mode == "original":
        return x, lengths
    idx = [tta_indices(int(n), mode) for n in lengths]
    new_len = torch.tensor([len(i) for i in idx], dtype=torch.int64)
    out = x.new_zeros(x.shape[0], int(new_len.max()), x.shape[2])
    for b, i in enumerate(idx):
        out[b, : len(i)] = x[b, i.to(x.device)]
    return out, new_len


@torch.inference_mode()
def predict_modes(model: nn.Module, loader, device: torch.device, modes=TTA_MODES) -> dict:
    """Softmax of ``model`` for every video of a sequential ``loader`` under each TTA mode.

    Returns:
        ``{mode: (N, C) float64}`` in dataset order, plus ``"labels"``: (N,).
    """
    model.eval()
    probs = {m: [] for m in modes}
    labels, positions = [], []
    for x, lengths, y, pos in loader:
        x = x.to(device, non_blocking=True).float()
        for mode in modes:
            xm, lm = tta_batch(x, lengths, mode)
            probs[mode].append(torch.softmax(model(xm, lm.to(device)).float(), dim=1).double().cpu())
        labels.append(y)
        positions.append(pos)
    order = torch.cat(positions).argsort()
    out = {m: torch.cat(p)[order].numpy() for m, p in probs.items()}
    out["labels"] = torch.cat(labels)[order].numpy()
    return out


def tta_mean(mode_probs: dict, modes) -> np.ndarray:
    """Average of the softmax over ``modes`` (N, C)."""
    return np.mean([mode_probs[m] for m in modes], axis=0)


def score(metrics: dict, select: str) -> float:
    """The validation number a choice is made on: accuracy or macro F1."""
    return metrics["accuracy"] if select == "val_acc" else metrics["f1_macro"]


def collapsed_members(val_metrics: list[dict], select: str, margin: float = COLLAPSE_MARGIN) -> list[dict]:
    """Members to leave out of the ensemble, each ``{"member": i, "reason": ...}``.

    A member is out when it predicts one class for every validation video, or its balanced accuracy
    (mean recall) is at chance (<= 1/C), or its validation score is below the members' median by more
    than ``margin``. The best member always stays in.
    """
    scores = np.array([score(m, select) for m in val_metrics])
    median, best = float(np.median(scores)), int(np.argmax(scores))
    out = []
    for i, m in enumerate(val_metrics):
        if i == best or len(val_metrics) == 1:
            continue
        cm = np.array(m["confusion_matrix"])
        n_classes, present = cm.shape[0], cm.sum(1) > 0
        balanced = float(np.mean(np.diag(cm)[present] / cm.sum(1)[present])) if present.any() else 0.0
        if present.sum() > 1 and (cm.sum(0) > 0).sum() == 1:
            reason = f"predicts a single class for all {int(cm.sum())} validation videos"
        elif balanced <= 1.0 / n_classes + 1e-9:
            reason = f"validation balanced accuracy {balanced:.3f} is at chance (1/{n_classes})"
        elif scores[i] < median - margin:
            reason = (f"validation {select} {scores[i]:.3f} is more than {margin:.2f} below the members' "
                      f"median {median:.3f}")
        else:
            continue
        out.append({"member": i, "reason": reason})
    return out


def decide_tta(val_off: dict, val_on: dict, select: str, tta: str) -> bool:
    """Whether to use TTA: ``on``/``off`` as asked; ``auto`` only if it improved the validation score."""
    if tta in ("on", "off"):
        return tta == "on"
    return score(val_on, select) > score(val_off, select)


def combine(member_probs: list[dict], splits_present: list[str], names: list, select: str,
            tta: str = "auto", modes=TTA_MODES) -> dict:
    """Every member with and without TTA, the ensemble, and the choices, from per-mode softmax.

    Args:
        member_probs: per member ``{split: {mode: (N, C), "labels": (N,)}}``; "val" must be present.
        splits_present: e.g. ``["val", "test"]``.
    Returns:
        ``{"members": [...], "ensemble": {...}, "tta": {...}, "final": {...}, "predictions": {split: probs}}``.
        ``final`` is what the run serves: the ensemble, or the best single member when that scored
        higher on validation than the ensemble (recorded in ``final["source"]``).
    """
    def metrics(split, probs):
        return classification_metrics(member_probs[0][split]["labels"], probs, names)

    members = []
    for i, mp in enumerate(member_probs):
        row = {"member": i}
        for split in splits_present:
            row[split] = metrics(split, mp[split]["original"])
            row[f"{split}_tta"] = metrics(split, tta_mean(mp[split], modes))
        row["tta_used"] = decide_tta(row["val"], row["val_tta"], select, tta)
        members.append(row)
    excluded = collapsed_members([m["val"] for m in members], select)
    used = [m["member"] for m in members if m["member"] not in {e["member"] for e in excluded}]

    def ens(split, which):
        return np.mean([tta_mean(member_probs[i][split], which) for i in used], axis=0)

    probs_off = {s: ens(s, ("original",)) for s in splits_present}
    probs_on = {s: ens(s, modes) for s in splits_present}
    off = {s: metrics(s, probs_off[s]) for s in splits_present}
    on = {s: metrics(s, probs_on[s]) for s in splits_present}
    use_tta = decide_tta(off["val"], on["val"], select, tta)
    final = {"source": "ensemble", "tta_used": use_tta, "reason": "the ensemble of the used members",
             "predictions": probs_on if use_tta else probs_off,
             "metrics": {s: (on if use_tta else off)[s] for s in splits_present}}
    best = max(members, key=lambda m: score(m["val_tta" if m["tta_used"] else "val"], select))
    best_val = best["val_tta" if best["tta_used"] else "val"]
    if len(members) > 1 and score(best_val, select) > score(final["metrics"]["val"], select):
        # averaging lost to a single member on validation: serve that member instead
        b = best["member"]
        final = {"source": f"member {b}", "tta_used": best["tta_used"],
                 "reason": f"member {b} alone scored higher on validation ({select} "
                           f"{score(best_val, select):.4f}) than the ensemble "
                           f"({score(final['metrics']['val'], select):.4f})",
                 "predictions": {s: tta_mean(member_probs[b][s], modes if best["tta_used"] else ("original",))
                                 for s in splits_present},
                 "metrics": {s: best[f"{s}_tta" if best["tta_used"] else s] for s in splits_present}}
    per_mode = {mode: {s: _brief(metrics(s, ens(s, (mode,)))) for s in splits_present} for mode in modes}
    return {
        "members": members,
        "ensemble": {"members_used": used, "excluded": excluded, "tta_used": use_tta,
                     **{s: (on if use_tta else off)[s] for s in splits_present},
                     "without_tta": {s: _brief(off[s]) for s in splits_present},
                     "with_tta": {s: _brief(on[s]) for s in splits_present}},
        "tta": {"mode": tta, "modes": list(modes), "used": use_tta, "per_mode": per_mode,
                **{s: on[s] for s in splits_present}},
        "final": {"source": final["source"], "tta_used": final["tta_used"], "reason": final["reason"],
                  **final["metrics"]},
        "predictions": final["predictions"],
    }


def _brief(m: dict) -> dict:
    return {k: m[k] for k in ("accuracy", "f1_weighted", "f1_macro", "worst_class_f1")}


def brief_mean(metrics: list[dict]) -> dict:
    """Mean over members of the headline metrics."""
    return {k: float(np.mean([m[k] for m in metrics])) for k in ("accuracy", "f1_weighted", "f1_macro",
                                                                  "worst_class_f1")}


def load_member(run_dir: Path, member: int, device: torch.device) -> nn.Module:
    """Rebuild member ``member`` from its ``best.pt`` (eval mode, on ``device``)."""
    ckpt = load_checkpoint(Path(run_dir) / "members" / str(member) / "checkpoints" / "best.pt", device)
    spec = dict(ckpt["model"])
    model = build_model(spec.pop("name"), **spec)
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval()


def evaluate_run(cfg, run_dir, splits, device: torch.device, tta: str | None = None) -> dict:
    """Members (with and without TTA) and their ensemble on val and, when present, test.

    Every choice (excluded members, TTA) is made on val; test is only scored. Writes
    ``RUN_DIR/eval_<split>.json`` for each split and returns ``combine``'s result.
    """
    datasets = {"val": splits.val, **({"test": splits.test} if splits.test is not None else {})}
    loaders = {s: make_loader(ds, cfg.batch_size, workers=0) for s, ds in datasets.items()}
    member_probs = []
    for i in range(cfg.members):
        model = load_member(run_dir, i, device)
        member_probs.append({s: predict_modes(model, ld, device, cfg.tta_modes) for s, ld in loaders.items()})
        del model
    results = combine(member_probs, list(datasets), splits.class_names, cfg.select, tta or cfg.tta,
                      cfg.tta_modes)
    for split, ds in datasets.items():
        atomic_write_json(Path(run_dir) / f"eval_{split}.json", _eval_record(split, ds, results, cfg))
    return results


def _eval_record(split: str, ds, results: dict, cfg) -> dict:
    probs = results["predictions"][split]
    names = ds.store.class_names
    pred, labels = probs.argmax(1), ds.labels
    return {
        "split": split, "tta": cfg.tta, "tta_modes": cfg.tta_modes, "select": cfg.select,
        "members": [{"member": m["member"], "tta_used": m["tta_used"], "without_tta": m[split],
                     "with_tta": m[f"{split}_tta"]} for m in results["members"]],
        "ensemble": {k: results["ensemble"][k] for k in ("members_used", "excluded", "tta_used")}
        | {"metrics": results["ensemble"][split]},
        "final": {"source": results["final"]["source"], "tta_used": results["final"]["tta_used"],
                  "metrics": results["final"][split]},
        "tta_per_mode": {mode: v[split] for mode, v in results["tta"]["per_mode"].items()},
        "predictions": [{"video_id": vid, "label": names[int(y)], "pred": names[int(p)],
                         "confidence": float(pr.max()), "correct": bool(y == p)}
                        for vid, y, p, pr in zip(ds.video_ids(), labels, pred, probs)],
    }


def write_run_tables(run_dir, cfg, splits, results) -> Path:
    """``RUN_DIR/metrics_all.csv``: every member's per-epoch metrics in one table (column ``member``)."""
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


def evaluate_saved_run(run_dir, split: str = "test", tta: str = "auto", device: str = "auto") -> dict:
    """``vidcls evaluate``: re-score a finished run's members and ensemble on ``split``.

    Raises:
        ConfigError / StoreError / CheckpointError: no run there, features moved, or bad checkpoints.
    """
    from .config import ConfigError, load_config, resolve_device
    from .data import load_splits

    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} holds no run (no config.yaml); train one with `vidcls train`")
    cfg = load_config(cfg_path, {"tta": tta})
    splits = load_splits(cfg.features_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, augment=False)
    if split == "test" and splits.test is None:
        raise ConfigError(f"{cfg.features_dir} has no test.h5; use --split val")
    results = evaluate_run(cfg, run_dir, splits, resolve_device(device), tta)
    return {"split": split, "members": results["members"], "ensemble": results["ensemble"],
            "tta": results["tta"], "path": str(Path(run_dir) / f"eval_{split}.json")}
