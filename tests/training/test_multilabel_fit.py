"""A tiny multi-label run end to end: ``fit`` on an easy multi-label store (each label adds its own
direction to every frame), then what it records (final.json, calibration.json, summary.json, eval files),
``vidcls evaluate`` of it, and the hostile cases: the run on single-label features of the same classes,
a single-label model on label sets, and members of two tasks in one run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vidcls.cli import format_results, main
from vidcls.config import TrainConfig
from vidcls.engine.members import check_checkpoint_matches
from vidcls.errors import CheckpointError
from vidcls.evaluation.evaluate import evaluate_saved_run
from vidcls.reporting import results
from vidcls.reporting.run_data import load_run
from vidcls.run.checkpoint import load_checkpoint, save_checkpoint
from vidcls.store import open_splits, write_store
from vidcls.training.fit import fit

NAMES = ["outdoor", "dog", "music", "car"]
D = 8
SIZES = {"train": 160, "val": 60, "test": 60}
ML_METRICS = {"n", "gap_at_20", "map_macro", "f1_micro", "f1_macro", "hit_at_1", "exact_set_accuracy"}
ML_METRICS |= {"ap_per_class", "f1_per_class", "support_per_class", "label_cardinality"}
ML_METRICS |= {"predicted_cardinality", "cooccurrence"}
BRIEF = {"map_macro", "gap_at_20", "f1_micro", "exact_set_accuracy"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sets(rng: np.random.Generator, n: int) -> list[list[int]]:
    """n label sets of 1 to 3 of the 4 classes."""
    return [
        sorted(rng.choice(len(NAMES), size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(n)
    ]


def _videos(rng: np.random.Generator, sets: list[list[int]], split: str, multilabel: bool):
    for i, labels in enumerate(sets):
        frames = int(rng.integers(6, 12))
        x = rng.normal(0.0, 1.0, size=(frames, D))
        x[:, labels] += 1.2  # each label lights up its own feature dimension
        yield f"{split}{i}", x.astype(np.float32), labels if multilabel else labels[0]


def make_store(root: Path, *, multilabel: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in SIZES.items():
        sets = _sets(rng, n)
        if not multilabel:
            sets = [[c] for c in rng.integers(0, len(NAMES), size=n).tolist()]
        write_store(
            root / f"{split}.h5", _videos(rng, sets, split, multilabel), NAMES, D, multilabel=multilabel
        )
    return root


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("mlfit")
    feats = make_store(base / "feats")
    cfg = TrainConfig(
        features_dir=str(feats),
        epochs=15,
        members=2,
        model="mean_mlp",
        hidden_dim=32,
        lr=3e-3,
        batch_size=16,
        min_steps=1,
        workers=0,
        device="cpu",
        plots=False,
        tta_modes=["reverse"],
    )
    fit(cfg, base / "run", log=lambda *a: None)
    return base / "run"


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_fit_records_a_multilabel_run(ml_run):
    final = read(ml_run / "final.json")
    assert final["task"] == "multilabel" and final["select"] == "val_map"
    th = final["thresholds"]
    assert set(th) == {"rule", "global", "per_class", "support"} and th["rule"] == "per_class"
    assert len(th["per_class"]) == 4 and all(0 < t < 1 for t in th["per_class"])
    val_targets = np.zeros(4, int)
    for labels in open_splits(read(ml_run / "summary.json")["features_dir"])["val"].label_sets:
        val_targets[labels] += 1
    assert th["support"] == val_targets.tolist()  # chosen on the validation split

    s = read(ml_run / "summary.json")
    assert s["task"] == "multilabel"
    assert s["final"] == {k: v for k, v in final.items() if k not in ("format", "version")}
    assert set(s["val"]) == ML_METRICS and set(s["test"]) == ML_METRICS
    assert set(s["mean_member_test"]) == BRIEF and set(s["ensemble"]["gain_vs_mean_member"]) == BRIEF
    assert s["final"]["thresholds"] == th
    # easy data: every label is one feature dimension
    assert s["test"]["map_macro"] > 0.9 and s["test"]["gap_at_20"] > 0.9 and s["test"]["f1_micro"] > 0.8

    cal = read(ml_run / "calibration.json")
    assert cal["task"] == "multilabel" and cal["temperature"] > 0
    assert set(cal["thresholds"]) == {"rule", "global", "per_class", "support"}
    assert cal["thresholds"]["support"] == th["support"]
    assert cal["ood"]["scores"] == ["energy", "typicality"] and cal["ood"]["val_pass_rate"] >= 0.95
    assert s["calibration"] == cal


def test_the_eval_files_hold_label_sets_and_the_final_thresholds(ml_run):
    s = read(ml_run / "summary.json")
    for split in ("val", "test"):
        ev = read(ml_run / f"eval_{split}.json")
        assert ev["task"] == "multilabel" and ev["final"]["thresholds"] == s["final"]["thresholds"]
        assert ev["final"]["metrics"] == s[split]
        preds = ev["predictions"]
        assert len(preds) == SIZES[split]
        assert set(preds[0]) == {"video_id", "label", "pred", "confidence", "correct", "hit_at_1"}
        assert all(set(p["label"].split("|")) <= set(NAMES) for p in preds)
        # the record's exact-set accuracy is the share of videos whose predicted set is their set
        assert np.mean([p["correct"] for p in preds]) == pytest.approx(s[split]["exact_set_accuracy"])
        assert np.mean([p["hit_at_1"] for p in preds]) == pytest.approx(s[split]["hit_at_1"])
    table = format_results({"m": s})
    assert table.splitlines()[0].split() == [
        "best",
        "ep",
        "val",
        "mAP",
        "val",
        "GAP",
        "test",
        "mAP",
        "test",
        "GAP",
        "test",
        "F1mu",
    ]


def test_evaluate_rescores_the_recorded_choice(ml_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ml_run, run)
    want = read(run / "eval_test.json")
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "test mAP" in out and "GAP@20" in out
    got = read(run / "eval_test.json")
    assert got["final"]["metrics"] == want["final"]["metrics"]
    assert got["final"]["thresholds"] == want["final"]["thresholds"]
    # the other TTA setting: the served view changes, and with it the thresholds are chosen again
    other = "off" if want["final"]["tta_used"] else "on"
    out = evaluate_saved_run(run, "test", tta=other, log=lambda *a: None)
    assert "its thresholds chosen again on validation for that view" in out["note"]
    forced = read(run / f"eval_test.tta-{other}.json")
    assert forced["final"]["tta_used"] is (other == "on") and set(forced["final"]["thresholds"]["per_class"])


def test_a_multilabel_run_scores_single_label_features_as_one_label_sets(ml_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ml_run, run)
    single = make_store(tmp_path / "single", multilabel=False, seed=5)
    notes: list[str] = []
    out = evaluate_saved_run(run, "test", features_dir=single, log=notes.append)
    assert "holds one label per video: scored as one-label sets" in out["note"]
    assert out["final"]["test"]["label_cardinality"] == 1.0
    assert read(run / "eval_test.json")["task"] == "multilabel"


def test_a_single_label_model_on_label_sets_is_refused_in_one_line(ml_run):
    ckpt = load_checkpoint(ml_run / "members/0/checkpoints/best.pt", "cpu")
    store = open_splits(read(ml_run / "summary.json")["features_dir"])["test"]
    check_checkpoint_matches(ckpt, Path("m.pt"), store)  # its own task: fine
    ckpt.pop("task")  # a checkpoint from before multi-label runs is single-label
    with pytest.raises(CheckpointError) as err:
        check_checkpoint_matches(ckpt, Path("m.pt"), store)
    msg = str(err.value)
    assert "\n" not in msg and "m.pt is a single-label model" in msg and str(store.path) in msg


def test_members_of_two_tasks_are_refused(ml_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ml_run, run)
    path = run / "members/1/checkpoints/best.pt"
    ckpt = load_checkpoint(path, "cpu")
    save_checkpoint(path, {**ckpt, "task": "single"})
    with pytest.raises(CheckpointError, match=r"has task 'single' but .*members/0/.* has 'multilabel'"):
        evaluate_saved_run(run, "val", log=lambda *a: None)


def test_the_report_tables_show_multilabel_metrics(ml_run):
    run = load_run(ml_run)
    member_table = [b for b in results.ensemble_body(run) if b["kind"] == "table"][0]
    assert member_table["headers"][3:6] == ["val mAP", "val GAP@20", "val micro F1"]
    final_line = [b for b in results.ensemble_body(run) if b["kind"] == "p"][-1]["text"]
    assert f"test mAP {read(ml_run / 'summary.json')['test']['map_macro']:.3f}" in final_line
    tta_table = [b for b in results.tta_body(run) if b["kind"] == "table"][0]
    assert tta_table["headers"][1:5] == ["val mAP", "val GAP@20", "val micro F1", "val exact set"]
