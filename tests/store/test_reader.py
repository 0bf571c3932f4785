"""Tests for vidcls.store: round trip, validation, writer resume/crash safety, splits."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from vidcls.errors import StoreError
from vidcls.store import (
    FORMAT_VERSION,
    FeatureStore,
    FeatureWriter,
    StoreLockedError,
    open_splits,
    stratified_split,
    write_store,
)
from vidcls.store import reader as store_mod

CLASSES = ["cat", "dog", "eel"]
D = 8


def make_video(i: int, d: int = D) -> np.ndarray:
    """Deterministic float16 video whose length (1..7 frames) and values depend on i."""
    rng = np.random.default_rng(1000 + i)
    return rng.standard_normal((1 + i % 7, d)).astype(np.float16)


def videos(n: int, d: int = D):
    return [(f"vid{i:03d}", make_video(i, d), i % len(CLASSES)) for i in range(n)]


@pytest.fixture
def good(tmp_path):
    """A valid 6-video store file."""
    return write_store(tmp_path / "train.h5", videos(6), CLASSES, D, {"backbone": "toy"})


# ---- round trip ------------------------------------------------------------------------------
def test_round_trip_exact(tmp_path):
    vids = videos(9)
    ts = [np.arange(len(v[1])) * 33.5 + i for i, v in enumerate(vids)]
    path = tmp_path / "train.h5"
    with FeatureWriter(path, CLASSES, D, {"backbone": "toy", "fps": 2}) as w:
        for (vid, x, y), t in zip(vids, ts):
            w.append(vid, x, y, timestamps_ms=t)
    s = FeatureStore(path)
    lengths = [len(v[1]) for v in vids]
    assert len(s) == 9
    assert s.video_ids == [v[0] for v in vids]
    assert s.labels.tolist() == [v[2] for v in vids]
    assert s.labels.dtype == np.int64
    assert s.offsets.tolist() == [0] + np.cumsum(lengths).tolist()
    assert s.lengths.tolist() == lengths
    assert s.class_names == CLASSES and s.feature_dim == D
    assert s.extractor == {"backbone": "toy", "fps": 2}
    assert s.dtype == np.float16 and s.format_version == FORMAT_VERSION
    for i, (_, x, _) in enumerate(vids):
        got = s.read(i)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, x)
        np.testing.assert_array_equal(s.timestamps(i), ts[i])
    np.testing.assert_array_equal(s.read(-1), vids[-1][1])
    with pytest.raises(IndexError):
        s.read(9)
    s.close()


def test_on_disk_layout(good):
    with h5py.File(good, "r") as f:
        assert f["features"].maxshape == (None, D)
        assert f["features"].chunks[1] == D and f["features"].compression is None
        assert f["offsets"].dtype == np.int64 and f["labels"].dtype == np.int64
        assert h5py.check_string_dtype(f["video_ids"].dtype).encoding == "utf-8"
        assert json.loads(f.attrs["class_names"]) == CLASSES
        assert int(f.attrs["feature_dim"]) == D and int(f.attrs["format_version"]) == FORMAT_VERSION == 2
        assert "timestamps_ms" not in f


def test_float32_and_no_timestamps(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, D)).astype(np.float32)
    path = write_store(tmp_path / "a.h5", [("only", x, 2)], CLASSES, D, dtype="float32")
    s = FeatureStore(path)
    assert s.dtype == np.float32 and s.extractor == {}
    np.testing.assert_array_equal(s.read(0), x)
    assert s.timestamps(0) is None


def test_pickle_drops_handle_and_reopens(good):
    s = FeatureStore(good)
    expected = s.read(3)  # opens the handle
    s2 = pickle.loads(pickle.dumps(s))
    assert s2._file is None
    np.testing.assert_array_equal(s2.read(3), expected)
    assert s2.video_ids == s.video_ids
    s.close(), s2.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_handle_not_shared_across_fork(good):
    s = FeatureStore(good)
    s.read(0)
    parent_file = s._file
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must reopen rather than use the inherited handle
        try:
            ok = np.array_equal(s.read(2), make_video(2)) and s._file is not parent_file
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    np.testing.assert_array_equal(s.read(2), make_video(2))


# ---- validation on open ----------------------------------------------------------------------
def test_missing_file_hint(tmp_path):
    with pytest.raises(StoreError, match="vidcls synth"):
        FeatureStore(tmp_path / "nope.h5")


def _truncate_half(path):
    os.truncate(path, os.path.getsize(path) // 2)


def _junk_head(path):
    with open(path, "r+b") as fh:
        fh.write(np.random.default_rng(0).integers(0, 256, 512, np.uint8).tobytes())


def _zero_bytes(path):
    os.truncate(path, 0)


def _text(path):
    path.write_text("video_id,label\nv1,cat\n")


def _junk_labels_header(path):
    # valid superblock and root group; the 'labels' object header is overwritten: h5py then
    # raises KeyError/OSError while the store is validated rather than when it is opened
    with h5py.File(path, "r") as f:
        addr = h5py.h5o.get_info(f["labels"].id).addr
    with open(path, "r+b") as fh:
        fh.seek(addr + 8)
        fh.write(b"\xff" * 16)


DAMAGE = [_truncate_half, _junk_head, _zero_bytes, _text, _junk_labels_header]


def _assert_damaged(err, path):
    assert type(err.value) is StoreError  # not the "locked" subclass
    assert str(path) in str(err.value)
    msg = str(err.value).replace(str(path), "<file>")  # the tmp path holds the test's name
    assert "<file> is damaged or is not a vidcls feature store" in msg
    assert "re-create it with `vidcls extract`, `vidcls import` or `vidcls synth`" in msg
    assert "locked" not in msg and "another process" not in msg


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda fn: fn.__name__)
def test_damaged_file_reported_as_damaged(good, damage):
    damage(good)
    with pytest.raises(StoreError) as e:
        FeatureStore(good)
    _assert_damaged(e, good)
    with pytest.raises(StoreError) as e:
        open_splits(good.parent)
    _assert_damaged(e, good)
    with pytest.raises(StoreError) as e:
        FeatureWriter(good, CLASSES, D, resume=True)
    _assert_damaged(e, good)
    assert "resume=False" in str(e.value)


def test_damaged_chunk_on_read_names_video(good, monkeypatch):
    s = FeatureStore(good)

    def broken(self, key):
        raise OSError("Can't synchronously read data (incorrect metadata checksum)")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", broken)
    with pytest.raises(StoreError, match=r"cannot read video 'vid002'.*damaged") as e:
        s.read(2)
    assert str(good) in str(e.value)


def test_hdf5_without_store_datasets(tmp_path):
    p = tmp_path / "train.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StoreError, match="dataset 'features' is missing") as e:
        FeatureStore(p)
    assert str(p) in str(e.value)
    with pytest.raises(StoreError, match="dataset 'features' is missing"):
        FeatureWriter(p, CLASSES, D, resume=True)


@pytest.mark.skipif(
    os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE", reason="HDF5 file locking is switched off"
)
def test_file_held_by_another_writer_is_locked(good):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, h5py\nf = h5py.File(sys.argv[1], 'r+')\nprint('open', flush=True)\nsys.stdin.read()",
            str(good),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError, match="locked by another process") as e:
            FeatureStore(good)
        assert str(good) in str(e.value) and "damaged" not in str(e.value)
        with pytest.raises(StoreLockedError, match="locked by another process"):
            FeatureWriter(good, CLASSES, D, resume=True)
    finally:
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
    assert len(FeatureStore(good)) == 6  # released: readable again


def _corrupt(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def _set(name, values):
    def fn(f):
        del f[name]
        f[name] = values

    return fn


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda f: f.__delitem__("labels"), "'labels' is missing"),
        (lambda f: f.attrs.__setitem__("format_version", 99), "format_version 99"),
        (lambda f: f.attrs.__setitem__("feature_dim", 5), "feature_dim=5"),
        (_set("offsets", np.array([1, 2, 5, 7, 10, 12, 17], np.int64)), "start at 0"),
        (_set("offsets", np.array([0, 1, 3, 6, 10, 15, 999], np.int64)), "only 21 frames"),
        (_set("labels", np.array([0, 1, 2, 0, 1], np.int64)), "'labels' has 5 entries"),
        (_set("video_ids", np.array(["a"] * 3, dtype=object)), "'video_ids' has 3 entries"),
    ],
)
def test_structural_errors(good, mutate, pattern):
    _corrupt(good, mutate)
    with pytest.raises(StoreError, match=pattern) as e:
        FeatureStore(good)
    assert str(good) in str(e.value)


def test_decreasing_offsets_named(good):
    # videos 0..5 have 1..6 frames: offsets 0,1,3,6,10,15,21; make vid002 end before it starts
    _corrupt(good, _set("offsets", np.array([0, 1, 3, 2, 10, 15, 21], np.int64)))
    with pytest.raises(StoreError, match="decrease at videos 'vid002'"):
        FeatureStore(good)


def test_zero_length_video_named(good):
    _corrupt(good, _set("offsets", np.array([0, 1, 3, 3, 10, 15, 21], np.int64)))
    with pytest.raises(StoreError, match="zero-length videos.*'vid002'"):
        FeatureStore(good)


def test_label_out_of_range_named(good):
    _corrupt(good, _set("labels", np.array([0, 1, 2, 3, 0, -1], np.int64)))
    with pytest.raises(StoreError, match=r"outside \[0, 3\).*'vid003', 'vid005'"):
        FeatureStore(good)


def test_duplicate_class_names_refused(good):
    _corrupt(good, lambda f: f.attrs.__setitem__("class_names", json.dumps(["cat", "dog", "cat", "dog"])))
    with pytest.raises(StoreError, match="'cat', 'dog' more than once") as e:
        FeatureStore(good)
    assert str(good) in str(e.value)


def test_float_labels_refused(good):
    # truncating to int64 would turn 1.7 into class 1 without a word
    _corrupt(good, _set("labels", np.array([0.0, 1.7, 2.0, 0.0, 1.0, 2.0])))
    with pytest.raises(StoreError, match="'labels' are stored as float64; labels must be integers"):
        FeatureStore(good)


def test_integer_features_refused(good):
    _corrupt(good, _set("features", np.ones((21, D), np.int32)))
    with pytest.raises(
        StoreError, match="'features' are stored as int32; features must be float16 or float32"
    ) as e:
        FeatureStore(good)
    assert str(good) in str(e.value)


def test_duplicate_ids_named(good):
    ids = np.array(["a", "b", "c", "b", "e", "a"], dtype=object)
    _corrupt(good, _set("video_ids", ids.astype(h5py.string_dtype())))
    with pytest.raises(StoreError, match="duplicate video ids 'a', 'b'"):
        FeatureStore(good)


def test_nan_named_across_scan_blocks(good, monkeypatch):
    # small scan blocks so bad frames fall in different blocks and must be mapped back via offsets
    monkeypatch.setattr(store_mod, "_SCAN_BLOCK", 4)

    def poison(f):
        f["features"][4, 0] = np.nan  # frame 4 -> vid002 (frames 3..5)
        f["features"][20, 3] = np.inf  # last frame -> vid005 (frames 15..20)

    _corrupt(good, poison)
    with pytest.raises(StoreError, match="NaN/Inf features in 2 videos: 'vid002', 'vid005'"):
        FeatureStore(good)
    assert len(FeatureStore(good, check_finite=False)) == 6


def test_uncommitted_tail_is_ignored(good):
    def add_tail(f):
        f["features"].resize(25, axis=0)
        f["features"][21:] = np.nan  # never scanned: beyond offsets[-1]
        f["labels"].resize(7, axis=0)
        f["video_ids"].resize(7, axis=0)

    _corrupt(good, add_tail)
    s = FeatureStore(good)
    assert len(s) == 6 and s.offsets[-1] == 21
    np.testing.assert_array_equal(s.read(5), make_video(5))


# ---- writer ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x, label, pattern",
    [
        (np.zeros((3, D + 1)), 0, r"shape \(T>=1, 8\)"),
        (np.zeros(D), 0, r"shape \(T>=1, 8\)"),
        (np.zeros((0, D)), 0, r"shape \(T>=1, 8\)"),
        (np.full((2, D), np.nan), 0, "NaN/Inf"),
        (np.full((2, D), 1e6, np.float32), 0, "float16 range"),
        (np.zeros((2, D)), 3, r"label 3 outside \[0, 3\)"),
        (np.zeros((2, D)), True, "int class index"),
        (np.zeros((2, D)), 1.0, "int class index"),
        (np.ones((2, D), np.int64), 0, "features are int64; features must be floating point"),
        (np.ones((2, D), np.uint8), 0, "features are uint8; features must be floating point"),
    ],
)
def test_append_validation_names_video(tmp_path, x, label, pattern):
    with FeatureWriter(tmp_path / "w.h5", CLASSES, D) as w:
        with pytest.raises(StoreError, match=pattern) as e:
            w.append("bad_one", x, label)
        assert "'bad_one'" in str(e.value)
        assert len(w) == 0


def test_writer_refuses_duplicate_class_names(tmp_path):
    with pytest.raises(StoreError, match=r"duplicates \['cat'\]"):
        FeatureWriter(tmp_path / "w.h5", ["cat", "dog", "cat"], D)
    assert not (tmp_path / "w.h5").exists()


def test_timestamps_all_or_none(tmp_path):
    with FeatureWriter(tmp_path / "w.h5", CLASSES, D) as w:
        w.append("a", make_video(1), 0, timestamps_ms=np.arange(2.0))
        with pytest.raises(StoreError, match="timestamps"):
            w.append("b", make_video(1), 0)
        with pytest.raises(StoreError, match="does not match 2 frames"):
            w.append("c", make_video(1), 0, timestamps_ms=np.arange(3.0))


def test_duplicate_rejected_and_resume_continues(tmp_path):
    path = tmp_path / "w.h5"
    vids = videos(8)
    with FeatureWriter(path, CLASSES, D) as w:
        for v in vids[:4]:
            w.append(*v)
        with pytest.raises(StoreError, match="duplicate video id"):
            w.append(vids[1][0], vids[1][1], 0)
    with FeatureWriter(path, CLASSES, D, resume=True) as w:
        assert w.video_ids == {v[0] for v in vids[:4]}
        with pytest.raises(StoreError, match="duplicate"):
            w.append(*vids[2])
        for v in vids[4:]:
            w.append(*v)
    s = FeatureStore(path)
    assert s.video_ids == [v[0] for v in vids]
    for i, v in enumerate(vids):
        np.testing.assert_array_equal(s.read(i), v[1])


def test_resume_drops_uncommitted_tail(tmp_path):
    path = write_store(tmp_path / "w.h5", videos(3), CLASSES, D)
    _corrupt(
        path,
        lambda f: (
            f["features"].resize(f["features"].shape[0] + 5, axis=0),
            f["labels"].resize(4, axis=0),
            f["video_ids"].resize(4, axis=0),
        ),
    )
    FeatureWriter(path, CLASSES, D).close()  # reopening alone drops the tail
    with h5py.File(path, "r") as f:
        assert f["features"].shape[0] == 6 and f["video_ids"].shape[0] == 3
    _corrupt(
        path,
        lambda f: (
            f["features"].resize(f["features"].shape[0] + 5, axis=0),
            f["labels"].resize(4, axis=0),
            f["video_ids"].resize(4, axis=0),
        ),
    )
    extra = make_video(40)
    with FeatureWriter(path, CLASSES, D) as w:
        w.append("new", extra, 1)
    s = FeatureStore(path)
    assert s.video_ids == ["vid000", "vid001", "vid002", "new"]
    np.testing.assert_array_equal(s.read(3), extra)
    with h5py.File(path, "r") as f:  # the tail is gone, not just hidden
        assert f["features"].shape[0] == s.offsets[-1] and f["labels"].shape[0] == 4


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(class_names=["cat", "dog"]), "class_names"),
        (dict(feature_dim=D + 1), "feature_dim"),
        (dict(dtype="float32"), "float16"),
    ],
)
def test_resume_mismatch(good, kwargs, pattern):
    args = dict(class_names=CLASSES, feature_dim=D) | kwargs
    with pytest.raises(StoreError, match=pattern) as e:
        FeatureWriter(good, **args)
    assert "resume" in str(e.value)
    FeatureWriter(good, **args, resume=False).close()  # overwriting is allowed
    assert len(FeatureStore(good)) == 0


def test_flush_every_commits_in_batches(tmp_path):
    path = tmp_path / "w.h5"
    w = FeatureWriter(path, CLASSES, D, flush_every=3)
    for v in videos(2):
        w.append(*v)
    assert len(FeatureStore(path)) == 0  # readable while open; nothing committed yet
    w.flush()
    assert FeatureStore(path).video_ids == ["vid000", "vid001"]
    w.close()


def test_write_store_failure_leaves_target(good, tmp_path):
    bad = videos(3) + [("nan", np.full((2, D), np.nan), 0)]
    with pytest.raises(StoreError, match="'nan'"):
        write_store(good, bad, CLASSES, D)
    assert len(FeatureStore(good)) == 6  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5"]  # no temp left


CHILD = textwrap.dedent("""
    import sys, numpy as np
    from vidcls.store import FeatureWriter
    def video(i):
        return np.random.default_rng(i).standard_normal((1 + i % 13, 16)).astype(np.float16)
    with FeatureWriter(sys.argv[1], ["a", "b"], 16, {"k": 1}) as w:
        for i in range(10**6):
            w.append(f"v{i}", video(i), i % 2, timestamps_ms=np.arange(1 + i % 13) * 40.0)
            print(i, flush=True)  # printed only after the video is committed
""")


def _child_video(i):
    return np.random.default_rng(i).standard_normal((1 + i % 13, 16)).astype(np.float16)


def _check_prefix(path, at_least):
    s = FeatureStore(path)
    n = len(s)
    assert n >= at_least
    assert s.video_ids == [f"v{i}" for i in range(n)]
    assert s.labels.tolist() == [i % 2 for i in range(n)]
    for i in range(n):
        np.testing.assert_array_equal(s.read(i), _child_video(i))
        np.testing.assert_array_equal(s.timestamps(i), np.arange(1 + i % 13) * 40.0)
    s.close()
    return n


def test_sigkill_mid_append_leaves_readable_prefix(tmp_path):
    script, path = tmp_path / "child.py", tmp_path / "train.h5"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        last = -1
        while last < 30:  # let it commit a few dozen videos, then kill it mid-loop
            line = proc.stdout.readline()
            assert line, "writer subprocess exited early"
            last = int(line)
        # a live writer's file must not be "recovered" (rewritten) by a second writer
        with pytest.raises(StoreError, match="being written by another process"):
            FeatureWriter(path, ["a", "b"], 16, {"k": 1}, resume=True)
        time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    n = _check_prefix(path, at_least=last + 1)
    with FeatureWriter(path, ["a", "b"], 16, {"k": 1}, resume=True) as w:
        assert len(w.video_ids) == n
        for i in range(n, n + 5):
            w.append(f"v{i}", _child_video(i), i % 2, timestamps_ms=np.arange(1 + i % 13) * 40.0)
    assert _check_prefix(path, at_least=n + 5) == n + 5


# ---- splits ----------------------------------------------------------------------------------
def test_open_splits(tmp_path):
    write_store(tmp_path / "train.h5", videos(5), CLASSES, D)
    write_store(tmp_path / "test.h5", videos(2), CLASSES, D)
    stores = open_splits(tmp_path)
    assert list(stores) == ["train", "test"]
    assert len(stores["train"]) == 5 and len(stores["test"]) == 2
    with pytest.raises(StoreError, match=r"\['val.h5'\] missing.*\['test.h5', 'train.h5'\]"):
        open_splits(tmp_path, require=("train", "val"))
    with pytest.raises(StoreError, match="does not exist"):
        open_splits(tmp_path / "nothing")


def test_open_splits_class_mismatch(tmp_path):
    write_store(tmp_path / "train.h5", videos(3), CLASSES, D)
    write_store(tmp_path / "val.h5", videos(3), ["cat", "dog", "fox"], D)
    with pytest.raises(StoreError, match="class_names differ") as e:
        open_splits(tmp_path)
    msg = str(e.value)
    assert "'eel'" in msg and "'fox'" in msg and "train.h5" in msg and "val.h5" in msg


def test_open_splits_dim_mismatch_and_empty(tmp_path):
    write_store(tmp_path / "train.h5", videos(3), CLASSES, D)
    write_store(tmp_path / "val.h5", videos(3, d=4), CLASSES, 4)
    with pytest.raises(StoreError, match="feature_dim differs.*8.*val.h5 has 4"):
        open_splits(tmp_path)
    write_store(tmp_path / "val.h5", [], CLASSES, D)
    with pytest.raises(StoreError, match="val.h5 holds 0 videos"):
        open_splits(tmp_path)


def test_stratified_split_properties():
    # class sizes: 0 -> 10, 1 -> 1, 2 -> 2, 3 -> 5
    labels = np.array([0] * 10 + [1] + [2] * 2 + [3] * 5)
    labels = labels[np.random.default_rng(3).permutation(len(labels))]
    tr, va = stratified_split(labels, 0.3, seed=7)
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
    # expected val counts: round(3.0)=3, single example stays in train, max(round(.6),1)=1,
    # round(1.5)=2
    assert {c: int((labels[va] == c).sum()) for c in range(4)} == {0: 3, 1: 0, 2: 1, 3: 2}
    assert set(labels[tr].tolist()) == {0, 1, 2, 3}
    tr2, va2 = stratified_split(labels, 0.3, seed=7)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    others = [stratified_split(labels, 0.3, seed=s)[1].tolist() for s in range(8, 14)]
    assert any(o != va.tolist() for o in others)


def test_stratified_split_keeps_one_in_train():
    labels = np.array([0, 0, 1, 1, 1])
    tr, va = stratified_split(labels, 0.9, seed=0)
    assert sorted(labels[tr].tolist()) == [0, 1] and len(va) == 3
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(labels, 1.0, seed=0)
