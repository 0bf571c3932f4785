"""Snapshot ensembles (``--snapshots``): which checkpoint file each model index means, recorded in
final.json and used alike by ``vidcls evaluate``, calibration and the predictor."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vidcls
from vidcls.cli import main
from vidcls.config import TrainConfig, load_config
from vidcls.data.dataset import load_splits
from vidcls.engine.views import tta_batch
from vidcls.errors import ConfigError
from vidcls.evaluation.evaluate import model_checkpoints, write_final_choice
from vidcls.evaluation.policy import FinalChoice
from vidcls.models import build_from_spec
from vidcls.run.checkpoint import load_checkpoint
from vidcls.run.final import checkpoint_path, load_final_choice

ALL_MODES = ["original", "reverse", "speed_up", "speed_down"]


def touch_tree(run: Path, files: dict) -> None:
    """``{member: [file names]}`` -> empty files under ``run/members/<member>/checkpoints/``."""
    for member, names in files.items():
        d = run / "members" / str(member) / "checkpoints"
        d.mkdir(parents=True, exist_ok=True)
        for name in names:
            (d / name).touch()


def choice_of(members: list, checkpoints: list) -> FinalChoice:
    return FinalChoice(
        source="ensemble",
        members=members,
        tta_used=False,
        tta_modes=ALL_MODES,
        select="val_acc",
        reason="set by the test",
        val_score=0.5,
        checkpoints=checkpoints,
    )


# ---------------------------------------------------------------- the list of models, on a hand-made tree


def test_model_checkpoints_on_a_hand_made_tree(tmp_path):
    touch_tree(
        tmp_path,
        {
            # member 0: cycles of the defaults (t0=20, t_mult=2) end at 20, 60, 140 (written out of order);
            # best/last/periodic checkpoints and a half-written temp file are not snapshots
            0: [
                "best.pt",
                "last.pt",
                "epoch_140.pt",
                "snapshot_140.pt",
                "snapshot_020.pt",
                "snapshot_060.pt",
                "snapshot_060.pt.tmp",
            ],
            1: ["best.pt", "last.pt"],  # stopped before its first cycle ended: no snapshot
            # member 2: epoch 1000 sorts before 140 as text ("snapshot_1" "0" < "4"), after it as a number
            2: ["best.pt", "snapshot_1000.pt", "snapshot_140.pt"],
        },
    )
    snaps = TrainConfig(members=3, snapshots=True)
    assert model_checkpoints(tmp_path, snaps) == [
        "members/0/checkpoints/snapshot_020.pt",
        "members/0/checkpoints/snapshot_060.pt",
        "members/0/checkpoints/snapshot_140.pt",
        "members/1/checkpoints/best.pt",  # the fallback of a member without snapshots
        "members/2/checkpoints/snapshot_140.pt",
        "members/2/checkpoints/snapshot_1000.pt",
    ]
    # without --snapshots: each member's best.pt, one model per member (today's rule)
    assert model_checkpoints(tmp_path, TrainConfig(members=3, snapshots=False)) == [
        "members/0/checkpoints/best.pt",
        "members/1/checkpoints/best.pt",
        "members/2/checkpoints/best.pt",
    ]
    # only the run's members count: a 4th directory left over is not part of a 2-member run
    touch_tree(tmp_path, {3: ["best.pt", "snapshot_020.pt"]})
    assert model_checkpoints(tmp_path, TrainConfig(members=2, snapshots=True)) == [
        "members/0/checkpoints/snapshot_020.pt",
        "members/0/checkpoints/snapshot_060.pt",
        "members/0/checkpoints/snapshot_140.pt",
        "members/1/checkpoints/best.pt",
    ]


def test_checkpoint_path_old_and_recorded_lists(tmp_path):
    # an older final.json records no list: model m is member m's best.pt
    old = choice_of([0, 2], [])
    assert checkpoint_path(tmp_path, old, 2) == tmp_path / "members/2/checkpoints/best.pt"
    assert checkpoint_path(tmp_path, [], 0) == tmp_path / "members/0/checkpoints/best.pt"
    # a recorded list: model m is its m-th entry, whatever member that is
    listed = [
        "members/0/checkpoints/snapshot_002.pt",
        "members/0/checkpoints/snapshot_004.pt",
        "members/1/checkpoints/best.pt",
    ]
    new = choice_of([1, 2], listed)
    assert checkpoint_path(tmp_path, new, 1) == tmp_path / "members/0/checkpoints/snapshot_004.pt"
    assert checkpoint_path(tmp_path, new, 2) == tmp_path / "members/1/checkpoints/best.pt"
    assert checkpoint_path(tmp_path, listed, 0) == tmp_path / "members/0/checkpoints/snapshot_002.pt"
    with pytest.raises(ConfigError, match="model 3 is not one of the 3 checkpoints"):
        checkpoint_path(tmp_path, new, 3)


def test_final_json_round_trips_the_list_and_refuses_bad_ones(tmp_path):
    listed = ["members/0/checkpoints/snapshot_002.pt", "members/1/checkpoints/snapshot_002.pt"]
    write_final_choice(tmp_path, choice_of([0, 1], listed))
    assert load_final_choice(tmp_path).checkpoints == listed
    # a record without the key (older runs) loads with an empty list: the best.pt rule
    data = json.loads((tmp_path / "final.json").read_text())
    del data["checkpoints"]
    (tmp_path / "final.json").write_text(json.dumps(data))
    assert load_final_choice(tmp_path).checkpoints == []
    for bad in (
        ["../../elsewhere.pt", listed[1]],  # outside the run's members
        "members/0/checkpoints/best.pt",  # not a list
        listed[:1],
    ):  # model 1 is served but the list has one entry
        (tmp_path / "final.json").write_text(json.dumps({**data, "checkpoints": bad}))
        with pytest.raises(ConfigError, match="not a valid vidcls final choice"):
            load_final_choice(tmp_path)


# ---------------------------------------------------------------- a whole run, CLI to predictor


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory, tiny_features) -> Path:
    """2 members x 6 epochs, cycles of 2 epochs (t0=2, t_mult=1): snapshots at epochs 2, 4, 6 each."""
    run = tmp_path_factory.mktemp("snap") / "run"
    tiny = ["--hidden-dim", "16", "--layers", "1", "--heads", "2", "--workers", "0", "--device", "cpu"]
    assert (
        main(
            [
                "train",
                str(tiny_features),
                str(run),
                "--epochs",
                "6",
                "--t0",
                "2",
                "--t-mult",
                "1",
                "--members",
                "2",
                "--snapshots",
                "--patience-cycles",
                "0",
                "--no-plots",
                *tiny,
            ]
        )
        == 0
    )
    return run


# written out by hand: member 0's three cycle ends, then member 1's
EXPECTED = [f"members/{i}/checkpoints/snapshot_{e:03d}.pt" for i in (0, 1) for e in (2, 4, 6)]


def hand_probs(run: Path, files: list, arrays: list, views: list) -> np.ndarray:
    """Mean over ``files`` and ``views`` of the softmax, each video alone (no padding), each
    checkpoint rebuilt from its own file."""
    out = np.zeros((len(arrays), 4))
    for f in files:
        ckpt = load_checkpoint(run / f)
        model = build_from_spec(ckpt["model"])
        model.load_state_dict(ckpt["model_state"])
        model.eval()
        with torch.inference_mode():
            for j, a in enumerate(arrays):
                x, n = torch.from_numpy(np.asarray(a, np.float32))[None], torch.tensor([len(a)])
                for mode in views:
                    xm, lm = tta_batch(x, n, mode)
                    out[j] += torch.softmax(model(xm, lm).double(), dim=1)[0].numpy()
    return out / (len(files) * len(views))


def test_snapshot_run_records_serves_and_rescores_its_checkpoints(snap_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(snap_run, run)
    final, summary = (
        json.loads((run / "final.json").read_text()),
        json.loads((run / "summary.json").read_text()),
    )
    assert final["checkpoints"] == EXPECTED and summary["final"]["checkpoints"] == EXPECTED
    rows = summary["members"]
    assert [r["member"] for r in rows] == list(range(6))
    assert [r["checkpoint"] for r in rows] == EXPECTED
    # training facts come from the seed member owning the checkpoint: 3 rows of seed 42, 3 of seed 43
    assert [r["seed"] for r in rows] == [42, 42, 42, 43, 43, 43]
    assert all(r["epochs_run"] == 6 and not r["stopped_early"] for r in rows)
    eval_test = json.loads((run / "eval_test.json").read_text())
    assert [r["checkpoint"] for r in eval_test["members"]] == EXPECTED

    # evaluate loads the recorded files, not today's listing: an extra snapshot of member 0 would
    # shift every index of member 1 by one
    shutil.copy(run / EXPECTED[2], run / "members/0/checkpoints/snapshot_008.pt")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 0
    ev = json.loads((run / "eval_test.json").read_text())
    assert [r["checkpoint"] for r in ev["members"]] == EXPECTED
    assert ev["final"]["metrics"]["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert ev["final"]["checkpoints"] == EXPECTED

    # the predictor serves the recorded indices: the mean softmax of those files, by hand
    cfg = load_config(run / "config.yaml")
    splits = load_splits(
        cfg.features_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        augment=False,
        max_frames=cfg.max_frames,
    )
    arrays = [splits.test.store.read(int(i)) for i in splits.test.indices[:8]]
    choice = load_final_choice(run)
    views = list(choice.tta_modes) if choice.tta_used else ["original"]
    got = vidcls.load(run, device="cpu").predict_proba(arrays, calibrated=False)
    np.testing.assert_allclose(
        got, hand_probs(run, [EXPECTED[m] for m in choice.members], arrays, views), atol=1e-5
    )
    # another served pair, across members: index 1 is member 0's epoch-4 snapshot, 5 member 1's epoch-6
    write_final_choice(run, dataclasses.replace(choice, source="ensemble", members=[1, 5], tta_used=False))
    got = vidcls.load(run, device="cpu").predict_proba(arrays, calibrated=False)
    want = hand_probs(
        run,
        ["members/0/checkpoints/snapshot_004.pt", "members/1/checkpoints/snapshot_006.pt"],
        arrays,
        ["original"],
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_snapshots_switched_at_resume_time(snap_run, tmp_path):
    """The snapshots are saved whatever the option: --resume --no-snapshots / --snapshots re-evaluates
    the finished run over each member's best.pt / its snapshots, without training again."""
    run = tmp_path / "run"
    shutil.copytree(snap_run, run)
    history = (run / "members/0/metrics.csv").read_text()
    assert (
        main(
            [
                "train",
                str(load_config(run / "config.yaml").features_dir),
                str(run),
                "--resume",
                "--no-snapshots",
            ]
        )
        == 0
    )
    best = ["members/0/checkpoints/best.pt", "members/1/checkpoints/best.pt"]
    assert json.loads((run / "final.json").read_text())["checkpoints"] == best
    summary = json.loads((run / "summary.json").read_text())
    assert [(r["member"], r["checkpoint"], r["seed"]) for r in summary["members"]] == [
        (0, best[0], 42),
        (1, best[1], 43),
    ]
    assert (run / "members/0/metrics.csv").read_text() == history  # no epoch was trained again
    assert (
        main(
            ["train", str(load_config(run / "config.yaml").features_dir), str(run), "--resume", "--snapshots"]
        )
        == 0
    )
    assert json.loads((run / "final.json").read_text())["checkpoints"] == EXPECTED
