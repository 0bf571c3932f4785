"""Finding the videos of a dataset folder: layouts, ids, splits, duplicates, symbolic links.

The files are a few bytes each (the scan never decodes them), so every test runs in milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidcls.errors import ConfigError, ExtractError
from vidcls.features.folders import parse_split, scan_videos


def _fake(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_split_layout_ids_and_duplicates(tmp_path):
    root = tmp_path / "videos"
    _fake(root / "train/cat/a.mp4", b"A")
    _fake(root / "train/cat/sub/b.mp4", b"B")
    _fake(root / "train/cat/c.mp4", b"C1")
    _fake(root / "train/cat/c.mkv", b"C2")
    _fake(root / "train/cat/a_copy.mp4", b"A")  # within one split: kept, reported
    _fake(root / "train/dog/d.mp4", b"D")
    _fake(root / "val/cat/a.mp4", b"X")  # the same id in another split is fine
    _fake(root / "test/dog/leak.mp4", b"D")  # a copy of train/dog/d.mp4: leakage, dropped
    _fake(root / "test/dog/.hidden.mp4", b"H")
    _fake(root / "train/dog/readme.txt", b"R")
    (root / "train/dog/gone.mp4").symlink_to(root / "nowhere.mp4")
    vs = scan_videos(root)
    assert vs.layout == "splits" and vs.class_names == ["cat", "dog"]
    ids = {(j.split, j.video_id) for j in vs.jobs}
    assert ids == {
        ("train", "cat/a"),
        ("train", "cat/sub/b"),
        ("train", "cat/c.mp4"),
        ("train", "cat/c.mkv"),
        ("train", "cat/a_copy"),
        ("train", "dog/d"),
        ("val", "cat/a"),
    }
    skipped = {j.rel: code for j, code, _ in vs.skipped}
    assert skipped == {
        "test/dog/leak.mp4": "duplicate",
        "train/dog/readme.txt": "not_video",
        "train/dog/gone.mp4": "unreadable",
    }
    groups = {d["kept"]: d for d in vs.duplicates}
    assert groups["train/dog/d.mp4"]["dropped"] == ["test/dog/leak.mp4"]
    assert groups["train/cat/a.mp4"]["also_kept"] == ["train/cat/a_copy.mp4"]
    _fake(tmp_path / "mixed/train/cat/a.mp4", b"A")
    _fake(tmp_path / "mixed/cat/a.mp4", b"A")
    with pytest.raises(ExtractError, match="mixes split folders"):
        scan_videos(tmp_path / "mixed")
    with pytest.raises(ExtractError, match="no video files"):
        scan_videos(_empty(tmp_path / "empty"))
    with pytest.raises(ExtractError, match="not a directory"):
        scan_videos(tmp_path / "missing")


def _empty(path: Path) -> Path:
    (path / "cls").mkdir(parents=True)
    return path


def test_class_layout_split_is_stratified_and_seeded(tmp_path):
    root = tmp_path / "videos"
    for c, n in (("a", 10), ("b", 20)):
        for i in range(n):
            _fake(root / c / f"{i:02d}.mp4", f"{c}{i}".encode())
    _fake(root / "b" / "copy_of_a0.mp4", b"a0")  # dropped before splitting
    vs = scan_videos(root, split="70,20,10", seed=1)
    count = {(j.class_name, j.split): 0 for j in vs.jobs}
    for j in vs.jobs:
        count[(j.class_name, j.split)] += 1
    assert count == {
        ("a", "train"): 7,
        ("a", "val"): 2,
        ("a", "test"): 1,
        ("b", "train"): 14,
        ("b", "val"): 4,
        ("b", "test"): 2,
    }
    assert [j.rel for j, code, _ in vs.skipped] == ["b/copy_of_a0.mp4"]
    again = scan_videos(root, split="70,20,10", seed=1)
    assert [(j.rel, j.split) for j in again.jobs] == [(j.rel, j.split) for j in vs.jobs]
    other = scan_videos(root, split="70,20,10", seed=2)
    assert {(j.rel, j.split) for j in other.jobs} != {(j.rel, j.split) for j in vs.jobs}
    assert parse_split("80,20") == (0.8, 0.2, 0.0)
    for bad in ("0,50,50", "a,b,c", "70,20,10,5", "70,-20,10"):
        with pytest.raises(ConfigError, match="--split"):
            parse_split(bad)


# ---------------------------------------------------------------- symbolic links


def _links(vs) -> dict:
    return {link["path"]: link["reason"] for link in vs.skipped_links}


@pytest.mark.timeout(30)
def test_loop_links_end_the_scan_and_count_each_video_once(tmp_path):
    root = tmp_path / "videos"
    _fake(root / "cats/a.mp4", b"A")
    _fake(root / "cats/sub/b.mp4", b"B")
    _fake(root / "dogs/d.mp4", b"D")
    (root / "cats/loop1").symlink_to(".")
    (root / "cats/loop2").symlink_to(".")
    (root / "cats/sub/back").symlink_to("..")
    vs = scan_videos(root, split="100,0,0")
    assert sorted(j.rel for j in vs.jobs) == ["cats/a.mp4", "cats/sub/b.mp4", "dogs/d.mp4"]
    assert vs.skipped == [] and vs.duplicates == []
    assert _links(vs) == {"cats/loop1": "link_loop", "cats/loop2": "link_loop", "cats/sub/back": "link_loop"}
    loop1 = next(link for link in vs.skipped_links if link["path"] == "cats/loop1")
    assert loop1["target"] == os.path.realpath(root / "cats") and "loop" in loop1["detail"]


def test_link_out_of_the_class_folder_is_not_followed(tmp_path):
    root = tmp_path / "videos"
    _fake(root / "cats/a.mp4", b"A")
    _fake(root / "dogs/d.mp4", b"D")
    _fake(root / "dogs/e.mp4", b"E")
    _fake(tmp_path / "elsewhere/x.mp4", b"X")
    (root / "cats/up").symlink_to("..")
    (root / "cats/more").symlink_to(tmp_path / "elsewhere")
    vs = scan_videos(root, split="100,0,0")
    assert {j.rel: j.class_name for j in vs.jobs} == {
        "cats/a.mp4": "cats",
        "dogs/d.mp4": "dogs",
        "dogs/e.mp4": "dogs",
    }
    assert vs.skipped == [] and vs.class_names == ["cats", "dogs"]
    assert _links(vs) == {"cats/up": "link_outside_class", "cats/more": "link_outside_class"}
    up = next(link for link in vs.skipped_links if link["path"] == "cats/up")
    assert up["target"] == os.path.realpath(root)
    assert "outside its class folder cats" in up["detail"] and "labelled cats" in up["detail"]


def test_link_to_a_video_file_is_read(tmp_path):
    root = tmp_path / "videos"
    _fake(root / "cats/a.mp4", b"A")
    _fake(tmp_path / "elsewhere/x.mp4", b"X")
    (root / "cats/x.mp4").symlink_to(tmp_path / "elsewhere/x.mp4")  # outside VIDEO_ROOT: fine
    (root / "cats/a_again.mp4").symlink_to("a.mp4")  # the same content: a duplicate, as a copy
    vs = scan_videos(root, split="100,0,0")
    assert {(j.video_id, j.path.name) for j in vs.jobs} == {("cats/a", "a.mp4"), ("cats/x", "x.mp4")}
    assert [(j.rel, code) for j, code, _ in vs.skipped] == [("cats/a_again.mp4", "duplicate")]
    assert vs.skipped_links == []


def test_folder_link_inside_the_class_folder_is_followed_once(tmp_path):
    root = tmp_path / "videos"
    _fake(root / "cats/indoor/c.mp4", b"C")
    _fake(root / "cats/.archive/old/o.mp4", b"O")  # a hidden folder, reached only by the links
    (root / "cats/alias").symlink_to("indoor")
    (root / "cats/old").symlink_to(".archive/old")
    (root / "cats/old_too").symlink_to(".archive/old")
    vs = scan_videos(root, split="100,0,0")
    assert {j.rel: j.video_id for j in vs.jobs} == {
        "cats/indoor/c.mp4": "cats/indoor/c",
        "cats/old/o.mp4": "cats/old/o",
    }
    assert vs.skipped == []
    assert _links(vs) == {"cats/alias": "link_seen", "cats/old_too": "link_seen"}
    details = {link["path"]: link["detail"] for link in vs.skipped_links}
    assert "already scanned as cats/indoor" in details["cats/alias"]
    assert "already scanned as cats/old" in details["cats/old_too"]


@pytest.mark.timeout(30)
def test_class_folder_links(tmp_path):
    root = tmp_path / "videos"
    _fake(root / "cats/a.mp4", b"A")
    _fake(tmp_path / "store/birds/b.mp4", b"B")
    (root / "birds").symlink_to(tmp_path / "store/birds")  # a class kept elsewhere: scanned
    (root / "all").symlink_to(".")  # holds VIDEO_ROOT: a loop
    (root / "kittens").symlink_to("cats")  # the same folder under a second class name
    vs = scan_videos(root, split="100,0,0")
    assert {j.rel: j.class_name for j in vs.jobs} == {"birds/b.mp4": "birds", "cats/a.mp4": "cats"}
    assert vs.class_names == ["birds", "cats"] and vs.skipped == []
    assert _links(vs) == {"all": "link_loop", "kittens": "link_seen"}


def test_folder_scanning_does_not_import_torch():
    code = "import vidcls.features.folders, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
