"""``load_members``: the one loader of a run's models, for evaluation, calibration and the predictor."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vidcls.engine.members import load_members
from vidcls.errors import CheckpointError
from vidcls.run.checkpoint import save_checkpoint
from vidcls.run.final import FinalChoice
from vidcls.run.rundir import RunDir

SPEC = {
    "name": "bilstm_attn",
    "feature_dim": 3,
    "n_classes": 2,
    "hidden_dim": 8,
    "layers": 1,
    "heads": 2,
    "dropout": 0.0,
}
NAMES = ["a", "b"]


def _save(path: Path, seed: int, **changes) -> dict:
    from vidcls.models import build_from_spec

    torch.manual_seed(seed)
    model = build_from_spec(SPEC)
    state = {
        "model": SPEC,
        "model_state": model.state_dict(),
        "class_names": NAMES,
        "feature_dim": 3,
        "extractor": {"backbone": "synthetic"},
        "max_frames": None,
        "config": {"batch_size": 4},
        **changes,
    }
    save_checkpoint(path, {k: v for k, v in state.items() if v is not ...})
    return model.state_dict()


@pytest.fixture
def run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    for m in range(3):
        run.checkpoints_dir(m).mkdir(parents=True)
        _save(run.best(m), seed=m)
    return run


def test_the_models_of_the_indices_asked_from_the_files_they_mean(run):
    models, meta = load_members(run, [], [2, 0], "cpu")  # no recorded list: member m's best.pt
    assert len(models) == 2 and not any(m.training for m in models)
    torch.manual_seed(2)
    from vidcls.models import build_from_spec

    want = build_from_spec(SPEC).state_dict()
    assert all(torch.equal(models[0].state_dict()[k], v) for k, v in want.items())
    assert [m["class_names"] for m in meta] == [NAMES, NAMES] and "model_state" not in meta[0]
    assert meta[0]["config"] == {"batch_size": 4}
    # a recorded list: index 0 is member 2's file (and a path works as well as a RunDir)
    choice = FinalChoice(
        source="member 0",
        members=[0],
        tta_used=False,
        tta_modes=["original"],
        select="val_acc",
        reason="r",
        val_score=1.0,
        checkpoints=["members/2/checkpoints/best.pt"],
    )
    models, _ = load_members(run.root, choice, [0], "cpu")
    assert all(torch.equal(models[0].state_dict()[k], v) for k, v in want.items())


def test_a_checkpoint_that_is_not_a_finished_member_is_refused(run):
    _save(run.best(1), seed=1, model_state=...)
    with pytest.raises(
        CheckpointError,
        match=r"members/1/checkpoints/best.pt has no 'model_state'; it is not a "
        r"finished member checkpoint",
    ):
        load_members(run, [], [0, 1], "cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_members(run, [], [7], "cpu")


def test_members_of_other_features_than_each_other_are_refused(run):
    _save(run.best(1), seed=1, max_frames=16)
    with pytest.raises(
        CheckpointError,
        match=r"members/1/checkpoints/best.pt has max_frames 16 but .*members/0/"
        r"checkpoints/best.pt has None; the members of one run must share",
    ):
        load_members(run, [], [0, 1], "cpu")
    load_members(run, [], [1], "cpu")  # alone it is fine


def test_every_checkpoint_is_checked_against_the_stores(run):
    store = SimpleNamespace(
        class_names=NAMES, feature_dim=3, extractor={"backbone": "synthetic"}, path="val.h5"
    )
    other = SimpleNamespace(class_names=["a", "c"], feature_dim=3, extractor={}, path="test.h5")
    assert len(load_members(run, [], [0, 1], "cpu", [store])[0]) == 2
    with pytest.raises(
        CheckpointError,
        match=r"members/0/checkpoints/best.pt was trained on classes \[a, b\] but "
        r"test.h5 has \[a, c\]",
    ):
        load_members(run, [], [0, 1], "cpu", [store, other])
