"""Hand-built multi-label runs for the predict and serve tests (a helper module, not a test): one
``mean_mlp`` member with fixed weights, so the logits, and with them the expected label sets, are known
exactly, and the final.json / calibration.json the test writes itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vidcls.models import build_from_spec
from vidcls.run.checkpoint import save_checkpoint

CLASSES = ["outdoor", "dog", "music", "car"]
CHECKPOINT = "members/0/checkpoints/best.pt"


def identity_weights(d: int) -> dict:
    """``mean_mlp`` weights (hidden 2d) whose logits are the mean of the frames: relu([x; -x]) @ [I, -I]."""
    eye = torch.eye(d)
    return {
        "head.net.0.weight": torch.cat([eye, -eye]),
        "head.net.0.bias": torch.zeros(2 * d),
        "head.net.4.weight": torch.cat([eye, -eye], 1),
        "head.net.4.bias": torch.zeros(d),
    }


def constant_weights(d: int, logits: list[float]) -> dict:
    """``mean_mlp`` weights (hidden 2) whose logits are ``logits`` whatever the frames."""
    return {
        "head.net.0.weight": torch.zeros(2, d),
        "head.net.0.bias": torch.zeros(2),
        "head.net.4.weight": torch.zeros(len(logits), 2),
        "head.net.4.bias": torch.tensor(logits, dtype=torch.float32),
    }


def thresholds(per_class: list[float], rule: str = "per_class") -> dict:
    return {"rule": rule, "global": 0.5, "per_class": list(per_class), "support": [3] * len(per_class)}


def write_run(
    run: Path,
    *,
    weights: dict,
    feature_dim: int,
    final_thresholds: list[float] | None,
    extractor: dict | None = None,
    max_frames: int | None = None,
) -> Path:
    """A finished one-member multi-label run in ``run``: the checkpoint (task "multilabel") and final.json
    (with ``final_thresholds`` as its "thresholds", none when None)."""
    hidden = int(weights["head.net.0.bias"].shape[0])
    spec = {
        "name": "mean_mlp",
        "feature_dim": feature_dim,
        "n_classes": len(CLASSES),
        "hidden_dim": hidden,
        "dropout": 0.0,
    }
    model = build_from_spec(spec)
    model.load_state_dict(weights)
    save_checkpoint(
        run / CHECKPOINT,
        {
            "model": spec,
            "model_state": model.state_dict(),
            "class_names": CLASSES,
            "feature_dim": feature_dim,
            "task": "multilabel",
            "extractor": extractor or {},
            "max_frames": max_frames,
            "config": {},
        },
    )
    final = {
        "format": "vidcls-final-choice",
        "version": 1,
        "source": "member 0",
        "members": [0],
        "tta_used": False,
        "tta_modes": ["original"],
        "select": "gap_at_20",
        "reason": "hand-built for a test",
        "val_score": 0.5,
        "checkpoints": [CHECKPOINT],
        "task": "multilabel",
        "thresholds": {} if final_thresholds is None else thresholds(final_thresholds),
    }
    (run / "final.json").write_text(json.dumps(final))
    return run


def write_calibration(
    run: Path,
    *,
    temperature: float,
    per_class: list[float] | None,
    energy_threshold: float,
    views: list[str] = ["original"],  # noqa: B006 - never mutated
    task: str = "multilabel",
) -> None:
    """calibration.json of a ``task`` run for member 0 with ``views``: the temperature, an energy
    threshold and (``per_class`` not None) the re-chosen decision thresholds."""
    cal = {
        "format": "vidcls-calibration",
        "version": 2,
        "temperature": temperature,
        "ood": {
            "score": "energy",
            "threshold": energy_threshold,
            "val_pass_rate": 0.95,
            "scores": ["energy"],
            "thresholds": {"energy": energy_threshold},
        },
        "members": [0],
        "views": list(views),
        "task": task,
    }
    if per_class is not None:
        cal["thresholds"] = thresholds(per_class)
    (run / "calibration.json").write_text(json.dumps(cal))


def joint_energy(logits: list[float], t: float) -> float:
    """``sum_c T * softplus(z_c / T)``, by hand."""
    z = np.asarray(logits, dtype=np.float64) / t
    return float(np.sum(t * np.log1p(np.exp(z))))


def sigmoid(logits: list[float], t: float = 1.0) -> list[float]:
    return [float(1.0 / (1.0 + np.exp(-z / t))) for z in logits]
