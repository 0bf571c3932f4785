"""Multi-label training on real sequences: items made of 2-3 recordings of different classes of one aeon set.

Each item concatenates (in time) 2 or 3 recordings of distinct classes drawn from ONE of aeon's public sets
(BasicMotions, ArrowHead, OSULeaf; never mixed), and its label is the set of their classes (``a|b``). Train
items come from the set's train split, test items from its test split, so no recording is seen on both
sides. The items are fixed by ``--data-seed``; the runs' seeds vary. Each item goes through the CLI like a
user's: ``vidcls import npy`` (a labels CSV with ``a|b`` sets) -> ``vidcls train`` (the task is detected
from the store) -> ``summary.json``'s test mAP, GAP@20, exact-set accuracy and micro F1 at the run's
thresholds.

Two recipes per model: ``recipe`` (the defaults: focal binary loss, gamma 2, label smoothing 0.1,
inverse-frequency alpha on the positives, a sampler weighted by a video's rarest label) and ``bce`` (plain
binary cross-entropy: ``--gamma 0 --smoothing 0 --alpha none --sampler shuffle``), so the recipe's gain is
measured, not assumed.

    python benchmarks/multilabel.py                               # BasicMotions, 3 models x 2 recipes x 3 seeds
    python benchmarks/multilabel.py --sets ArrowHead --models inception_time nextvlad

Last line: ``recipe_gain_map=<mean over sets and models of (recipe mAP - bce mAP)>``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from realdata import cli, load_set  # benchmarks/realdata.py: aeon's sets, the CLI with one thread
from smoke import scratch, smoke_parse  # benchmarks/smoke.py: --smoke

SETS = ("BasicMotions", "ArrowHead", "OSULeaf")
MODELS = ("bilstm_attn", "inception_time", "nextvlad")
RECIPES = {"recipe": [], "bce": "--gamma 0 --smoothing 0 --alpha none --sampler shuffle".split()}
# CPU-sized: one warm-restart cycle of 20 epochs, a small width (nextvlad: 8 clusters of 4 groups)
MODEL_ARGS = "--hidden-dim 64 --layers 1 --heads 4 --clusters 8 --groups 4 --epochs 20".split()
SMOKE_ARGS = "--hidden-dim 8 --layers 1 --heads 2 --clusters 2 --groups 2 --epochs 2 --min-steps 1".split()
METRICS = ("map_macro", "gap_at_20", "exact_set_accuracy", "f1_micro")


def make_items(xs: list, ys: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, list]]:
    """``n`` items, each 2 or 3 recordings of distinct classes concatenated in time, with their classes."""
    classes = sorted(set(ys))
    by_class = {c: np.flatnonzero(ys == c) for c in classes}
    items = []
    for _ in range(n):
        k = int(rng.integers(2, min(3, len(classes)) + 1))
        chosen = [classes[i] for i in rng.choice(len(classes), size=k, replace=False)]
        parts = [xs[int(rng.choice(by_class[c]))] for c in chosen]
        items.append((np.concatenate(parts).astype(np.float32), sorted(chosen)))
    return items


def write_store(name: str, work: Path, n_items: tuple[int, int], data_seed: int) -> Path:
    """The set's multi-label items as a feature store (``work/data/<name>/features``), built once."""
    root = work / "data" / name
    feats = root / "features"
    if (feats / "test.h5").is_file():
        return feats
    shutil.rmtree(root, ignore_errors=True)
    (root / "npy").mkdir(parents=True)
    rng = np.random.default_rng(data_seed)
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "label", "split"])
        for split, (xs, ys), n in zip(("train", "test"), load_set(name), n_items):
            for i, (x, labels) in enumerate(make_items(xs, ys, n, rng)):
                vid = f"{split}_{i:04d}"
                np.save(root / "npy" / f"{vid}.npy", x)
                w.writerow([vid, "|".join(labels), split])
    cli("import", "npy", str(root / "npy"), str(root / "labels.csv"), str(feats), log=root / "import.log")
    return feats


def run_one(job: tuple, work: Path, model_args: list, feats: Path) -> dict:
    """Train (or read back) one run of ``job`` = (set, model, recipe, seed); its test metrics and CPU s."""
    name, model, recipe, seed = job
    run = work / "runs" / name / model / recipe / f"seed{seed}"
    done = run / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(run, ignore_errors=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    args = [*model_args, "--model", model, "--seed", str(seed), *RECIPES[recipe]]
    cpu = cli(
        "train",
        str(feats),
        str(run),
        *args,
        *"--no-plots --workers 0 --device cpu".split(),
        log=run.parent / f"seed{seed}.log",
    )
    s = json.loads((run / "summary.json").read_text())
    assert s["task"] == "multilabel", f"{run}: trained as {s['task']}"
    rec = {"set": name, "model": model, "recipe": recipe, "seed": seed, "cpu": cpu}
    rec.update({k: s["test"][k] for k in METRICS})
    done.write_text(json.dumps(rec))
    return rec


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["BasicMotions"], choices=[*SETS, "ArrowHead-cut"])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--train-items", type=int, default=160, help="multi-label items built from the train split"
    )
    p.add_argument("--test-items", type=int, default=160, help="items built from the test split")
    p.add_argument("--data-seed", type=int, default=0, help="which items are built (fixed across run seeds)")
    p.add_argument("--work", default="benchmarks/.multilabel", help="stores and runs (reused)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side, one torch thread each")
    smoke = {"sets": ["ArrowHead-cut"], "seeds": [0], "jobs": 1, "models": ["mean_mlp"]}
    a = smoke_parse(p, {**smoke, "train_items": 24, "test_items": 12}, argv)
    work = Path(a.work) if not a.smoke else scratch("multilabel")
    model_args = SMOKE_ARGS if a.smoke else MODEL_ARGS
    t0 = time.time()
    print(f"vidcls train {' '.join(model_args)}; recipes {a.recipes}; seeds {a.seeds}")
    feats = {n: write_store(n, work, (a.train_items, a.test_items), a.data_seed) for n in a.sets}
    jobs = [(n, m, r, s) for n in a.sets for m in a.models for r in a.recipes for s in a.seeds]
    with ThreadPoolExecutor(a.jobs) as pool:  # the runs are subprocesses; threads only wait for them
        recs = list(pool.map(lambda j: run_one(j, work, model_args, feats[j[0]]), jobs))
    print(f"{'set':<14}{'model':<16}{'recipe':<8}" + "".join(f"{k:>20}" for k in METRICS) + f"{'CPU s':>8}")
    table = {}
    for n in a.sets:
        for m in a.models:
            for r in a.recipes:
                mine = [x for x in recs if (x["set"], x["model"], x["recipe"]) == (n, m, r)]
                stats = {k: (np.mean([x[k] for x in mine]), np.std([x[k] for x in mine])) for k in METRICS}
                table[n, m, r] = stats
                cells = "".join(f"{mu:>13.3f} ± {sd:.3f}" for mu, sd in stats.values())
                print(f"{n:<14}{m:<16}{r:<8}{cells}{np.mean([x['cpu'] for x in mine]):>8.0f}", flush=True)
    (work / "table.json").write_text(json.dumps(recs, indent=1))
    gains = [
        table[n, m, "recipe"]["map_macro"][0] - table[n, m, "bce"]["map_macro"][0]
        for n in a.sets
        for m in a.models
        if {"recipe", "bce"} <= set(a.recipes)
    ]
    cpu = sum(x["cpu"] for x in recs)
    print(
        f"mean ± sd over seeds; total CPU {cpu / 60:.1f} min over {len(recs)} runs; wall {time.time() - t0:.0f} s"
    )
    print(f"recipe_gain_map={np.mean(gains) if gains else float('nan'):.4f}")


if __name__ == "__main__":
    main()
