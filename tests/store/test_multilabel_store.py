"""Multi-label feature stores (format version 2): label sets on disk and as read, the writer's checks,
resume and crash safety, corrupted label-set datasets, shard sets and ``vidcls merge``.

Every expectation is written out by hand from the videos the test writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from vidcls.errors import StoreError
from vidcls.features.sharding import merge
from vidcls.store import FeatureStore, FeatureWriter, MultiFileStore, open_splits, write_store
from vidcls.store.labels import LABEL_SEP, multi_hot, parse_label_set
from vidcls.store.reader import READ_VERSIONS
from vidcls.store.shards import shard_name, shard_report_name

CLASSES = ["bird", "cat", "dog", "eel"]
D = 4
# video id -> label set as given to the writer (unsorted on purpose); stored sorted
GIVEN = {"a": [2, 0], "b": 1, "c": (3, 1, 2), "d": np.array([3])}
SETS = {"a": [0, 2], "b": [1], "c": [1, 2, 3], "d": [3]}


def feats(i: int, frames: int = 2) -> np.ndarray:
    return np.full((frames, D), float(i), np.float32)


def ml_store(path, given=GIVEN, **kw):
    vids = [(vid, feats(i, 1 + i), label) for i, (vid, label) in enumerate(given.items())]
    return write_store(path, vids, CLASSES, D, {"backbone": "toy"}, multilabel=True, **kw)


@pytest.fixture
def ml(tmp_path):
    return ml_store(tmp_path / "train.h5")


def sets_of(store) -> list[list[int]]:
    return [s.tolist() for s in store.label_sets]


# ---- the format ------------------------------------------------------------------------------
def test_round_trip_and_on_disk_layout(ml):
    s = FeatureStore(ml)
    assert s.multilabel and s.format_version == 2 and READ_VERSIONS == (1, 2)
    assert s.video_ids == ["a", "b", "c", "d"]
    assert sets_of(s) == [[0, 2], [1], [1, 2, 3], [3]]
    assert all(x.dtype == np.int64 for x in s.label_sets)
    assert s.labels.tolist() == [0, 1, 1, 3]  # the smallest index of each set
    np.testing.assert_array_equal(s.read(2), feats(2, 3))
    with h5py.File(ml) as f:
        assert int(f.attrs["multilabel"]) == 1 and int(f.attrs["format_version"]) == 2
        assert f["label_sets"][:].tolist() == [0, 2, 1, 1, 2, 3, 3]
        assert f["label_set_offsets"][:].tolist() == [0, 2, 3, 6, 7]
        assert f["label_sets"].dtype == np.int64 and f["label_set_offsets"].dtype == np.int64


def test_single_label_store_has_one_label_sets(tmp_path):
    path = write_store(tmp_path / "s.h5", [("x", feats(0), 2), ("y", feats(1), 0)], CLASSES, D)
    s = FeatureStore(path)
    assert not s.multilabel and sets_of(s) == [[2], [0]] and s.labels.tolist() == [2, 0]
    with h5py.File(path) as f:
        assert int(f.attrs["multilabel"]) == 0 and "label_sets" not in f


def test_a_version_1_file_reads_as_single_label(tmp_path):
    path = write_store(tmp_path / "v1.h5", [("x", feats(0), 1), ("y", feats(1), 3)], CLASSES, D)
    with h5py.File(path, "r+") as f:  # what the previous release wrote: no multilabel attribute
        f.attrs["format_version"] = 1
        del f.attrs["multilabel"]
    s = FeatureStore(path)
    assert s.format_version == 1 and not s.multilabel and sets_of(s) == [[1], [3]]
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(
        StoreError, match=r"format_version 3 is not supported \(this vidcls reads versions 1 and 2"
    ):
        FeatureStore(path)


def test_multi_hot_by_hand():
    got = multi_hot([np.array([0, 2]), np.array([1]), np.array([1, 2, 3])], 5)
    assert got.dtype == np.uint8
    assert got.tolist() == [[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 1, 0]]
    assert multi_hot([], 3).shape == (0, 3)


def test_parse_label_set():
    assert LABEL_SEP == "|"
    assert parse_label_set(" outdoor | dog|music ", where="w") == ["outdoor", "dog", "music"]
    assert parse_label_set("cat", where="w") == ["cat"]
    for text, says in [
        ("", "empty label set"),
        ("  ", "empty label set"),
        ("a||b", "has an empty label"),
        ("a|", "has an empty label"),
        ("|", "has an empty label"),
        ("a|b| a", "lists 'a' more than once"),
    ]:
        with pytest.raises(StoreError) as err:
            parse_label_set(text, where="labels.csv line 5 (video 'x')")
        msg = str(err.value)
        assert msg.startswith("labels.csv line 5 (video 'x'): ") and says in msg and "\n" not in msg


# ---- the writer's checks ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "label, says",
    [
        ([], "empty label set"),
        ([1, 1], r"lists \[1\] more than once"),
        ([0, 1.5], "holds 1.5; labels must be int"),
        (1.5, "label must be an int class index or a list"),
        ([-1], r"label -1 outside \[0, 4\)"),
        ([0, 4], r"label 4 outside \[0, 4\)"),
        ([True], "holds True"),
        ("cat", "label must be an int class index or a list"),
        (np.array([0.0, 1.0]), "holds 0.0"),
    ],
)
def test_append_refuses_bad_label_sets_naming_the_video(tmp_path, label, says):
    with FeatureWriter(tmp_path / "t.h5", CLASSES, D, multilabel=True) as w:
        with pytest.raises(StoreError, match=says) as err:
            w.append("vid7", feats(0), label)
        assert "video 'vid7'" in str(err.value) and "\n" not in str(err.value)
        w.append("ok", feats(0), np.array([3, 0], np.int32))
    assert sets_of(FeatureStore(tmp_path / "t.h5")) == [[0, 3]]


def test_single_label_writer_still_takes_only_an_int(tmp_path):
    with FeatureWriter(tmp_path / "t.h5", CLASSES, D) as w:
        with pytest.raises(StoreError, match="label must be an int class index, got"):
            w.append("v", feats(0), [0, 1])


def test_a_separator_in_a_class_name(tmp_path):
    with pytest.raises(StoreError, match=r"^class name 'a\|b' contains '\|', the label-set separator"):
        FeatureWriter(tmp_path / "t.h5", ["a|b", "c"], D, multilabel=True)
    assert not (tmp_path / "t.h5").exists()
    path = write_store(tmp_path / "s.h5", [("v", feats(0), 0)], ["a|b", "c"], D)  # single-label: as before
    assert FeatureStore(path).class_names == ["a|b", "c"]


def test_ten_thousand_classes(tmp_path):
    names = [f"class_{i:05d}_with_a_longer_name" for i in range(10_000)]
    vids = [(f"v{i}", feats(i), [i, 9_999 - i]) for i in range(3)]
    path = write_store(tmp_path / "big.h5", vids, names, D, multilabel=True)
    with h5py.File(path) as f:
        assert len(f.attrs["class_names"]) > 64 * 1024  # beyond HDF5's compact attribute limit
    s = FeatureStore(path)
    assert s.class_names == names and sets_of(s) == [[0, 9_999], [1, 9_998], [2, 9_997]]


# ---- resume and crash safety -----------------------------------------------------------------
def test_resume_continues_and_refuses_the_other_kind(ml, tmp_path):
    with FeatureWriter(ml, CLASSES, D, {"backbone": "toy"}, multilabel=True) as w:
        assert len(w) == 4
        w.append("e", feats(9), [3, 2, 0])
    assert sets_of(FeatureStore(ml))[-2:] == [[3], [0, 2, 3]]
    with pytest.raises(
        StoreError, match=r"cannot resume .*train.h5: it is a multi-label store; pass multilabel=True"
    ):
        FeatureWriter(ml, CLASSES, D, {"backbone": "toy"})
    single = write_store(tmp_path / "s.h5", [("x", feats(0), 1)], CLASSES, D)
    with pytest.raises(StoreError, match="it is a single-label store; pass multilabel=False"):
        FeatureWriter(single, CLASSES, D, multilabel=True)


def test_an_uncommitted_label_set_tail_is_ignored_and_dropped(ml):
    with h5py.File(ml, "r+") as f:  # a writer killed after the label sets, before the commit
        for name, extra in (("label_sets", [0, 1, 2, 2]), ("label_set_offsets", [9, 11]), ("labels", [0])):
            n = f[name].shape[0]
            f[name].resize(n + len(extra), axis=0)
            f[name][n:] = extra
        f["video_ids"].resize(5, axis=0)
        f["video_ids"][4] = "ghost"
    s = FeatureStore(ml)
    assert len(s) == 4 and sets_of(s) == [[0, 2], [1], [1, 2, 3], [3]]
    with FeatureWriter(ml, CLASSES, D, {"backbone": "toy"}, multilabel=True):
        pass  # resuming alone cuts the tail
    with h5py.File(ml) as f:
        assert f["label_sets"].shape == (7,) and f["label_set_offsets"].shape == (5,)
    with FeatureWriter(ml, CLASSES, D, {"backbone": "toy"}, multilabel=True) as w:
        w.append("e", feats(9), [1, 3])
    with h5py.File(ml) as f:
        assert f["label_sets"][:].tolist() == [0, 2, 1, 1, 2, 3, 3, 1, 3]
        assert f["label_set_offsets"][:].tolist() == [0, 2, 3, 6, 7, 9]
    assert FeatureStore(ml).video_ids == ["a", "b", "c", "d", "e"]


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from vidcls.store import FeatureWriter
    with FeatureWriter(sys.argv[1], ["a", "b", "c"], 8, multilabel=True) as w:
        for i in range(10**6):
            w.append(f"v{i}", np.full((1 + i % 5, 8), i % 100, np.float16), [i % 3, (i + 1) % 3][: 1 + i % 2])
            print(i, flush=True)  # printed only after the video is committed
""")


def _expected_set(i: int) -> list[int]:
    return sorted([i % 3, (i + 1) % 3][: 1 + i % 2])


def test_sigkill_mid_write_leaves_a_readable_prefix_with_its_label_sets(tmp_path):
    script, path = tmp_path / "child.py", tmp_path / "train.h5"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        last = -1
        while last < 20:
            line = proc.stdout.readline()
            assert line, "writer subprocess exited early"
            last = int(line)
        time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    s = FeatureStore(path)
    n = len(s)
    assert n >= last + 1 and s.multilabel
    assert sets_of(s) == [_expected_set(i) for i in range(n)]
    assert s.video_ids == [f"v{i}" for i in range(n)]
    s.close()
    with FeatureWriter(path, ["a", "b", "c"], 8, multilabel=True) as w:  # recovery keeps the sets
        w.append("new", np.zeros((2, 8), np.float16), [2, 0])
    assert sets_of(FeatureStore(path)) == [_expected_set(i) for i in range(n)] + [[0, 2]]


# ---- corrupted label sets --------------------------------------------------------------------
def _set(name, value):
    def mutate(f):
        del f[name]
        f.create_dataset(name, data=np.asarray(value))

    return mutate


@pytest.mark.parametrize(
    "mutate, says",
    [
        (
            _set("label_set_offsets", [0, 2, 1, 6, 7]),
            r"'label_set_offsets' decrease \(corrupted\) for videos 'b'",
        ),
        (_set("label_set_offsets", [1, 2, 3, 6, 7]), "'label_set_offsets' must start at 0"),
        (
            _set("label_set_offsets", [0, 2, 3, 6, 99]),
            r"must start at 0 and end within 'label_sets' \(7 entries\)",
        ),
        (_set("label_set_offsets", [0, 2, 3]), "has 3 entries but 'offsets' describes 4 videos"),
        (_set("label_set_offsets", [0, 2, 2, 6, 7]), "empty label sets .* for videos 'b'"),
        (_set("label_set_offsets", [0.0, 2.0, 3.0, 6.0, 7.0]), "'label_set_offsets' are stored as float64"),
        (_set("label_sets", [0.0, 2.0, 1, 1, 2, 3, 3]), "'label_sets' are stored as float64"),
        (_set("label_sets", [0, 2, -1, 1, 2, 3, 3]), r"indices outside \[0, 4\) .* for videos 'b'"),
        (_set("label_sets", [0, 2, 1, 1, 2, 3, 4]), r"indices outside \[0, 4\) .* for videos 'd'"),
        (_set("label_sets", [0, 2, 1, 1, 3, 3, 3]), "list a class twice in one video's set for videos 'c'"),
        (_set("labels", [2, 1, 1, 3]), "'labels' is not the smallest index of the label set for videos 'a'"),
        (lambda f: f.__delitem__("label_sets"), "multilabel file without a 1-D dataset 'label_sets'"),
        (lambda f: f.attrs.__setitem__("multilabel", 2), "attribute 'multilabel' must be 0 or 1, got 2"),
    ],
)
def test_corrupted_label_sets_are_named(ml, mutate, says):
    with h5py.File(ml, "r+") as f:
        mutate(f)
    with pytest.raises(StoreError, match=says) as err:
        FeatureStore(ml)
    assert str(ml) in str(err.value) and "\n" not in str(err.value)


def test_unsorted_stored_sets_are_read_sorted(ml):
    with h5py.File(ml, "r+") as f:
        f["label_sets"][:] = [2, 0, 1, 3, 1, 2, 3]
    assert sets_of(FeatureStore(ml)) == [[0, 2], [1], [1, 2, 3], [3]]


# ---- several files: splits, shards, merge ----------------------------------------------------
def test_multifile_store_concatenates_label_sets(tmp_path):
    a = ml_store(tmp_path / "p0.h5")
    b = ml_store(tmp_path / "p1.h5", {"x": [3, 1], "y": 2})
    m = MultiFileStore([a, b])
    assert m.multilabel and sets_of(m) == [[0, 2], [1], [1, 2, 3], [3], [1, 3], [2]]
    assert m.labels.tolist() == [0, 1, 1, 3, 1, 2]
    single = write_store(tmp_path / "p2.h5", [("z", feats(0), 1)], CLASSES, D, {"backbone": "toy"})
    with pytest.raises(StoreError, match=r"p2.h5 has multilabel False but .*p0.h5 has True"):
        MultiFileStore([a, single])


def test_open_splits_refuses_splits_of_different_kinds(tmp_path):
    ml_store(tmp_path / "train.h5")
    write_store(tmp_path / "val.h5", [("z", feats(0), 1)], CLASSES, D, {"backbone": "toy"})
    with pytest.raises(StoreError) as err:
        open_splits(tmp_path)
    msg = str(err.value)
    assert "train.h5 is multi-label" in msg and "val.h5 is single-label" in msg and "\n" not in msg


def _write_shard_set(d, shards: list[dict]) -> None:
    """Shard files (multi-label) and the report fields that load_shard_set and merge read."""
    d.mkdir()
    for i, given in enumerate(shards):
        ml_store(d / shard_name("train", i, len(shards)), given)
        entries = [{"split": "train", "video_id": v, "path": v, "status": "ok"} for v in given]
        report = {
            "status": "complete",
            "started": "2024-01-01T00:00:00",
            "shard": {"index": i, "count": len(shards), "videos": 6, "scan": "s"},
            "totals": {"train": {"ok": len(given)}},
            "videos": entries,
        }
        (d / shard_report_name(i, len(shards))).write_text(json.dumps(report))


def test_merge_of_multilabel_shards_keeps_label_sets(tmp_path):
    d = tmp_path / "feats"
    _write_shard_set(d, [{"b": [1], "d": [3, 0]}, {"a": [2, 0], "c": [1, 2, 3]}])
    assert sets_of(open_splits(d)["train"]) == [[1], [0, 3], [0, 2], [1, 2, 3]]
    merge(d, log=lambda *a: None)
    s = FeatureStore(d / "train.h5")
    assert s.multilabel and s.video_ids == ["a", "b", "c", "d"]  # the reports' order: by path
    assert sets_of(s) == [[0, 2], [1], [1, 2, 3], [0, 3]] and s.labels.tolist() == [0, 1, 1, 0]
