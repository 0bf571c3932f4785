"""Inference over a loader and the classification metrics every report uses."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..engine.probs import served_probs
from ..utils.dist import SINGLE, Dist, gather


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    criterion: nn.Module | None = None,
    task: str = "single",
) -> dict:
    """Run ``model`` over ``loader`` in eval mode.

    Returns:
        ``{"probs": (N, C) float64, "labels": (N,) int64 (multi-label: (N, C) 0/1), "loss": mean criterion
        or None, "positions": (N,) int64, "loss_sum"}``, rows in dataset order (sorted by the positions the
        loader's rows carry); ``probs`` is the softmax of the logits, or their sigmoid for ``task``
        "multilabel" (``engine.probs.served_probs``, as everywhere).
    """
    model.eval()
    outs, labels, positions, loss_sum = [], [], [], 0.0
    for x, lengths, y, pos in loader:
        x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
        logits = model(x, lengths.to(device)).float()
        if criterion is not None:
            loss_sum += float(criterion(logits, y)) * len(y)
        outs.append(logits.double().cpu())
        labels.append(y.cpu())
        positions.append(pos)
    pos = torch.cat(positions)
    order = pos.argsort()
    n = int(order.numel())
    return {
        "probs": served_probs(torch.cat(outs)[order].numpy(), task=task),
        "labels": torch.cat(labels)[order].numpy(),
        "loss": loss_sum / max(n, 1) if criterion is not None else None,
        "positions": pos[order].numpy(),
        "loss_sum": loss_sum,
    }


def gather_predictions(out: dict, dist: Dist) -> dict:
    """Under torchrun: every rank's ``predict`` output over its share of the videos, joined in dataset
    order on every rank, with the loss averaged over all videos (not over rank 0's share)."""
    parts = gather(out, dist)
    pos = np.concatenate([p["positions"] for p in parts])
    order = np.argsort(pos, kind="stable")
    n = len(pos)
    loss_sum = sum(p["loss_sum"] for p in parts)
    return {
        "probs": np.concatenate([p["probs"] for p in parts])[order],
        "labels": np.concatenate([p["labels"] for p in parts])[order],
        "loss": loss_sum / max(n, 1) if out["loss"] is not None else None,
        "positions": pos[order],
        "loss_sum": loss_sum,
    }


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list) -> dict:
    """Accuracy, weighted / macro / per-class F1, worst-class F1, precision, recall, confusion matrix.

    Args:
        labels: (N,) true class indices.
        probs: (N, C) class probabilities (or any scores: the argmax is the prediction).
    Returns:
        A JSON-ready dict; fractions in [0, 1]. Classes absent from ``labels`` and never predicted get
        F1 0 and are left out of ``worst_class_f1`` (they say nothing about this split).
    """
    # imported here: sklearn costs ~1 s at import, paid by every spawned --parallel-members process
    from sklearn.metrics import (
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    n_classes = len(class_names)
    pred = np.asarray(probs).argmax(axis=1)
    labels = np.asarray(labels)
    all_c = list(range(n_classes))
    prec, rec, f1, support = precision_recall_fscore_support(labels, pred, labels=all_c, zero_division=0)
    present = [c for c in all_c if support[c] > 0]
    return {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
        "f1_weighted": float(f1_score(labels, pred, labels=all_c, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(labels, pred, labels=present or all_c, average="macro", zero_division=0)),
        "f1_per_class": {class_names[c]: float(f1[c]) for c in all_c},
        "precision_per_class": {class_names[c]: float(prec[c]) for c in all_c},
        "recall_per_class": {class_names[c]: float(rec[c]) for c in all_c},
        "support_per_class": {class_names[c]: int(support[c]) for c in all_c},
        "worst_class_f1": float(min(f1[c] for c in present)) if present else 0.0,
        "confusion_matrix": confusion_matrix(labels, pred, labels=all_c).tolist(),
    }


def validate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    class_names: list,
    criterion: nn.Module | None = None,
    dist: Dist = SINGLE,
    *,
    task: str = "single",
) -> dict:
    """One model's validation pass (the training loop's, every epoch): ``predict`` +
    ``classification_metrics``, plus ``loss`` (None without a criterion). Under torchrun each rank's
    loader holds its share of the videos and the metrics are those of all ranks' rows gathered.
    Scoring a whole saved run is ``evaluation.evaluate``."""
    out = predict(model, loader, device, criterion, task)
    if dist.active:
        out = gather_predictions(out, dist)
    if task == "multilabel":  # at threshold 0.5: the run's own thresholds are chosen after training
        from .multilabel import multilabel_metrics

        metrics = multilabel_metrics(out["labels"], out["probs"], 0.5, class_names)
    else:
        metrics = classification_metrics(out["labels"], out["probs"], class_names)
    metrics["loss"] = out["loss"]
    return metrics
