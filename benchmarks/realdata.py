"""The recipe on public real sequence data: ``vidcls import npy`` -> ``vidcls train`` -> summary, per set and seed.

The sets ship inside the ``aeon`` wheel (``pip install -e .[bench]``), with their default train/test splits;
each time step is one "frame" (1 value, 6 for BasicMotions). ``OSULeaf-LT`` is OSULeaf with its train
classes cut to a geometric series (30 -> 3 items; test untouched). Validation is carved from train by the
CLI (``--val-fraction``), as a user without a val split would get. Peers are the published accuracies on
the same default split (column 0 of aeon's example results; PickupGestureWiimoteZ's from its
equal-length ``_eq`` version, the only one listed).

    python benchmarks/realdata.py                        # every set, seeds 0 1 2, the CLI's defaults + MODEL_ARGS
    python benchmarks/realdata.py --sets ArrowHead --seeds 0 1 2 --tag nostd -- --standardize none
    python benchmarks/realdata.py --tag snap --base default -- --snapshots   # same runs, snapshot ensembles

Arguments after ``--`` go to ``vidcls train`` unchanged. Runs are kept under ``--work`` by tag, set and seed:
a finished run is read back, not retrained, so an interrupted benchmark continues where it stopped.
Last line: ``mean_gap_to_best_peer=<mean over sets with peers of (best peer - our mean test accuracy)>``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from smoke import scratch, smoke_parse  # benchmarks/smoke.py: --smoke

SETS = ("BasicMotions", "ArrowHead", "PickupGestureWiimoteZ", "OSULeaf", "ACSF1", "OSULeaf-LT")
PEERS = ("HC2", "InceptionTime", "WEASEL-2.0", "FreshPRINCE")
PEER_NAME = {"PickupGestureWiimoteZ": "PickupGestureWiimoteZ_eq", "OSULeaf-LT": None}
# The CPU-sized model every figure here uses (the spec's 768/4/12 is sized for a GPU), trained for two
# warm-restart cycles (20 + 40 epochs, ending at the LR floor) so that 6 sets x 3 seeds fit in about 25
# minutes on 2 cores; the CLI's default 150 epochs go on to the end of the third cycle (140).
MODEL_ARGS = ["--hidden-dim", "128", "--layers", "2", "--heads", "4", "--epochs", "60"]
SMOKE_TRAIN_ARGS = "--hidden-dim 16 --layers 1 --heads 2 --epochs 2 --min-steps 1".split()


SMOKE_SET = Path(__file__).parent.parent / "tests" / "assets" / "arrowhead.npz"  # a cut of ArrowHead, no aeon


def load_set(name: str):
    """``(train, test)``, each a list of (T, D) float32 arrays and a label array."""
    if name == "ArrowHead-cut":  # --smoke
        d = np.load(SMOKE_SET)
        return tuple(
            ([x[:, None].astype(np.float32) for x in d[f"{s}_x"]], d[f"{s}_y"].astype(str))
            for s in ("train", "test")
        )
    from aeon.datasets import load_classification

    base = name.removesuffix("-LT")
    out = []
    for split in ("train", "test"):
        X, y = load_classification(base, split=split)
        out.append(([np.asarray(x, dtype=np.float32).T for x in X], np.asarray(y).astype(str)))
    if name.endswith("-LT"):
        out[0] = long_tailed(*out[0])
    return out[0], out[1]


def long_tailed(xs: list, ys: np.ndarray, top: int = 30, bottom: int = 3):
    """Keep the first ``n_k`` items of class k (classes in sorted order), ``n_k`` a geometric series
    from ``top`` to ``bottom`` (capped by what the class has)."""
    classes = sorted(set(ys))
    ratio = (bottom / top) ** (1 / max(len(classes) - 1, 1))
    keep = []
    for k, c in enumerate(classes):
        idx = np.flatnonzero(ys == c)
        keep.extend(idx[: max(bottom, round(top * ratio**k))])
    keep.sort()
    return [xs[i] for i in keep], ys[keep]


def write_store(name: str, work: Path) -> Path:
    """The set as a feature store (``work/data/<name>/features/{train,test}.h5``), built once."""
    root = work / "data" / name
    feats = root / "features"
    if (feats / "test.h5").is_file():
        return feats
    shutil.rmtree(root, ignore_errors=True)
    (root / "npy").mkdir(parents=True)
    (train_x, train_y), (test_x, test_y) = load_set(name)
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "label", "split"])
        for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
            for i, (x, y) in enumerate(zip(xs, ys)):
                vid = f"{split}_{i:04d}"
                np.save(root / "npy" / f"{vid}.npy", x)
                w.writerow([vid, y, split])
    cli("import", "npy", str(root / "npy"), str(root / "labels.csv"), str(feats), log=root / "import.log")
    return feats


def cli(*args: str, log: Path | None = None) -> float:
    """Run ``vidcls ARGS`` with one torch thread; returns its CPU seconds (user + system).

    One thread per run, ``--jobs`` runs side by side: small models use a core better this way, and the
    CPU seconds of a run do not depend on what else the machine is doing (wall seconds do)."""
    cmd = [sys.executable, "-m", "vidcls", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out_path = log or Path(os.devnull)
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = out_path.read_text()[-4000:] if log else ""
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return usage.ru_utime + usage.ru_stime


def run_one(name: str, seed: int, tag: str, work: Path, train_args: list, base: str | None = None) -> dict:
    """Train (or read back) one run; returns its test accuracy, worst-class F1 and wall seconds."""
    feats = write_store(name, work)
    run = work / "runs" / tag / name / f"seed{seed}"
    done = run / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(run, ignore_errors=True)
    resume = []
    if base:  # the base recipe's finished run, evaluated again with runtime-only changes (no training)
        shutil.copytree(work / "runs" / base / name / f"seed{seed}", run)
        for stale in ("bench.json", "final.json", "summary.json", "calibration.json"):
            (run / stale).unlink(missing_ok=True)
        resume = ["--resume"]
    run.mkdir(parents=True, exist_ok=True)
    t = time.time()
    cpu = cli(
        "train",
        str(feats),
        str(run),
        *MODEL_ARGS,
        "--seed",
        str(seed),
        "--no-plots",
        "--workers",
        "0",
        "--device",
        "cpu",
        *train_args,
        *resume,
        log=run.parent / f"seed{seed}.log",
    )
    wall = time.time() - t
    s = json.loads((run / "summary.json").read_text())
    members = s["members"]
    rec = {
        "set": name,
        "seed": seed,
        "acc": s["test"]["accuracy"],
        "worst_f1": s["test"]["worst_class_f1"],
        "val_acc": s["val"]["accuracy"],
        "final": s["final"]["source"],
        "wall": wall,
        "cpu": cpu,
        "mean_member_acc": float(np.mean([m["test"]["accuracy"] for m in members])),
        "epochs_run": [m["epochs_run"] for m in members],
        "best_epoch": [m["best_epoch"] for m in members],
        "models": [[m.get("checkpoint"), m["test"]["accuracy"]] for m in members],
    }
    done.write_text(json.dumps(rec))
    return rec


def peer_accuracies(name: str) -> dict:
    if name == "ArrowHead-cut":  # --smoke: a cut of the test split has no published peers
        return {}
    import aeon

    listed = PEER_NAME.get(name, name)
    out = {}
    if listed is None:
        return out
    root = Path(aeon.__file__).parent / "testing/example_results_files/classification/accuracy"
    for peer in PEERS:
        with open(root / f"{peer}_accuracy.csv") as fh:
            for row in csv.reader(fh):
                if row and row[0] == listed:
                    out[peer] = float(row[1])
    return out


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=[*SETS, "ArrowHead-cut"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--tag", default="default", help="name of this recipe's runs under --work")
    p.add_argument("--work", default="benchmarks/.realdata", help="stores and runs (reused)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side, one torch thread each")
    p.add_argument(
        "--base",
        help="re-evaluate this tag's finished runs with the options after -- (runtime-only "
        "ones, e.g. --snapshots or --members) instead of training anew",
    )
    a = smoke_parse(p, {"sets": ["ArrowHead-cut"], "seeds": [0], "jobs": 1}, argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    work = Path(a.work) if not a.smoke else scratch("realdata")
    if a.smoke:
        train_args = [*SMOKE_TRAIN_ARGS, *train_args]
    t0 = time.time()
    print(f"recipe {a.tag!r}: vidcls train {' '.join(MODEL_ARGS + train_args)}  seeds {a.seeds}")
    head = f"{'set':<22}{'train':>6}{'T':>9}{'acc':>13}{'worst F1':>10}{'member':>8}{'CPU s':>8}  best peer"
    print(head)
    for name in a.sets:  # stores first, one at a time
        write_store(name, work)
    with ThreadPoolExecutor(a.jobs) as pool:  # the runs are subprocesses; threads only wait for them
        futures = {
            (n, s): pool.submit(run_one, n, s, a.tag, work, train_args, a.base)
            for n in a.sets
            for s in a.seeds
        }
    gaps, rows = [], []
    for name in a.sets:
        recs = [futures[name, s].result() for s in a.seeds]
        acc = np.array([r["acc"] for r in recs])
        worst = np.mean([r["worst_f1"] for r in recs])
        member = np.mean([r["mean_member_acc"] for r in recs])
        peers = peer_accuracies(name)
        best = max(peers.items(), key=lambda kv: kv[1]) if peers else None
        if best:
            gaps.append(best[1] - acc.mean())
        ds = json.loads((work / "runs" / a.tag / name / f"seed{a.seeds[0]}" / "summary.json").read_text())
        n_train = sum((ds["class_counts"]["train"] or {}).values()) + sum(
            (ds["class_counts"]["val"] or {}).values()
        )
        lengths = _lengths(work / "data" / name / "npy")
        peer = f"{best[0]} {best[1]:.3f} (gap {best[1] - acc.mean():+.3f})" if best else "-"
        print(
            f"{name:<22}{n_train:>6}{lengths:>9}{acc.mean():>7.3f}±{acc.std():.3f}{worst:>10.3f}{member:>8.3f}"
            f"{np.mean([r['cpu'] for r in recs]):>8.0f}  {peer}",
            flush=True,
        )
        rows.append(
            {
                "set": name,
                "acc_mean": acc.mean(),
                "acc_sd": acc.std(),
                "worst_f1": worst,
                "runs": recs,
                "peers": peers,
            }
        )
    (work / "runs" / a.tag / "table.json").write_text(json.dumps(rows, indent=1))
    cpu = sum(r["cpu"] for row in rows for r in row["runs"])
    print(
        "acc: mean ± sd of the test accuracy over seeds; member: mean single-member test accuracy; CPU s: "
        "per run (one thread)"
    )
    print(
        f"total CPU {cpu / 60:.1f} min over {len(a.sets) * len(a.seeds)} runs; wall {time.time() - t0:.0f} s "
        f"with --jobs {a.jobs} (runs read back cost nothing)"
    )
    print(f"mean_gap_to_best_peer={np.mean(gaps) if gaps else float('nan'):.4f}")


def _lengths(npy_dir: Path) -> str:
    ts = [np.load(f, mmap_mode="r").shape[0] for f in list(npy_dir.glob("*.npy"))[:400]]
    return str(ts[0]) if min(ts) == max(ts) else f"{min(ts)}-{max(ts)}"


if __name__ == "__main__":
    main()
