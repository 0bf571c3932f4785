"""RunDir: the paths of a run directory match the layout users' runs already have on disk, and every
reader is strict (a damaged file is a ConfigError naming it, never a silent default)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vidcls.errors import ConfigError
from vidcls.run import layout
from vidcls.run.final import load_final_choice
from vidcls.run.rundir import RunDir

LEGACY = Path(__file__).resolve().parent.parent / "assets" / "legacy_run" / "run"


def test_paths_are_those_of_a_run_written_by_0_1_0():
    run = RunDir(LEGACY)
    for path in (
        run.config,
        run.final,
        run.summary,
        run.calibration,
        run.typicality,
        run.metrics_all,
        run.eval_file("val"),
        run.eval_file("test"),
        run.best(0),
        run.last(1),
        run.history(1),
        run.member_metrics(0),
    ):
        assert path.is_file(), path
    assert run.member_indices() == [0, 1]
    assert run.eval_file("test", "off") == LEGACY / "eval_test.tta-off.json"
    assert run.snapshot(2, 7) == LEGACY / "members" / "2" / "checkpoints" / "snapshot_007.pt"
    assert run.periodic(0, 12) == LEGACY / "members" / "0" / "checkpoints" / "epoch_012.pt"
    assert run.resource_log == LEGACY / "results" / "resource_utilization_log.json"
    assert layout.SNAPSHOT_RE.fullmatch(run.snapshot(0, 30).name).group(1) == "030"
    assert layout.PERIODIC_RE.match(run.periodic(0, 3).name).group(1) == "003"
    assert layout.checkpoint_member(layout.checkpoint_rel(5, "best.pt")) == 5
    assert layout.CHECKPOINT_RE.fullmatch(layout.checkpoint_rel(3, layout.BEST))


def test_readers_of_a_good_run():
    run = RunDir(LEGACY)
    assert run.read_config().model == "bilstm_attn"
    assert run.read_final() == load_final_choice(LEGACY)
    assert run.read_calibration()["temperature"] == pytest.approx(0.9194016585285045)
    assert len(run.read_history(0)) == 12
    assert run.read_summary()["classes"] == ["animation", "gaming", "natural"]
    assert run.read_eval("test")["split"] == "test"
    assert set(run.read_typicality(run.read_calibration())) == set(layout_keys())
    assert run.model_checkpoint(run.read_final(), 1) == run.best(1)


def layout_keys():
    from vidcls.run.calibration import TYPICALITY_KEYS

    return TYPICALITY_KEYS


def test_a_directory_without_a_run(tmp_path):
    run = RunDir(tmp_path / "nothing")
    assert not run.holds_run()
    with pytest.raises(ConfigError, match="holds no run .no config.yaml.; train one"):
        run.require()
    with pytest.raises(ConfigError, match="holds no run"):
        run.read_config()
    assert run.read_summary() == {} and run.read_eval("val") is None and run.read_history(0) == []
    assert run.read_resource_log() is None and run.read_calibration() is None and run.member_indices() == []
    assert run.add_to_summary("calibration", {"t": 1}) is None and not run.summary.exists()


@pytest.fixture
def copy(tmp_path) -> RunDir:
    shutil.copytree(LEGACY, tmp_path / "run")
    return RunDir(tmp_path / "run")


@pytest.mark.parametrize(
    "name, read, text",
    [
        ("summary.json", lambda r: r.read_summary(), "{half"),
        ("summary.json", lambda r: r.read_summary(), "[1, 2]"),
        ("eval_test.json", lambda r: r.read_eval("test"), "\x00\x01"),
        ("eval_test.json", lambda r: r.read_eval("test"), '"a string"'),
        ("members/0/history.json", lambda r: r.read_history(0), '{"epoch": 1}'),
        ("results/resource_utilization_log.json", lambda r: r.read_resource_log(), '{"a": 1}'),
        ("calibration.json", lambda r: r.read_calibration(), '{"temperature": -1}'),
        ("final.json", lambda r: r.read_final(), '{"format": "other"}'),
    ],
)
def test_every_reader_is_strict(copy, name, read, text):
    path = copy.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path).replace(".", r"\.")):
        read(copy)


def test_add_to_summary_keeps_the_rest_and_skips_a_damaged_file(copy):
    before = copy.read_summary()
    copy.add_to_summary("calibration", {"temperature": 2.0})
    after = copy.read_summary()
    assert after["calibration"] == {"temperature": 2.0}
    assert {k: v for k, v in after.items() if k != "calibration"} == {
        k: v for k, v in before.items() if k != "calibration"
    }
    copy.summary.write_text("{torn")
    assert copy.add_to_summary("calibration", {}) is None
    assert copy.summary.read_text() == "{torn"  # left for the next fit to rewrite


def test_writers_write_what_the_readers_read(copy):
    copy.write_eval("val", {"split": "val"}, tta="on")
    assert json.loads(copy.eval_file("val", "on").read_text()) == {"split": "val"}
    copy.write_summary({"a": 1})
    assert copy.read_summary() == {"a": 1}
    choice = copy.read_final()
    copy.final.unlink()
    copy.write_final(choice)
    assert copy.read_final() == choice


def test_features_dir(copy, tmp_path):
    feats = LEGACY.parent / "feats"
    assert copy.features_dir("/not/here", override=str(feats)) == str(feats)
    with pytest.raises(ConfigError, match="--features-dir .* is not a directory"):
        copy.features_dir(str(feats), override=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="pass --features-dir DIR"):
        copy.features_dir(str(tmp_path / "moved"))
    assert copy.features_dir(str(feats)) == str(feats)
    assert RunDir(LEGACY.parent).is_feature_dir() is False and RunDir(feats).is_feature_dir()
