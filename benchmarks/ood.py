"""How often the out-of-distribution check flags what it should: a class held out of training, noise,
constant features; and how often it flags validation videos (about 5 % by construction).

For each seed: the store's videos of one class are removed from train and val; a small run is trained
on the rest (``fit``, which calibrates at its end); the loaded run (``vidcls.load``) then scores

  (a) the validation videos, (b) in-distribution test videos, (c) every video of the held-out class,
  (d) Gaussian noise with the store's per-dimension mean and std, (e) zeros, (f) a constant vector
  (the store's mean frame repeated),

with each score alone ("energy", "max_softmax" of the logits, "typicality" of the features:
``vidcls.engine.typicality``), thresholded at its own 5th validation percentile, and with the
shipped verdict ("energy+typicality": ``trusted`` of ``predict_records``, thresholds from the run's
calibration.json, about 95 % of validation passing both). The flag rate is the share not passing;
AUROC(val vs held-out) compares a score without a threshold.

    python benchmarks/ood.py                                   # synthetic stores (vidcls synth), 3 seeds
    python benchmarks/ood.py --store FEATURES_DIR --heldout CLASS

Synthetic stores: "near" holds out ``gaming`` of 4 classes, whose scenes are those of ``animation`` in
reverse order (only the order tells them apart); "far" holds out ``class_4`` of 5 classes, the only
class using its two scenes. The last line is ``ood_flag_rate_heldout=<float>`` (the shipped verdict,
mean over seeds, the last data set).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from smoke import smoke_parse  # benchmarks/smoke.py: --smoke

from vidcls.config import load_config
from vidcls.evaluation.calibrate import ood_score, ood_threshold
from vidcls.run.calibration import OOD_SCORES
from vidcls.store import write_store
from vidcls.store.directory import open_splits
from vidcls.store.synth import make_synthetic
from vidcls.training.fit import fit

SETS = ("val", "test_in", "heldout", "noise", "zeros", "constant")
COMBOS = (*OOD_SCORES, "typicality", "energy+typicality")  # the last: the shipped verdict


def held_out_store(src: Path, dst: Path, heldout: str) -> list[np.ndarray]:
    """Copy ``src`` without class ``heldout`` (labels renumbered) into ``dst``; return the held-out
    videos of every split (none of them is seen in training)."""
    stores = open_splits(src, require=("train",))
    names = stores["train"].class_names
    if heldout not in names:
        raise SystemExit(f"--heldout {heldout!r} is not a class of {src}: {names}")
    h = names.index(heldout)
    kept = [n for n in names if n != heldout]
    remap = {old: new for new, old in enumerate(i for i in range(len(names)) if i != h)}
    held = []
    for split, store in stores.items():
        videos = []
        for i in range(len(store)):
            y = int(store.labels[i])
            x = store.read(i).astype(np.float32)
            if y == h:
                held.append(x)
            else:
                videos.append((store.video_ids[i], x, remap[y]))
        write_store(dst / f"{split}.h5", videos, kept, store.feature_dim, dict(store.extractor))
    return held


def feature_stats(features_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-dimension mean and std over every training frame, and the training lengths."""
    store = open_splits(features_dir, require=("train",))["train"]
    frames = np.concatenate([store.read(i).astype(np.float64) for i in range(len(store))])
    return frames.mean(0), frames.std(0), np.asarray(store.lengths)


def inputs(features_dir: Path, held: list, cfg, rng) -> dict:
    """The feature sequences of every scored set (see the module docstring)."""
    from vidcls.data.dataset import load_splits

    splits = load_splits(
        features_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, augment=False, max_frames=cfg.max_frames
    )
    val = [splits.val.store.read(int(i)) for i in splits.val.indices]
    test = [splits.test.store.read(int(i)) for i in splits.test.indices] if splits.test is not None else []
    mean, std, lengths = feature_stats(features_dir)
    n = max(len(held), 50)
    lens = rng.choice(lengths, n)
    return {
        "val": val,
        "test_in": test,
        "heldout": held,
        "noise": [(mean + std * rng.standard_normal((t, len(mean)))).astype(np.float32) for t in lens],
        "zeros": [np.zeros((t, len(mean)), np.float32) for t in lens[:20]],
        "constant": [np.tile(mean.astype(np.float32), (t, 1)) for t in lens[:20]],
    }


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an in-distribution video > score of an outside one), ties counted half."""
    a, b = np.asarray(inside)[:, None], np.asarray(outside)[None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def one_run(features_dir: Path, heldout: str, seed: int, work: Path, train_opts: dict) -> dict:
    import vidcls

    data = work / f"data_{seed}"
    held = held_out_store(features_dir, data, heldout)
    run_dir = work / f"run_{seed}"
    cfg = load_config(
        None,
        {
            "features_dir": str(data),
            "seed": seed,
            "plots": False,
            "device": "cpu",
            "workers": 0,
            **train_opts,
        },
    )
    t0 = time.time()
    fit(cfg, run_dir, log=lambda *_: None)
    cal = json.loads((run_dir / "calibration.json").read_text())
    predictor = vidcls.load(run_dir, device="cpu")
    sets = inputs(data, held, cfg, np.random.default_rng(seed))
    logits = {k: predictor.logits_features(v) for k, v in sets.items() if len(v)}
    t = cal["temperature"]
    out = {
        "seed": seed,
        "temperature": t,
        "ece_before": cal["ece_before"],
        "ece_after": cal["ece_after"],
        "val_acc": float(
            np.mean(predictor.predict_proba(sets["val"]).argmax(1) == np.asarray(_val_labels(data, cfg)))
        ),
        "sizes": {k: len(v) for k, v in sets.items()},
        "seconds": time.time() - t0,
    }
    for kind in OOD_SCORES:  # each logit score alone, at its own 5th validation percentile
        scores = {k: ood_score(z, t, kind) for k, z in logits.items()}
        out[kind] = rates(scores)
    # the shipped check (vidcls.load -> predict_records): energy and typicality together, thresholds
    # from calibration.json; "trusted" is the verdict, "ood_scores" the scores it checked
    records = {k: predictor.predict_records(v) for k, v in sets.items() if len(v)}
    out["typicality"] = rates({k: _scores(r, "typicality") for k, r in records.items()})
    out["energy+typicality"] = {k: float(np.mean([not x["trusted"] for x in r])) for k, r in records.items()}
    out["energy+typicality"]["auroc_val_vs_heldout"] = float("nan")
    out["val_pass_rate_calibrated"] = cal["ood"]["val_pass_rate"]
    return out


def rates(scores: dict) -> dict:
    """Flag rate per set with the threshold at the 5th validation percentile (NaN is flagged), and the
    AUROC of validation against the held-out class."""
    threshold, _ = ood_threshold(scores["val"])
    out = {k: float(np.mean(~(s >= threshold))) for k, s in scores.items()}
    out["auroc_val_vs_heldout"] = auroc(scores["val"], scores["heldout"])
    return out


def _scores(records: list, name: str) -> np.ndarray:
    return np.asarray(
        [np.nan if r["ood_scores"].get(name) is None else r["ood_scores"][name] for r in records]
    )


def _val_labels(data: Path, cfg) -> np.ndarray:
    from vidcls.data.dataset import load_splits

    return load_splits(data, val_fraction=cfg.val_fraction, seed=cfg.seed, augment=False).val.labels


def report(name: str, runs: list[dict]) -> dict:
    print(f"\n== {name}: {len(runs)} seed(s); sizes {runs[0]['sizes']}")
    print(
        f"   val acc {np.mean([r['val_acc'] for r in runs]):.3f}; temperature "
        f"{', '.join(format(r['temperature'], '.2f') for r in runs)}; val ECE "
        f"{np.mean([r['ece_before'] for r in runs]):.4f} -> {np.mean([r['ece_after'] for r in runs]):.4f}; "
        f"calibrated val pass rate (both scores) {np.mean([r['val_pass_rate_calibrated'] for r in runs]):.3f}"
    )
    head = f"   {'score':<18}" + "".join(f"{s:>10}" for s in SETS) + f"{'AUROC':>8}"
    print(head)
    means = {}
    for kind in COMBOS:
        keys = [*SETS, "auroc_val_vs_heldout"]
        m = {k: float(np.mean([r[kind].get(k, np.nan) for r in runs])) for k in keys}
        sd = {k: float(np.std([r[kind].get(k, np.nan) for r in runs])) for k in keys}
        means[kind] = m
        print(
            f"   {kind:<18}" + "".join(f"{m[k]:>10.3f}" for k in SETS) + f"{m['auroc_val_vs_heldout']:>8.3f}"
        )
        print(
            f"   {'  (sd)':<18}"
            + "".join(f"{sd[k]:>10.3f}" for k in SETS)
            + f"{sd['auroc_val_vs_heldout']:>8.3f}"
        )
    return means


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, default=None, help="also measure on this feature directory")
    p.add_argument("--heldout", default=None, help="the class of --store to hold out (default: its last)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--model", default="bilstm_attn")
    p.add_argument("--videos", type=int, default=500, help="synthetic videos per store")
    p.add_argument("--dim", type=int, default=64, help="synthetic feature dimension")
    p.add_argument("--no-synthetic", action="store_true")
    args = smoke_parse(p, {"seeds": 1, "epochs": 1, "videos": 60, "dim": 8})
    train_opts = {
        "epochs": args.epochs,
        "members": args.members,
        "model": args.model,
        "hidden_dim": 32,
        "layers": 1,
        "heads": 2,
        "tta": "auto",
    }  # early stopping: the default patience_cycles
    results = {}
    with tempfile.TemporaryDirectory(prefix="vidcls-ood-") as tmp:
        work = Path(tmp)
        datasets = []
        if not args.no_synthetic:
            for name, classes, heldout in (
                ("synthetic near (gaming held out of 4)", 4, "gaming"),
                ("synthetic far (class_4 held out of 5)", 5, "class_4"),
            ):
                datasets.append((name, classes, heldout))
        if args.store is not None:
            names = open_splits(args.store, require=("train",))["train"].class_names
            datasets.append(
                (f"{args.store} ({args.heldout or names[-1]} held out)", None, args.heldout or names[-1])
            )
        for k, (name, classes, heldout) in enumerate(datasets[-1:] if args.smoke else datasets):
            runs = []
            for seed in range(args.seeds):
                if classes is None:
                    src = args.store
                else:
                    src = work / f"synth_{k}_{seed}"
                    make_synthetic(
                        src,
                        videos=args.videos,
                        classes=classes,
                        dim=args.dim,
                        min_frames=12,
                        max_frames=48,
                        seed=seed,
                    )
                runs.append(one_run(src, heldout, seed, work / f"d{k}", train_opts))
                print(f"   [{name}] seed {seed} done in {runs[-1]['seconds']:.0f} s", file=sys.stderr)
            results[name] = report(name, runs)
    last = list(results.values())[-1][COMBOS[-1]]
    for key in SETS:
        if key != "heldout":
            print(f"ood_flag_rate_{key}={last[key]:.3f}")
    print(f"ood_flag_rate_heldout={last['heldout']:.3f}")  # last: the figure this benchmark is for


if __name__ == "__main__":
    main()
