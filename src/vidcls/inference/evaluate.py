"""Scoring a trained run (``vidcls evaluate``, and the last step of ``fit``): every member with and
without TTA and the ensemble, on val and test; the choices come from ``policy``; writes
``RUN_DIR/eval_<split>.json`` and ``metrics_all.csv``."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from torch import nn

from ..models import build_from_spec
from ..training.checkpoint import load_checkpoint
from ..training.data import make_loader
from ..utils.fs import atomic_write_json, atomic_write_text
from .policy import combine
from .tta import predict_modes


def load_member(run_dir: Path, member: int, device: torch.device) -> nn.Module:
    """Rebuild member ``member`` from its ``best.pt`` (eval mode, on ``device``)."""
    ckpt = load_checkpoint(Path(run_dir) / "members" / str(member) / "checkpoints" / "best.pt", device)
    model = build_from_spec(ckpt["model"])
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
    from ..config import load_config
    from ..errors import ConfigError
    from ..training.data import load_splits
    from ..utils.device import resolve_device

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
