"""``vidcls <command>``: argument parsing and messages only; the work is done by the Python API."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__

TRAIN_FLAGS = [  # (flag, type, help); every one is also a YAML key (dashes -> underscores)
    ("--epochs", int, "training epochs (150)"),
    ("--batch-size", int, "videos per batch (48)"),
    ("--lr", float, "AdamW learning rate (1e-3)"),
    ("--weight-decay", float, "AdamW weight decay (5e-4)"),
    ("--model", str, "bilstm_attn | transformer | mean_mlp"),
    ("--hidden-dim", int, "model width (768)"),
    ("--layers", int, "recurrent / encoder layers (4)"),
    ("--heads", int, "attention heads (12)"),
    ("--dropout", float, "dropout (0.4)"),
    ("--patience", int, "early-stop after this many epochs without improvement; 0 = never (25)"),
    ("--select", str, "val_acc | val_f1_macro: metric that picks the best checkpoint (val_acc)"),
    ("--seed", int, "random seed (42)"),
    ("--device", str, "auto | cpu | cuda | cuda:N (auto)"),
    ("--workers", int, "DataLoader worker processes (2)"),
    ("--monitor-interval", float, "seconds between resource-log records (1800)"),
    ("--val-fraction", float, "validation share carved from train when there is no val.h5 (0.15)"),
    ("--sampler", str, "weighted | shuffle (weighted)"),
    ("--alpha", str, "focal-loss class weights: inverse_freq | none (inverse_freq)"),
    ("--gamma", float, "focal-loss gamma (2.0)"),
    ("--smoothing", float, "label smoothing (0.1)"),
]


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("features_dir", help="directory with train.h5 [val.h5] [test.h5]")
    p.add_argument("run_dir", help="directory for config, checkpoints, metrics, plots, summary")
    p.add_argument("--config", help="YAML file with any of the options below (flags win)")
    for flag, typ, help_ in TRAIN_FLAGS:
        p.add_argument(flag, type=typ, default=None, help=help_)
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None,
                   help="turn the feature augmentation off")
    p.add_argument("--no-plots", dest="plots", action="store_const", const=False, default=None,
                   help="skip the per-epoch dashboard PNGs")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR where it stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidcls", description="Two-stage video classification.")
    parser.add_argument("--version", action="version", version=f"vidcls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_train_args(sub.add_parser("train", help="train a temporal classifier on a feature store"))

    p = sub.add_parser("synth", help="write a synthetic feature store (train/val/test)")
    p.add_argument("out_dir")
    p.add_argument("--videos", type=int, default=600)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--min-frames", type=int, default=16)
    p.add_argument("--max-frames", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("demo", help="synthetic data + a small CPU training run (~2 min)")
    p.add_argument("run_dir", nargs="?", default="runs/demo")
    p.add_argument("--epochs", type=int, default=40)

    p = sub.add_parser("info", help="describe a feature store file")
    p.add_argument("file")

    p = sub.add_parser("import", help="convert existing features into the feature store")
    imp = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    q = imp.add_parser("padded-h5", help="padded (N, max_frames, D) HDF5 with num_frames + category_mapping")
    q.add_argument("src")
    q.add_argument("out")
    q = imp.add_parser("npy", help="one <video_id>.npy (T, D) per video + CSV video_id,label[,split]")
    q.add_argument("npy_dir")
    q.add_argument("labels_csv")
    q.add_argument("out_dir")
    return parser


def cmd_train(args) -> int:
    from .train import fit, resolve_config

    overrides = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, _, _ in TRAIN_FLAGS}
    overrides.update(features_dir=args.features_dir, augment=args.augment, plots=args.plots)
    cfg = resolve_config(args.run_dir, args.config, overrides, resume=args.resume)
    summary = fit(cfg, args.run_dir, resume=args.resume)
    print(format_results({cfg.model: summary}))
    print(f"summary: {Path(args.run_dir) / 'summary.json'}")
    return 0


def format_results(summaries: dict) -> str:
    """A plain-text table: one row per run, validation and test accuracy / F1."""
    head = f"{'model':<14}{'best ep':>8}{'val acc':>9}{'val F1m':>9}{'test acc':>10}{'test F1m':>10}{'worst F1':>10}"
    lines = [head, "-" * len(head)]
    for name, s in summaries.items():
        m, t = s["members"][0], s.get("test") or {}
        lines.append(f"{name:<14}{m['best_epoch']:>8}{s['val']['accuracy']:>9.3f}{s['val']['f1_macro']:>9.3f}"
                     f"{t.get('accuracy', float('nan')):>10.3f}{t.get('f1_macro', float('nan')):>10.3f}"
                     f"{t.get('worst_class_f1', float('nan')):>10.3f}")
    return "\n".join(lines)


def cmd_synth(args) -> int:
    from .synth import make_synthetic

    paths = make_synthetic(args.out_dir, videos=args.videos, classes=args.classes, dim=args.dim,
                           min_frames=args.min_frames, max_frames=args.max_frames, seed=args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_demo(args) -> int:
    from .config import load_config
    from .synth import make_synthetic
    from .train import fit

    t0 = time.time()
    run_dir = Path(args.run_dir)
    feats = run_dir / "features"
    if not (feats / "test.h5").exists():
        print(f"writing synthetic features to {feats} ...")
        make_synthetic(feats, videos=600, seed=0)
    small = dict(features_dir=str(feats), epochs=args.epochs, hidden_dim=128, layers=1, heads=4, dropout=0.2,
                 patience=20, device="cpu", workers=2)
    summaries = {}
    for model in ("bilstm_attn", "mean_mlp"):
        out = run_dir / model
        resume = (out / "config.yaml").exists()
        if (out / "summary.json").exists():
            summaries[model] = json.loads((out / "summary.json").read_text())
            continue
        print(f"\n== {model} -> {out}")
        summaries[model] = fit(load_config(None, {**small, "model": model}), out, resume=resume)
    print("\n" + format_results(summaries))
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    for model in summaries:
        print(f"  {model}: {run_dir / model / 'summary.json'}  plots: {run_dir / model / 'members/0/plots/current.png'}")
    return 0


def cmd_info(args) -> int:
    from .importers import store_info

    print(store_info(args.file))
    return 0


def cmd_import(args) -> int:
    from .importers import import_npy, import_padded_h5

    if args.format == "padded-h5":
        out = import_padded_h5(args.src, args.out)
        print(f"wrote {out}")
    else:
        for split, path in import_npy(args.npy_dir, args.labels_csv, args.out_dir).items():
            print(f"{split}: {path}")
    return 0


COMMANDS = {"train": cmd_train, "synth": cmd_synth, "demo": cmd_demo, "info": cmd_info, "import": cmd_import}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .store import StoreError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, StoreError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"vidcls {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
