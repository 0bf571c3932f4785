"""Mutation testing of the code that decides results (``make mutation``).

Runs mutmut (its settings: ``[tool.mutmut]`` in pyproject.toml) on the functions in ``SCOPE``, then
prints a per-module table, the mutants the tests did not kill and, as the last line,
``killed_share=<killed / (killed + not killed)>``. A timeout (an endless loop the tests ran into) or a
crash counts as killed; "no tests" (no selected test calls the function), "suspicious" and "not
checked" count as not killed. Survivors judged equivalent in docs/mutation.md are marked, but still
counted as survivors.

Usage: ``python tools/mutation.py [--jobs N] [--report-only] [WORD ...]``; with words, only the modules
of ``SCOPE`` whose name contains one are run and reported (a quicker loop while adding tests).
mutmut works on a copy of the sources in ./mutants/, deleted and rebuilt on every run: mutmut reuses
what it finds there, which goes stale when the sources change between runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "mutation.md"

# module -> the functions whose mutants are run and counted; None = every function of the module.
# mutmut mutates whole files, so data.py and layers.py are narrowed to the functions that shape what
# the model sees (augmentation, padding, class weights, masks, masked pooling) by mutant name: mutmut
# names a mutant after its function (x_<function>__mutmut_<n>, xǁ<Class>ǁ<method>__mutmut_<n>). The
# rest of those files (store reading, samplers, loaders, layer construction) is plumbing that the
# loader and model tests cover; moving the listed functions into modules of their own would only
# serve this tool. _empty_batch is left out on purpose: it allocates the batch buffer that collate
# then fills and zero-pads itself.
SCOPE: dict[str, list[str] | None] = {
    "vidcls.evaluation.policy": None,
    "vidcls.engine.views": None,
    "vidcls.training.losses": None,
    "vidcls.training.schedule": None,
    "vidcls.data.dataset": ["augment_sequence", "collate"],
    "vidcls.data.labels": ["label_weights"],  # the class / label weights (and so the focal loss's alpha)
    "vidcls.models.layers": ["length_mask", "AttentionPooling.forward"],
    # which videos share a batch, on which rank: bucketing, the frame budget, rank shares and fillers
    "vidcls.data.batching": None,
    # what the encoder is fed and with which weights: each family's resize/crop/normalise, and the
    # efficientnet_pytorch -> timm renaming of the demo's real Lite0 weights
    "vidcls.features.preprocess": None,
    "vidcls.features.lite0": ["to_timm", "_rename", "_source_name", "is_efficientnet_pytorch"],
    # what a user reads as confidence and trust: the MAP temperature, the served probabilities and
    # their NLL/ECE, and each OOD score against its threshold (the three verdict states)
    "vidcls.evaluation.temperature": None,
    "vidcls.engine.probs": None,  # as_4d and the served probabilities: the one softmax with temperature
    "vidcls.predict.verdict": ["state", "ood_checks"],
    # the multi-label scores and decision thresholds: GAP, AP, F1 and the shrunk per-class thresholds
    "vidcls.evaluation.multilabel": None,
    # what happens when: the window grammar and grid, the per-frame fusion and the spans
    "vidcls.predict.segments": [
        "_parse",
        "parse_window",
        "frames_of",
        "window_starts",
        "fuse",
        "_runs",
        "spans_of",
        "frame_seconds",
        "run_default",
    ],
}
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def patterns(module: str, functions: list[str] | None) -> list[str]:
    """mutmut mutant-name globs for ``functions`` of ``module`` (all when None)."""
    if functions is None:
        return [f"{module}.*"]
    out = []
    for f in functions:
        cls, _, method = f.rpartition(".")
        out.append(f"{module}.xǁ{cls}ǁ{method}__mutmut_*" if cls else f"{module}.x_{f}__mutmut_*")
    return out


def module_of(mutant: str) -> str:
    return mutant.rsplit(".", 1)[0]


def run_mutmut(globs: list[str], jobs: int) -> float:
    """Run mutmut on the mutants matching ``globs`` from a fresh ./mutants/; returns the wall time."""
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    (ROOT / "mutants").mkdir()
    # one thread per test process: mutmut already runs ``jobs`` of them side by side
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    log = ROOT / "mutants" / "mutmut-run.log"
    mutmut = Path(sys.executable).parent / "mutmut"
    cmd = [str(mutmut), "run", "--max-children", str(jobs), *globs]
    print(f"running: {' '.join(cmd)}  (output in {log.relative_to(ROOT)})", flush=True)
    start = time.time()
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.time() - start
    if rc != 0:
        tail = log.read_text(errors="replace")[-4000:]
        sys.exit(f"mutmut run failed (exit {rc}) after {wall:.0f} s; the end of {log}:\n{tail}")
    return wall


def read_results(globs: list[str]) -> dict[str, str]:
    """``{mutant name: status}`` for every mutant matching ``globs``, from mutmut's .meta files."""
    # exit code -> "killed", "survived", "timeout", ...; mutmut is installed with the `mutation` extra
    from mutmut.stats import status_by_exit_code

    out = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatchcase(name, g) for g in globs):
                out[name] = status_by_exit_code[code]
    return out


def documented_equivalents() -> dict[str, str]:
    """Mutant names listed in docs/mutation.md as equivalent, with the line that says why."""
    if not DOC.exists():
        return {}
    found = {}
    for line in DOC.read_text().splitlines():
        for name in re.findall(r"`(vidcls\.[^`]+__mutmut_\d+)`", line):
            found[name] = line
    return found


def mutant_diff(name: str) -> str:
    """The changed lines of one mutant (``-`` original, ``+`` mutant)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    path = Path("src") / Path(*module_of(name).split(".")).with_suffix(".py")
    try:
        diff = get_diff_for_mutant(name, path=path)
    except Exception as e:  # a report line must not sink the whole report
        return f"    (no diff: {e})"
    lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join("    " + ln for ln in lines)


def report(results: dict[str, str], modules: list[str], wall: float | None) -> None:
    equivalent = documented_equivalents()
    print()
    head = (
        f"{'module':<26} {'functions':<44} {'mutants':>7} {'killed':>6} {'timeout':>7} "
        f"{'survived':>8} {'no tests':>8} {'other':>5} {'share':>6}"
    )
    print(head)
    print("-" * len(head))
    totals = Counter()
    for module in modules:
        counts = Counter(results[n] for n in results if module_of(n) == module)
        n = sum(counts.values())
        killed = sum(counts[s] for s in KILLED)
        other = n - killed - counts["survived"] - counts["no tests"]
        share = f"{killed / n:.3f}" if n else "-"
        funcs = ", ".join(SCOPE[module]) if SCOPE[module] else "(all)"
        print(
            f"{module:<26} {funcs:<44} {n:>7} {counts['killed']:>6} {counts['timeout']:>7} "
            f"{counts['survived']:>8} {counts['no tests']:>8} {other:>5} {share:>6}"
        )
        totals.update(counts)
    n = sum(totals.values())
    killed = sum(totals[s] for s in KILLED)
    print("-" * len(head))
    print(
        f"{'total':<71} {n:>7} {totals['killed']:>6} {totals['timeout']:>7} {totals['survived']:>8} "
        f"{totals['no tests']:>8} {n - killed - totals['survived'] - totals['no tests']:>5} "
        f"{(killed / n if n else 0):>6.3f}"
    )

    survivors = sorted(name for name, status in results.items() if status not in KILLED)
    print(f"\nmutants not killed: {len(survivors)}")
    for name in survivors:
        mark = "  [equivalent: see docs/mutation.md]" if name in equivalent else ""
        print(f"  {results[name]}: {name}{mark}")
        print(mutant_diff(name))
    n_eq = sum(name in equivalent for name in survivors)
    took = f" in {wall / 60:.1f} min" if wall is not None else ""
    print(
        f"\n{n_eq} of the {len(survivors)} are documented as equivalent in docs/mutation.md; "
        f"{n} mutants{took}"
    )
    if n == 0:
        sys.exit("no mutants matched the scope: check SCOPE against the sources")
    print(f"killed_share={killed / n:.4f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help="restrict to modules of SCOPE containing one of these strings")
    ap.add_argument(
        "--jobs",
        type=int,
        default=int(os.environ.get("MUTATION_JOBS", "2")),
        help="mutants tested side by side (default 2, or $MUTATION_JOBS)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="report the results of the last run in ./mutants/ without running mutmut",
    )
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    modules = [m for m in SCOPE if not args.only or any(s in m for s in args.only)]
    if not modules:
        sys.exit(f"nothing in SCOPE matches {args.only}; modules: {', '.join(SCOPE)}")
    globs = [g for m in modules for g in patterns(m, SCOPE[m])]
    wall = None if args.report_only else run_mutmut(globs, max(1, args.jobs))
    report(read_results(globs), modules, wall)


if __name__ == "__main__":
    main()
