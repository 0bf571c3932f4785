"""The ensemble policy: which members, TTA or not, ensemble or one member, made on validation data only.

The source system averaged every ensemble member, including collapsed ones, and always applied TTA.
Here a member far below the others is excluded (with the reason recorded), and TTA is used for a
member or the ensemble only when it improved that model's validation metric (``--tta auto``).
"""
from __future__ import annotations

import numpy as np

from .metrics import classification_metrics
from .tta import TTA_MODES, tta_mean

COLLAPSE_MARGIN = 0.10  # a member this far below the members' median validation score is excluded


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
