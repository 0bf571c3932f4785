"""A multi-label run in ``vidcls.load`` and ``vidcls predict``: each video's label set is every class
whose served sigmoid reaches its threshold, most probable first (possibly none); the thresholds are
calibration.json's when the predictor uses that calibration, else final.json's, else 0.5 with one
warning; the CSV and the table show the set as ``a|b``.

The run is built by hand (tests/multilabel_runs.py): one ``mean_mlp`` whose logits are the mean of the
frames, so every probability below is ``sigmoid(logit / T)`` of logits the test chose.
"""

from __future__ import annotations

import csv
import io
import json
import logging

import numpy as np
import pytest

import vidcls
from multilabel_runs import CLASSES, identity_weights, joint_energy, sigmoid, write_calibration, write_run
from vidcls.cli import main
from vidcls.errors import ConfigError
from vidcls.predict.outputs import MULTILABEL_CSV_FIELDS, MULTILABEL_TABLE_HEAD
from vidcls.predict.timeline import _title

FINAL = [0.6, 0.6, 0.1, 0.8]  # outdoor, dog, music, car
Z1 = [2.0, 0.0, -2.0, 1.0]  # at T=1: .881 .5 .119 .731 -> outdoor, music
Z2 = [-3.0, -3.0, -3.0, -3.0]  # .047 each: nothing reaches its threshold
Z3 = [1.0, 1.0, -5.0, -5.0]  # .731 .731: a tie, the lower class index first


def frames(z: list[float], n: int = 3) -> np.ndarray:
    """``n`` frames whose mean is ``z`` (the first frame twice ``z``, the second zeros, the rest ``z``)."""
    x = np.tile(np.asarray(z, np.float32), (n, 1))
    x[0], x[1] = 2 * x[0], 0.0
    return x


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "run", weights=identity_weights(4), feature_dim=4, final_thresholds=FINAL)


def names(record: dict) -> list[str]:
    return [item["label"] for item in record["labels"]]


def test_the_label_set_is_every_class_at_or_above_its_threshold_most_probable_first(run):
    predictor = vidcls.load(run, device="cpu")
    assert predictor.task_ == "multilabel" and predictor.thresholds_.source == "final"
    x = [frames(Z1), frames(Z2), frames(Z3)]
    np.testing.assert_allclose(
        predictor.predict_proba(x), [sigmoid(Z1), sigmoid(Z2), sigmoid(Z3)], rtol=1e-12
    )
    assert predictor.predict_labels(x) == [["outdoor", "music"], [], ["outdoor", "dog"]]
    assert predictor.predict(x) == ["outdoor", "outdoor", "outdoor"]  # the most probable class
    r1, r2, r3 = predictor.predict_records(x, top_k=2)
    assert r1["task"] == "multilabel" and r1["thresholds_source"] == "final"
    assert r1["labels"] == [
        {"label": "outdoor", "probability": pytest.approx(sigmoid([2.0])[0], abs=1e-12)},
        {"label": "music", "probability": pytest.approx(sigmoid([-2.0])[0], abs=1e-12)},
    ]
    assert r1["label"] == "outdoor" and [t["class"] for t in r1["top_k"]] == ["outdoor", "car"]
    assert r1["probabilities"] == pytest.approx(dict(zip(CLASSES, sigmoid(Z1))), abs=1e-12)
    assert r2["labels"] == [] and r2["label"] == "outdoor" and r2["error"] is None
    assert names(r3) == ["outdoor", "dog"]
    assert r1["trusted"] is None  # not calibrated: the verdict is unknown, as for a single-label run
    info = predictor.describe()
    assert info["task"] == "multilabel"
    assert info["thresholds"] == {
        "source": "final",
        "rule": "per_class",
        "per_class": dict(zip(CLASSES, FINAL)),
    }


def test_calibration_thresholds_are_preferred_at_its_temperature_with_the_joint_energy_verdict(run):
    write_calibration(run, temperature=2.0, per_class=[0.5] * 4, energy_threshold=3.0)
    predictor = vidcls.load(run, device="cpu")
    r1, r2 = predictor.predict_records([frames(Z1), frames(Z2)])
    # sigmoid(z / 2) = .731 .5 .269 .622: three classes reach 0.5 (dog exactly), not final.json's two
    assert names(r1) == ["outdoor", "car", "dog"] and r1["thresholds_source"] == "calibration"
    assert r1["probabilities"] == pytest.approx(dict(zip(CLASSES, sigmoid(Z1, 2.0))), abs=1e-12)
    assert r2["labels"] == []
    assert r1["ood_score"] == pytest.approx(joint_energy(Z1, 2.0), abs=1e-9)  # 6.59 >= 3: trusted
    assert r2["ood_score"] == pytest.approx(joint_energy(Z2, 2.0), abs=1e-9)  # 1.61 < 3: not trusted
    assert (r1["trusted"], r2["trusted"]) == (True, False)
    assert "energy score 1.611 is below the validation threshold 3.000" in r2["trust_reason"]
    assert predictor.predict_labels([frames(Z1)]) == [["outdoor", "car", "dog"]]
    np.testing.assert_allclose(
        predictor.predict_proba([frames(Z1)], calibrated=False), [sigmoid(Z1)], rtol=1e-12
    )


@pytest.mark.parametrize(
    "calibration",
    [
        {"views": ["original", "reverse"], "task": "multilabel", "per_class": [0.5] * 4},  # other views
        {"views": ["original"], "task": "single", "per_class": None},  # fitted for a single-label run
    ],
)
def test_a_calibration_not_fitted_for_what_is_served_leaves_final_thresholds_at_t1(run, calibration):
    write_calibration(run, temperature=2.0, energy_threshold=3.0, **calibration)
    predictor = vidcls.load(run, device="cpu")
    assert predictor.calibration_ is None
    (r1,) = predictor.predict_records([frames(Z1)])
    assert names(r1) == ["outdoor", "music"] and r1["thresholds_source"] == "final"
    assert r1["probabilities"] == pytest.approx(dict(zip(CLASSES, sigmoid(Z1))), abs=1e-12)
    assert r1["trusted"] is None and "not calibrated" in r1["trust_reason"]


def test_a_run_without_thresholds_decides_at_one_half_and_says_so_once(tmp_path, caplog):
    run = write_run(tmp_path / "old", weights=identity_weights(4), feature_dim=4, final_thresholds=None)
    with caplog.at_level(logging.WARNING, logger="vidcls.predict.predictor"):
        predictor = vidcls.load(run, device="cpu")
        records = predictor.predict_records([frames(Z1), frames(Z2)])
    said = [r.getMessage() for r in caplog.records if "decision thresholds" in r.getMessage()]
    assert len(said) == 1 and "0.5" in said[0] and str(run) in said[0], said
    assert predictor.thresholds_.source == "default"
    assert names(records[0]) == ["outdoor", "car", "dog"]  # .881 .731 .5 reach 0.5
    assert records[0]["thresholds_source"] == "default" and records[1]["labels"] == []


def test_recorded_thresholds_of_another_class_count_are_refused_naming_the_file(run):
    final = json.loads((run / "final.json").read_text())
    final["thresholds"]["per_class"] = [0.5, 0.5, 0.5]
    (run / "final.json").write_text(json.dumps(final))
    with pytest.raises(
        ConfigError, match=r"final\.json.*one threshold in \[0, 1\] per class \(4\).*vidcls evaluate"
    ):
        vidcls.load(run, device="cpu")


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    np.save(folder / "a.npy", frames(Z1))
    np.save(folder / "b.npy", frames(Z2))
    np.save(folder / "c.npy", np.zeros((3, 5), np.float32))  # D=5, the run's is 4: an error record
    return folder


def test_predict_csv_table_and_json_show_the_label_set(run, inputs, tmp_path, capsys):
    assert main(["predict", str(run), str(inputs), "--output", str(tmp_path / "out.csv")]) == 0
    text = (tmp_path / "out.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(MULTILABEL_CSV_FIELDS)
    assert [(r["label"], r["labels"]) for r in rows] == [
        ("outdoor", "outdoor|music"),
        ("outdoor", ""),
        ("", ""),
    ]
    assert rows[2]["error"] and "D=5" in rows[2]["error"]

    capsys.readouterr()
    assert main(["predict", str(run), str(inputs), "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(MULTILABEL_TABLE_HEAD)
    assert lines[1].split()[:4] == [str(inputs / "a.npy"), "outdoor", "0.881", "outdoor|music"]
    assert lines[2].split()[:4] == [str(inputs / "b.npy"), "outdoor", "0.047", "(none)"]
    assert lines[3].split()[:2] == [str(inputs / "c.npy"), "ERROR"]

    assert main(["predict", str(run), str(inputs), "--output", str(tmp_path / "out.json")]) == 0
    got = json.loads((tmp_path / "out.json").read_text())
    want = vidcls.load(run, device="cpu").predict_records([frames(Z1), frames(Z2)])
    for g, w in zip(got[:2], want):
        g.pop("timings"), w.pop("timings"), g.pop("input"), w.pop("input")
        assert g == w
    assert [names(r) for r in got[:2]] == [["outdoor", "music"], []]
    failed = got[2]
    assert failed["error"] and failed["task"] == "multilabel" and failed["labels"] is None
    assert failed["thresholds_source"] == "final" and failed["label"] is None


def test_a_resumed_jsonl_and_a_rewritten_csv_keep_working(run, inputs, tmp_path):
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run), str(inputs / "a.npy"), "--output", str(out)]) == 0
    assert main(["predict", str(run), str(inputs), "--output", str(out)]) == 0  # a.npy skipped
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"].rsplit("/", 1)[1] for r in records] == ["a.npy", "b.npy", "c.npy"]
    assert [r["labels"] if r["labels"] is None else names(r) for r in records] == [
        ["outdoor", "music"],
        [],
        None,
    ]
    csv_out = tmp_path / "out.csv"
    for _ in range(2):  # the second run replaces the multi-label CSV the first wrote
        assert main(["predict", str(run), str(inputs / "b.npy"), "--output", str(csv_out)]) == 0
    assert csv_out.read_text().count("\n") == 2


def test_the_timeline_of_a_multilabel_record(run, inputs, tmp_path):
    assert main(["predict", str(run), str(inputs / "a.npy"), "--timeline", str(tmp_path / "tl")]) == 0
    (png,) = (tmp_path / "tl").iterdir()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = vidcls.load(run, device="cpu").predict_records([frames(Z1)])[0]
    assert "outdoor (88.1%), labels outdoor|music, trust unknown" in _title(record)
