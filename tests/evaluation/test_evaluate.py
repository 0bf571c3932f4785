"""Scoring whole runs: what ``fit`` records (final.json, eval files) and what ``vidcls evaluate`` does
with it: the recorded choice, only the asked split's file, checkpoints checked against the features."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from vidcls.cli import main
from vidcls.errors import ConfigError
from vidcls.evaluation.evaluate import write_final_choice
from vidcls.evaluation.policy import FinalChoice
from vidcls.run.checkpoint import load_checkpoint, save_checkpoint
from vidcls.run.final import load_final_choice
from vidcls.store import write_store
from vidcls.store.synth import make_synthetic

TINY = (
    "--model bilstm_attn --min-steps 1 --hidden-dim 16 --layers 1 --heads 2 --workers 0 --device cpu"
).split()
ALL_MODES = ["original", "reverse", "speed_up", "speed_down"]
FIT_FILES = ("eval_val.json", "eval_test.json", "summary.json", "final.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_features) -> Path:
    """A finished 2-member run (1 epoch each) on its own copy of the tiny features. Read-only: copy it first."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(tiny_features, root / "feats")
    run = root / "run"
    assert (
        main(["train", str(root / "feats"), str(run), "--epochs", "1", "--members", "2", "--no-plots", *TINY])
        == 0
    )
    return run


def clone(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run and of its features, the copy's config pointing at the copied features."""
    shutil.copytree(run.parent, tmp_path / "c")
    new_run, new_feats = tmp_path / "c" / "run", tmp_path / "c" / "feats"
    cfg = new_run / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(run.parent / "feats"), str(new_feats)))
    return new_run, new_feats


def stamps(run: Path) -> dict:
    """Identity of each file fit wrote: an (atomic) rewrite changes the inode and the mtime."""
    return {
        n: ((run / n).stat().st_ino, (run / n).stat().st_mtime_ns, (run / n).read_bytes()) for n in FIT_FILES
    }


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def record_choice(run: Path, member: int, tta_used: bool) -> None:
    """Overwrite the run's final.json: serve member ``member`` alone."""
    write_final_choice(
        run,
        FinalChoice(
            source=f"member {member}",
            members=[member],
            tta_used=tta_used,
            tta_modes=ALL_MODES,
            select="val_acc",
            reason="set by the test",
            val_score=0.5,
            tta="auto",
        ),
    )


# ---------------------------------------------------------------- what fit records


def test_fit_records_the_final_choice(trained):
    s, final = read(trained / "summary.json"), read(trained / "final.json")
    assert (final.pop("format"), final.pop("version")) == ("vidcls-final-choice", 1)
    assert final == s["final"]
    choice = load_final_choice(trained)
    assert choice.to_dict() == s["final"]
    assert (choice.tta_modes, choice.select, choice.tta) == (ALL_MODES, "val_acc", "auto")
    assert choice.member_tta_used == [m["tta_used"] for m in s["members"]]
    assert choice.ensemble_members == s["ensemble"]["members_used"]
    assert choice.ensemble_tta_used == s["ensemble"]["tta_used"]
    assert choice.excluded == s["ensemble"]["excluded"]
    if choice.source == "ensemble":
        assert (choice.members, choice.tta_used) == (s["ensemble"]["members_used"], s["ensemble"]["tta_used"])
    else:
        i = int(choice.source.split()[1])
        assert (choice.members, choice.tta_used) == ([i], s["members"][i]["tta_used"])
    for split in ("val", "test"):
        ev = read(trained / f"eval_{split}.json")
        assert ev["final"]["members"] == choice.members and ev["final"]["metrics"] == s[split]
        correct = [p["correct"] for p in ev["predictions"]]
        assert s[split]["accuracy"] == pytest.approx(np.mean(correct))


def test_tta_modes_without_original_finish_the_run(tiny_features, tmp_path, tiny_args, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(tiny_features),
                str(run),
                "--tta-modes",
                "reverse,speed_up",
                "--epochs",
                "2",
                "--no-plots",
                *tiny_args,
            ]
        )
        == 0
    )
    s = read(run / "summary.json")
    assert s["tta"]["modes"] == ["reverse", "speed_up"]
    assert set(s["tta"]["per_mode"]) == {"reverse", "speed_up"}
    assert read(run / "final.json")["tta_modes"] == ["reverse", "speed_up"]
    # "without TTA" is the original sequence: the number the epoch loop validated the best epoch with
    rows = (run / "members/0/metrics.csv").read_text().splitlines()
    header, best = rows[0].split(","), rows[s["members"][0]["best_epoch"]].split(",")
    assert s["members"][0]["val"]["accuracy"] == pytest.approx(float(best[header.index("val_acc")]))
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 0
    assert set(read(run / "eval_test.json")["tta_per_mode"]) == {"reverse", "speed_up"}


# ---------------------------------------------------------------- vidcls evaluate


def test_evaluate_rescoring_the_recorded_choice_writes_only_its_split(trained, tmp_path, capsys):
    run, _ = clone(trained, tmp_path)
    before = stamps(run)
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"written: {run / 'eval_val.json'}" in out
    after = stamps(run)
    for name in ("eval_test.json", "summary.json", "final.json"):
        assert after[name] == before[name], f"{name} was rewritten"
    # the same choice on the same checkpoints: the very record fit wrote
    assert json.loads(after["eval_val.json"][2]) == json.loads(before["eval_val.json"][2])
    assert sorted(p.name for p in run.glob("eval_*")) == ["eval_test.json", "eval_val.json"]


@pytest.mark.parametrize("tta", ["on", "off"])
def test_evaluate_with_another_tta_writes_its_own_file(trained, tmp_path, capsys, tta):
    run, _ = clone(trained, tmp_path)
    record_choice(run, 1, tta_used=tta == "off")  # the run chose the opposite of what is asked
    before = stamps(run)
    assert main(["evaluate", str(run), "--split", "val", "--tta", tta, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    path = run / f"eval_val.tta-{tta}.json"
    assert f"written: {path}" in out and f"note: --tta {tta}" in out
    assert stamps(run) == before  # fit's files untouched
    ev = read(path)
    assert ev["tta"] == tta and ev["final"]["members"] == [1] and ev["final"]["tta_used"] is (tta == "on")
    assert [m["tta_used"] for m in ev["members"]] == [tta == "on"] * 2
    assert ev["final"]["metrics"] == ev["members"][1]["with_tta" if tta == "on" else "without_tta"]
    assert f"--tta {tta}" in ev["note"]


def test_evaluate_scores_what_final_json_says(trained, tmp_path, capsys):
    run, _ = clone(trained, tmp_path)
    for member, tta_used in ((1, True), (0, False)):
        record_choice(run, member, tta_used)
        assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        assert f"final: member {member} (members [{member}], TTA {'on' if tta_used else 'off'})" in out
        ev = read(run / "eval_test.json")
        assert ev["final"]["members"] == [member] and ev["final"]["tta_used"] is tta_used
        assert ev["final"]["reason"] == "set by the test" and "note" not in ev
        assert ev["final"]["metrics"] == ev["members"][member]["with_tta" if tta_used else "without_tta"]


def test_evaluate_recomputes_the_choice_of_a_run_without_final_json(trained, tmp_path, capsys):
    run, _ = clone(trained, tmp_path)
    (run / "final.json").unlink()
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (
        "note: the run has no final.json (it predates the file): the final choice was recomputed on "
        "validation" in out
    )
    ev, s = read(run / "eval_test.json"), read(run / "summary.json")
    assert "recomputed on validation" in ev["note"]
    assert ev["final"]["source"] == s["final"]["source"] and ev["final"]["metrics"] == s["test"]
    # recorded now (the choice training makes), so the run can be served: prediction reads final.json
    assert "recorded in" in ev["note"]
    recorded = load_final_choice(run)
    assert recorded.source == s["final"]["source"] and recorded.members == s["final"]["members"]


def test_load_final_choice_errors_and_round_trip(tmp_path):
    with pytest.raises(
        ConfigError, match=r"holds no run \(no config.yaml\); give the RUN_DIR of `vidcls train`"
    ):
        load_final_choice(tmp_path)  # not told to evaluate a directory that is not a run
    (tmp_path / "config.yaml").write_text("epochs: 1\n")
    with pytest.raises(ConfigError, match=r"final.json not found: .* `vidcls evaluate .* --split val`"):
        load_final_choice(tmp_path)
    choice = FinalChoice(
        source="ensemble",
        members=[0, 2],
        tta_used=True,
        tta_modes=["reverse"],
        select="val_f1_macro",
        reason="r",
        val_score=0.75,
        ensemble_members=[0, 2],
        ensemble_tta_used=True,
        member_tta_used=[True, False, False],
        excluded=[{"member": 1, "reason": "x"}],
        tta="auto",
        mcnemar={"member": 0, "b": 8, "c": 1, "p_value": 20 / 512, "alpha": 0.05},
    )
    write_final_choice(tmp_path, choice)
    assert load_final_choice(tmp_path) == choice
    (tmp_path / "final.json").write_text("{not json")
    with pytest.raises(ConfigError, match="final.json is damaged"):
        load_final_choice(tmp_path)
    for bad in (
        {"members": [], "tta_modes": ["reverse"]},
        {"members": [0], "tta_modes": ["mirror"]},
        {"members": [0], "tta_modes": ["reverse"], "format": "other"},
    ):
        data = {**choice.to_dict(), "format": "vidcls-final-choice", "version": 1, **bad}
        (tmp_path / "final.json").write_text(json.dumps(data))
        with pytest.raises(ConfigError, match="not a valid vidcls final choice"):
            load_final_choice(tmp_path)


def test_load_final_choice_reads_a_record_older_than_the_mcnemar_test(tmp_path):
    """A final.json written before the McNemar gate has no "mcnemar" key: it loads, with an empty test."""
    old = {
        "format": "vidcls-final-choice",
        "version": 1,
        "source": "member 1",
        "members": [1],
        "tta_used": False,
        "tta_modes": ["reverse"],
        "select": "val_acc",
        "val_score": 0.9,
        "tta": "auto",
        "reason": "member 1 alone scored higher on validation (val_acc 0.9000) than the ensemble (0.7500)",
        "ensemble_members": [0, 1],
        "ensemble_tta_used": False,
        "member_tta_used": [False, False],
        "excluded": [],
    }
    (tmp_path / "final.json").write_text(json.dumps(old))
    choice = load_final_choice(tmp_path)
    assert (choice.source, choice.members, choice.tta_used, choice.mcnemar) == ("member 1", [1], False, {})
    assert choice.reason == old["reason"]


def _set_attr(feats: Path, key: str, value) -> None:
    for split in ("train", "val", "test"):
        with h5py.File(feats / f"{split}.h5", "r+") as f:
            f.attrs[key] = value


@pytest.mark.parametrize(
    "change,needles",
    [
        (
            "class_names",
            [
                "was trained on classes [animation, gaming, natural, flat]",
                "has [animation, gaming, natural, other]",
            ],
        ),
        ("feature_dim", ["was trained on 16-dimensional features", "holds 8-dimensional ones"]),
        ("extractor", ["was trained on synthetic features", "holds resnet50 features"]),
    ],
)
def test_evaluate_refuses_features_the_run_was_not_trained_on(trained, tmp_path, capsys, change, needles):
    run, feats = clone(trained, tmp_path)
    if change == "class_names":
        _set_attr(feats, "class_names", json.dumps(["animation", "gaming", "natural", "other"]))
    elif change == "feature_dim":
        make_synthetic(feats, videos=80, dim=8, min_frames=6, max_frames=24, seed=3)
    else:
        _set_attr(feats, "extractor", json.dumps({"backbone": "resnet50"}))
    before = stamps(run)
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'members/0/checkpoints/best.pt'} " in err and f"{feats / 'test.h5'}" in err
    for needle in needles + ["evaluate with the features the run was trained on"]:
        assert needle in err
    assert "Traceback" not in err and stamps(run) == before


# ---------------------------------------------------------------- longer runs


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    out = tmp_path_factory.mktemp("feats")
    make_synthetic(out, videos=80, dim=16, min_frames=6, max_frames=24, seed=4)
    return out


@pytest.fixture(scope="module")
def easy_feats(tmp_path_factory):
    """Classes told apart by their mean frame: every member learns them in a few epochs."""
    out = tmp_path_factory.mktemp("easy")
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.0, (4, 16))
    for split, n in (("train", 64), ("val", 24), ("test", 24)):
        vids = [
            (
                f"{split}{i}",
                (centres[i % 4] + rng.normal(0, 0.5, (int(rng.integers(6, 20)), 16))).astype(np.float32),
                i % 4,
            )
            for i in range(n)
        ]
        write_store(out / f"{split}.h5", vids, ["animation", "gaming", "natural", "flat"], 16)
    return out


def test_three_members_record_and_forced_collapse(easy_feats, tmp_path, capsys, tiny_args):
    run = tmp_path / "run"
    feats = easy_feats
    assert (
        main(
            [
                "train",
                str(feats),
                str(run),
                "--epochs",
                "12",
                "--lr",
                "0.01",
                "--members",
                "3",
                "--no-plots",
                *tiny_args,
            ]
        )
        == 0
    )
    s = json.loads((run / "summary.json").read_text())
    assert [m["seed"] for m in s["members"]] == [42, 43, 44]
    for key in ("members_used", "excluded", "val", "test", "gain_vs_mean_member"):
        assert key in s["ensemble"]
    assert set(s["tta"]["per_mode"]) == {"original", "reverse", "speed_up", "speed_down"}
    assert s["mean_member_test"]["accuracy"] == pytest.approx(
        np.mean([m["test"]["accuracy"] for m in s["members"]])
    )
    rows = (run / "metrics_all.csv").read_text().splitlines()
    assert rows[0].startswith("member,epoch,") and len(rows) == 1 + 3 * 12
    assert s["ensemble"]["excluded"] == [] and all(m["val"]["accuracy"] > 0.8 for m in s["members"])
    tags = [r.get("tag") for r in json.loads((run / "results/resource_utilization_log.json").read_text())]
    assert "member 1 start" in tags and "member 2 end" in tags

    # force member 1 to collapse: a huge bias on class 0 of its classifier
    path = run / "members/1/checkpoints/best.pt"
    ckpt = load_checkpoint(path)
    last_bias = [k for k in ckpt["model_state"] if k.endswith("bias")][-1]
    ckpt["model_state"][last_bias][:] = torch.tensor([1e4, 0, 0, 0])
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "member 1 excluded" in out  # the policy re-run on val, reported for information
    ev = json.loads((run / "eval_test.json").read_text())
    assert 1 not in ev["ensemble"]["members_used"]
    assert any(e["member"] == 1 and "single class" in e["reason"] for e in ev["ensemble"]["excluded"])
    assert ev["final"]["members"] == s["final"]["members"]  # what is served is still the recorded choice
    assert len(ev["members"]) == 3 and {"with_tta", "without_tta"} <= set(ev["members"][0])
    assert len(ev["predictions"]) == sum(s["class_counts"]["test"].values())
    for key in ("precision_per_class", "recall_per_class", "support_per_class", "confusion_matrix"):
        assert key in ev["ensemble"]["metrics"]


def test_resume_in_the_middle_of_member_2_of_3(feats, tmp_path, tiny_args, spawn_cli, summary_core):
    common = ["--epochs", "4", "--members", "3", "--patience-cycles", "0", "--no-plots", *tiny_args]
    ref = tmp_path / "ref"
    assert main(["train", str(feats), str(ref), *common]) == 0
    run = tmp_path / "killed"
    proc = spawn_cli("train", feats, run, *common)
    hist = run / "members/1/history.json"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            if len(json.loads(hist.read_text())) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "members/2").exists() or not (run / "members/2/history.json").exists()
    assert main(["train", str(feats), str(run), "--resume"]) == 0
    assert summary_core(run) == summary_core(ref)
    assert read(run / "final.json") == read(ref / "final.json")
    assert (run / "metrics_all.csv").read_text().count("\n") == (ref / "metrics_all.csv").read_text().count(
        "\n"
    )


# ---------------------------------------------------------------- issue 16 items 9 and 10


@pytest.mark.parametrize(
    "damage", ['{"format": "vidcls-final-choice", "members": "x', '{"format": "other"}', "\x00\xff"]
)
def test_evaluate_rewrites_a_damaged_final_json(trained, tmp_path, capsys, damage):
    """The damaged-final.json message sends the user to `evaluate --split val`: that command must then
    re-make the choice and rewrite the file, as it does for a missing one."""
    run, _ = clone(trained, tmp_path)
    expected = load_final_choice(run)
    (run / "final.json").write_text(damage)
    with pytest.raises(ConfigError, match="--split val"):
        load_final_choice(run)
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu"]) == 0
    assert "was damaged or not a final choice: the final choice was recomputed" in capsys.readouterr().out
    rewritten = load_final_choice(run)  # valid again, and the choice training made
    assert (rewritten.source, rewritten.members, rewritten.tta_used) == (
        expected.source,
        expected.members,
        expected.tta_used,
    )


def test_evaluate_and_calibrate_work_from_another_directory(trained, tmp_path, monkeypatch, capsys):
    """A run trained with a relative features directory is found from any working directory; one whose
    features moved takes --features-dir."""
    root = tmp_path / "project"
    shutil.copytree(trained.parent, root / "runs")
    run = root / "runs" / "run"
    cfg = run / "config.yaml"
    text = cfg.read_text()
    recorded = str(trained.parent / "feats")
    assert recorded in text  # recorded absolute by fit
    cfg.write_text(text.replace(recorded, "runs/feats"))  # as an older release wrote it: relative to cwd
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu"]) == 0
    assert main(["calibrate", str(run), "--device", "cpu"]) == 0
    assert (run / "calibration.json").is_file()
    # the features moved away: named by --features-dir, and a clear error without it
    (root / "runs" / "feats").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "runs/feats" in err and "--features-dir" in err and "create it with vidcls synth" not in err
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--split",
                "val",
                "--device",
                "cpu",
                "--features-dir",
                str(tmp_path / "moved"),
            ]
        )
        == 0
    )
    assert main(["calibrate", str(run), "--device", "cpu", "--features-dir", str(tmp_path / "moved")]) == 0
    assert main(["calibrate", str(run), "--features-dir", str(tmp_path / "nowhere")]) == 2
    assert "--features-dir" in capsys.readouterr().err
