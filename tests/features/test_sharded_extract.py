"""Sharded extraction (``--shard I/K``, torchrun) and ``vidcls merge`` against a single-process run.

The reference is an ordinary extraction of the same folder: two shards run one after the other
(and, once, two torchrun ranks at the same time) and merged must give the same files, in the same
order, with bit-identical features, and the same report up to timings.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import videos as V
from vidcls.cli import main
from vidcls.data.dataset import load_splits
from vidcls.errors import ConfigError, StoreError, VidclsError
from vidcls.features.extract import _rank_device, extract, merge, take_share
from vidcls.features.folders import scan_videos
from vidcls.store import FeatureStore, MultiFileStore, open_splits
from vidcls.store.shards import shard_report_name
from vidcls.utils.dist import Dist

SMALL = dict(
    backbone="resnet18",
    weights="none",
    image_size="32",
    batch_size=4,
    device="cpu",
    frames=3,
    split="50,25,25",
    seed=1,
)
# image_size as text, as the CLI passes it: the reports record the options as given
SMALL_CLI = (
    "--backbone resnet18 --weights none --image-size 32 --batch-size 4 --device cpu --frames 3 "
    "--split 50,25,25 --seed 1"
).split()
TIMINGS = ("decode_s", "cnn_s")  # per-video seconds: the only entry fields that may differ
quiet = dict(progress=False, log=lambda *a: None)


def make_videos(root: Path, per_class: int = 5) -> Path:
    """Two classes of clips of different lengths (so different sizes), plus two broken files."""
    for c, color in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        for i in range(per_class):
            V.write_clip(root / c / f"v{i:02d}.mp4", V.shapes_frames(10 + 4 * i, color=color, seed=i))
    V.corrupt(root / "red" / "corrupt.mp4")  # fails in decoding: reported by the shard that owns it
    (root / "blue" / "empty.mp4").write_bytes(b"")  # refused by the scan: reported by shard 0
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A single-process extraction and the two shards of a sharded one (not merged), read-only."""
    base = tmp_path_factory.mktemp("sharded")
    root = make_videos(base / "videos")
    single = extract(root, base / "single", **SMALL, decode_workers=0, **quiet)
    shards = [
        extract(root, base / "shards", **SMALL, decode_workers=0, shard=f"{i}/2", **quiet) for i in range(2)
    ]
    return {
        "root": root,
        "single_dir": base / "single",
        "shard_dir": base / "shards",
        "single": single,
        "shards": shards,
    }


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def stripped(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMINGS} for e in entries]


def assert_same_store(a: Path, b: Path) -> None:
    """Same ids in the same order, equal labels, bit-equal features and timestamps, same classes."""
    sa, sb = FeatureStore(a), FeatureStore(b)
    assert sa.video_ids == sb.video_ids and len(sa) > 0
    np.testing.assert_array_equal(sa.labels, sb.labels)
    assert sa.class_names == sb.class_names and sa.dtype == sb.dtype
    for i in range(len(sa)):
        assert np.array_equal(sa.read(i), sb.read(i)), sa.video_ids[i]
        assert np.array_equal(sa.timestamps(i), sb.timestamps(i))
    sa.close()
    sb.close()


def assert_equals_single(merged_dir: Path, merged: dict, runs: dict) -> None:
    single = runs["single"]
    for split in ("train", "val", "test"):
        assert (merged_dir / f"{split}.h5").exists() == (runs["single_dir"] / f"{split}.h5").exists()
        if (merged_dir / f"{split}.h5").exists():
            assert_same_store(runs["single_dir"] / f"{split}.h5", merged_dir / f"{split}.h5")
    assert stripped(merged["videos"]) == stripped(single["videos"])
    assert (merged["totals"], merged["skip_reasons"], merged["status"]) == (
        single["totals"],
        single["skip_reasons"],
        "complete",
    )
    assert (merged["options"], merged["class_names"], merged["layout"]) == (
        single["options"],
        single["class_names"],
        single["layout"],
    )
    assert json.loads((merged_dir / "extract_report.json").read_text())["videos"] == merged["videos"]


# ---------------------------------------------------------------- shares


def test_greedy_shares_by_size_on_hand_made_files(tmp_path):
    # sizes in path order (a..f): 5, 9, 2, 7, 3, 3 kB; greedy, largest first, to the lighter shard:
    # b9->0 [9,0]; d7->1 [9,7]; a5->1 [9,12]; e3->0 [12,12]; f3 tie->0 [15,12]; c2->1 [15,14]
    sizes = dict(a=5, b=9, c=2, d=7, e=3, f=3)
    rng = np.random.default_rng(0)
    for name, kb in sizes.items():
        (tmp_path / "v" / "cls").mkdir(parents=True, exist_ok=True)
        (tmp_path / "v" / "cls" / f"{name}.mp4").write_bytes(rng.bytes(kb * 1000))  # distinct contents
    videos = scan_videos(tmp_path / "v", split="100,0,0")
    shares = [take_share(videos, i, 2) for i in range(2)]
    names = [sorted(j.video_id for j in vs.jobs) for vs, _ in shares]
    assert names == [["cls/b", "cls/e", "cls/f"], ["cls/a", "cls/c", "cls/d"]]
    assert [sum(j.size for j in vs.jobs) for vs, _ in shares] == [15000, 14000]
    assert [r["index"] for _, r in shares] == [0, 1] and shares[0][1]["scan"] == shares[1][1]["scan"]
    # the same scan always deals the same shares (a re-run shard resumes its own)
    assert [j.video_id for j in take_share(scan_videos(tmp_path / "v", split="100,0,0"), 1, 2)[0].jobs] == [
        j.video_id for j in shares[1][0].jobs
    ]


def test_shards_are_disjoint_and_cover_every_video(runs):
    ids = [{(e["split"], e["video_id"]) for e in r["videos"]} for r in runs["shards"]]
    assert not ids[0] & ids[1] and ids[0] and ids[1]
    assert ids[0] | ids[1] == {(e["split"], e["video_id"]) for e in runs["single"]["videos"]}
    # the empty file, refused before decoding, is listed once: by shard 0
    assert [r["totals"]["all"]["skipped"] for r in runs["shards"]][0] >= 1
    assert all(e["video_id"] != "blue/empty" for e in runs["shards"][1]["videos"])
    assert [r["shard"]["index"] for r in runs["shards"]] == [0, 1]
    for r in runs["shards"]:
        assert r["status"] == "complete" and r["shard"]["count"] == 2
    names = sorted(p.name for p in runs["shard_dir"].iterdir())
    assert shard_report_name(0, 2) in names and shard_report_name(1, 2) in names
    assert not any(n in names for n in ("train.h5", "val.h5", "test.h5", "extract_report.json"))


# ---------------------------------------------------------------- reading and merging


def test_shards_read_as_one_data_set_and_train(runs):
    stores = open_splits(runs["shard_dir"], require=("train", "val", "test"))
    single = open_splits(runs["single_dir"], require=("train", "val", "test"))
    for split, s in stores.items():
        assert isinstance(s, MultiFileStore)
        assert sorted(s.video_ids) == sorted(single[split].video_ids)  # shard order, same videos
        for i, vid in enumerate(s.video_ids):
            j = single[split].video_ids.index(vid)
            assert np.array_equal(s.read(i), single[split].read(j))
            assert s.labels[i] == single[split].labels[j]
    splits = load_splits(runs["shard_dir"], augment=False)
    assert len(splits.train) == len(single["train"]) and splits.val_source == "val-*-of-00002.h5"
    assert splits.class_names == ["blue", "red"] and splits.feature_dim == 512


def test_merge_equals_a_single_process_extraction(runs, tmp_path):
    d = copy_of(runs["shard_dir"], tmp_path / "feats")
    merged = merge(d, log=lambda *a: None)
    assert_equals_single(d, merged, runs)
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in runs["single_dir"].iterdir())
    assert merged["run"]["new_videos"] == sum(r["run"]["new_videos"] for r in runs["shards"])


def test_merge_keep_shards_and_a_rerun_after_a_kill_while_removing(runs, tmp_path):
    d = copy_of(runs["shard_dir"], tmp_path / "feats")
    shards = sorted(p.name for p in d.iterdir())
    merge(d, keep_shards=True, log=lambda *a: None)
    assert set(shards) < {p.name for p in d.iterdir()}
    with pytest.raises(StoreError, match="holds both train.h5 and its shards"):
        open_splits(d)  # a split is one or the other
    (d / "train-00000-of-00002.h5").unlink()  # as if killed while removing the shards
    merged = merge(d, log=lambda *a: None)  # finishes the removal
    assert not any("-of-" in p.name for p in d.iterdir())
    assert_equals_single(d, merged, runs)


def test_merge_cli_refuses_an_incomplete_set(runs, tmp_path, capsys):
    d = copy_of(runs["shard_dir"], tmp_path / "feats")
    (d / shard_report_name(1, 2)).unlink()
    for p in d.glob("*-00001-of-00002.h5"):
        p.unlink()
    before = sorted(p.name for p in d.iterdir())
    assert main(["merge", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidcls merge: error: ") and err.count("\n") == 1
    assert "extract_report-00001-of-00002.json" in err and "--shard 1/2" in err
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written, nothing removed
    with pytest.raises(StoreError, match="shard 1 of 2 is missing"):
        open_splits(d)  # nor does training start on half the data


def test_single_files_and_shards_do_not_mix(runs, tmp_path):
    d = copy_of(runs["shard_dir"], tmp_path / "feats")
    with pytest.raises(VidclsError, match="vidcls merge"):  # a whole run into a sharded dir
        extract(runs["root"], d, **SMALL, decode_workers=0, **quiet)
    with pytest.raises(VidclsError, match="run of 2, not 3"):
        extract(runs["root"], d, **SMALL, decode_workers=0, shard="0/3", **quiet)
    with pytest.raises(VidclsError, match="single-file store"):
        extract(runs["root"], runs["single_dir"], **SMALL, decode_workers=0, shard="0/2", **quiet)


# ---------------------------------------------------------------- torchrun


def test_torchrun_environment_picks_the_shard(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    report = extract(runs["root"], tmp_path / "feats", **SMALL, decode_workers=0, **quiet)
    assert report["shard"] == runs["shards"][1]["shard"]
    assert stripped(report["videos"]) == stripped(runs["shards"][1]["videos"])
    for p in runs["shard_dir"].glob("*-00001-of-00002.h5"):
        assert_same_store(p, tmp_path / "feats" / p.name)
    assert not list((tmp_path / "feats").glob("*-00000-of-00002.*"))
    again = extract(
        runs["root"], tmp_path / "feats", **SMALL, decode_workers=0, shard="1/2", **quiet
    )  # agrees
    assert again["run"]["new_videos"] == 0 and again["totals"] == report["totals"]  # resumed: all stored
    with pytest.raises(ConfigError, match="contradicts torchrun's RANK=1"):
        extract(runs["root"], tmp_path / "feats", **SMALL, decode_workers=0, shard="0/2", **quiet)


def test_torchrun_ranks_take_their_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _rank_device("auto", Dist(3, 4, 3)) == "cuda:1"  # LOCAL_RANK 3 on a 2-GPU machine
    assert _rank_device("cuda", Dist(2, 4, 0)) == "cuda:0"
    assert _rank_device("cpu", Dist(3, 4, 3)) == "cpu" and _rank_device("cuda:1", Dist(0, 4, 0)) == "cuda:1"
    assert _rank_device("auto", Dist()) == "auto"  # no torchrun: the device as given


@pytest.mark.parametrize("bad", ["2/2", "1", "-1/2", "a/b", "1/2/3"])
def test_bad_shard_is_a_one_line_error(runs, tmp_path, capsys, bad):
    assert main(["extract", str(runs["root"]), str(tmp_path / "f"), *SMALL_CLI, f"--shard={bad}"]) == 2
    err = capsys.readouterr().err
    assert "--shard must be I/K" in err and err.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_torchrun_then_merge_equals_single_process(runs, tmp_path):
    d = tmp_path / "feats"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        "-m",
        "vidcls",
        "extract",
        str(runs["root"]),
        str(d),
        *SMALL_CLI,
        "--decode-workers",
        "0",
    ]
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the CNN's threads as in this process
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (
        proc.stdout.count(
            f"complete; training reads the shards once all 2 are, or merge them: vidcls merge {d}"
        )
        == 2
    )
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in runs["shard_dir"].iterdir())
    assert main(["merge", str(d)]) == 0
    assert_equals_single(d, json.loads((d / "extract_report.json").read_text()), runs)
