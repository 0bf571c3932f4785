"""Tests for vidcls.store.importers: padded HDF5 and per-video .npy imports, store_info."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from vidcls.errors import StoreError
from vidcls.store import FeatureStore, open_splits, write_store
from vidcls.store.importers import import_npy, import_padded_h5
from vidcls.store.info import store_info

D = 6


def _padded_file(path, n=11, max_frames=9, names=None, nframes=None):
    """Write a gzip'd padded file; return (per-video unpadded float16 arrays, labels)."""
    rng = np.random.default_rng(0)
    nframes = rng.integers(1, max_frames + 1, n) if nframes is None else np.asarray(nframes)
    feats = np.full((n, max_frames, D), 999.0, np.float32)  # padding must never be copied
    rows = []
    for i in range(n):
        rows.append(rng.standard_normal((min(int(nframes[i]), max_frames), D)).astype(np.float16))
        feats[i, : len(rows[i])] = rows[i]
    labels = np.arange(n) % 3
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats, compression="gzip", chunks=(1, max_frames, D))
        f["labels"] = labels
        f["num_frames"] = nframes
        f.attrs["category_mapping"] = json.dumps({"walk": 1, "run": 0, "jump": 2})
        if names is not None:
            f.create_dataset("video_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
    return rows, labels


def test_import_padded_streams_and_unpads(tmp_path, monkeypatch):
    src, out = tmp_path / "old.h5", tmp_path / "feats" / "train.h5"
    rows, labels = _padded_file(src)
    reads = []
    orig = h5py.Dataset.__getitem__

    def spy(self, key):  # record how many rows every read of the source's features returns
        out = orig(self, key)
        if self.name == "/features" and self.file.filename == str(src):
            reads.append(out.shape[0])
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    assert import_padded_h5(src, out, block=4) == out
    monkeypatch.undo()
    assert reads and max(reads) <= 4  # never more than `block` rows at once
    s = FeatureStore(out)
    assert s.class_names == ["run", "walk", "jump"]  # ordered by index, not by name
    assert s.video_ids == [f"video_{i:06d}" for i in range(11)]
    assert s.labels.tolist() == labels.tolist()
    assert s.lengths.tolist() == [len(r) for r in rows]
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(s.read(i), r)
    assert [p.name for p in out.parent.iterdir()] == ["train.h5"]  # temp file renamed away


def test_import_padded_uses_names_and_float32(tmp_path):
    src = tmp_path / "old.h5"
    names = [f"clip-{c}" for c in "abcde"]
    rows, _ = _padded_file(src, n=5, names=names)
    s = FeatureStore(import_padded_h5(src, tmp_path / "o.h5", dtype="float32", block=2))
    assert s.video_ids == names and s.dtype == np.float32
    np.testing.assert_array_equal(s.read(4), rows[4].astype(np.float32))


@pytest.mark.parametrize("bad_len, pattern", [(0, r"row 2 \(0\)"), (10, r"row 2 \(10\)")])
def test_import_padded_bad_num_frames(tmp_path, bad_len, pattern):
    src, out = tmp_path / "old.h5", tmp_path / "o.h5"
    _padded_file(src, n=4, nframes=[3, 3, bad_len, 3])
    with pytest.raises(StoreError, match=pattern) as e:
        import_padded_h5(src, out)
    assert "max_frames" in str(e.value) and not out.exists()


def test_import_padded_failure_keeps_old_output(tmp_path):
    src, out = tmp_path / "old.h5", tmp_path / "feats" / "train.h5"
    _padded_file(src, n=5)
    import_padded_h5(src, out)
    before = out.read_bytes()
    with h5py.File(src, "r+") as f:
        f["features"][3, 0, 0] = np.nan  # row 3 = video_000003
    with pytest.raises(StoreError, match=r"'video_000003'.*NaN/Inf.*is unchanged") as e:
        import_padded_h5(src, out)
    assert str(src) in str(e.value)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.h5"]  # no temp file left


def test_import_padded_missing_mapping(tmp_path):
    src = tmp_path / "old.h5"
    _padded_file(src, n=2)
    with h5py.File(src, "r+") as f:
        del f.attrs["category_mapping"]
    with pytest.raises(StoreError, match="category_mapping"):
        import_padded_h5(src, tmp_path / "o.h5")


# ---- npy -------------------------------------------------------------------------------------
def _npy_dir(tmp_path, ids, d=D):
    npy = tmp_path / "npy"
    npy.mkdir()
    arrays = {}
    for i, vid in enumerate(ids):
        arrays[vid] = np.random.default_rng(i).standard_normal((2 + i, d)).astype(np.float32)
        np.save(npy / f"{vid}.npy", arrays[vid])
    return npy, arrays


def test_import_npy_without_split(tmp_path):
    npy, arrays = _npy_dir(tmp_path, ["v1", "v2", "v3"])
    csv = tmp_path / "labels.csv"
    csv.write_text("video_id,label\nv1,zebra\nv2,ant\nv3,zebra\n")
    out = import_npy(npy, csv, tmp_path / "out")
    assert out == {"train": tmp_path / "out" / "train.h5"}
    s = FeatureStore(out["train"])
    assert s.class_names == ["ant", "zebra"]
    assert s.video_ids == ["v1", "v2", "v3"] and s.labels.tolist() == [1, 0, 1]
    for i, vid in enumerate(s.video_ids):
        np.testing.assert_array_equal(s.read(i), arrays[vid].astype(np.float16))
    (tmp_path / "out" / "val.h5").write_bytes(b"stale")  # not produced by this CSV
    with pytest.raises(StoreError, match=r"already holds \['val.h5'\]"):
        import_npy(npy, csv, tmp_path / "out")


def test_import_npy_with_split(tmp_path):
    ids = ["a", "b", "c", "d", "e"]
    npy, arrays = _npy_dir(tmp_path, ids)
    csv = tmp_path / "labels.csv"
    csv.write_text("video_id,label,split\na,x,train\nb,y,val\nc,z,train\nd,x,test\ne,y,train\n")
    out = import_npy(npy, csv, tmp_path / "out", dtype="float32")
    assert sorted(out) == ["test", "train", "val"]
    stores = open_splits(tmp_path / "out", require=("train", "val", "test"))
    assert stores["train"].video_ids == ["a", "c", "e"]
    assert stores["val"].video_ids == ["b"] and stores["test"].video_ids == ["d"]
    for s in stores.values():  # every split carries the full class list, even if it lacks some
        assert s.class_names == ["x", "y", "z"]
    assert stores["train"].labels.tolist() == [0, 2, 1]
    np.testing.assert_array_equal(stores["test"].read(0), arrays["d"])


def _split_csv(tmp_path, ids_splits, name="labels.csv"):
    csv = tmp_path / name
    csv.write_text(
        "video_id,label,split\n" + "".join(f"{v},c{i % 2},{sp}\n" for i, (v, sp) in enumerate(ids_splits))
    )
    return csv


def test_import_npy_failure_leaves_every_split_untouched(tmp_path):
    npy, _ = _npy_dir(tmp_path, ["a", "b", "c", "d"])
    csv = _split_csv(tmp_path, [("a", "train"), ("b", "val"), ("c", "test"), ("d", "train")])
    out = tmp_path / "out"
    import_npy(npy, csv, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["test.h5", "train.h5", "val.h5"]
    # a second import with new train data and a NaN in val's only video: train is written
    # first and must not replace the old train.h5
    for vid in ("a", "c", "d"):
        np.save(npy / f"{vid}.npy", np.full((3, D), 0.5, np.float32))
    bad = np.zeros((2, D), np.float32)
    bad[1, 2] = np.nan
    np.save(npy / "b.npy", bad)
    with pytest.raises(StoreError, match=r"b\.npy \(video 'b'\): features contain NaN/Inf") as e:
        import_npy(npy, csv, out)
    assert "unchanged" in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp dir either


def test_import_npy_failure_into_new_dir_leaves_nothing(tmp_path):
    npy, _ = _npy_dir(tmp_path, ["a", "b"])
    np.save(npy / "b.npy", np.full((2, D), np.inf, np.float32))
    csv = _split_csv(tmp_path, [("a", "train"), ("b", "val")])
    with pytest.raises(StoreError, match="'b'"):
        import_npy(npy, csv, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_npy_rename_failure_restores_old_splits(tmp_path, monkeypatch):
    npy, _ = _npy_dir(tmp_path, ["a", "b"])
    csv = _split_csv(tmp_path, [("a", "train"), ("b", "val")])
    out = tmp_path / "out"
    import_npy(npy, csv, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    np.save(npy / "a.npy", np.full((4, D), 0.25, np.float32))
    real_replace = os.replace

    def replace(src, dst):  # moving the new val.h5 into OUT fails; restoring the old one works
        if str(dst) == str(out / "val.h5") and "previous" not in Path(src).parts:
            raise OSError("simulated rename failure")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        import_npy(npy, csv, out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_import_npy_refuses_ids_outside_npy_dir(tmp_path):
    npy, _ = _npy_dir(tmp_path, ["v1"])
    outside = np.ones((2, D), np.float32)
    np.save(tmp_path / "secret.npy", outside)  # readable if "../secret" were followed
    (npy / "cats").mkdir()
    np.save(npy / "cats" / "a.npy", outside)
    (npy / "link.npy").symlink_to(tmp_path / "secret.npy")
    cases = ["../secret", "cats/../../secret", str(tmp_path / "secret"), "link"]
    for bad in cases:
        csv = tmp_path / "labels.csv"
        csv.write_text(f"video_id,label\nv1,a\n{bad},b\n")
        with pytest.raises(StoreError, match="line 3: video_id") as e:
            import_npy(npy, csv, tmp_path / "out")
        assert repr(bad) in str(e.value) and "NPY_DIR" in str(e.value)
        assert not (tmp_path / "out").exists()
    csv.write_text("video_id,label\nv1,a\ncats/a,b\n")  # a sub-folder inside NPY_DIR is fine
    s = FeatureStore(import_npy(npy, csv, tmp_path / "out")["train"])
    assert s.video_ids == ["v1", "cats/a"]
    np.testing.assert_array_equal(s.read(1), outside.astype(np.float16))


def test_import_npy_refuses_integer_arrays(tmp_path):
    npy, _ = _npy_dir(tmp_path, ["v1", "v2"])
    np.save(npy / "v2.npy", np.ones((3, D), np.int64))
    csv = tmp_path / "labels.csv"
    csv.write_text("video_id,label\nv1,a\nv2,b\n")
    with pytest.raises(StoreError, match=r"v2\.npy \(video 'v2'\): features are int64"):
        import_npy(npy, csv, tmp_path / "out")


@pytest.mark.parametrize(
    "csv_text, pattern",
    [
        ("video_id,label\nv1,a\nmissing1,a\nmissing2,b\n", "2 video.*'missing1', 'missing2'"),
        ("video_id,label,split\nv1,a,train\nv2,a,holdout\n", "line 3: split 'holdout'"),
        ("video_id,label\nv1,a\nv1,b\n", "line 3: video 'v1' already listed on line 2"),
        ("video,label\nv1,a\n", r"missing \['video_id'\]"),
    ],
)
def test_import_npy_csv_errors(tmp_path, csv_text, pattern):
    npy, _ = _npy_dir(tmp_path, ["v1", "v2"])
    csv = tmp_path / "labels.csv"
    csv.write_text(csv_text)
    with pytest.raises(StoreError, match=pattern):
        import_npy(npy, csv, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_npy_shape_errors(tmp_path):
    npy, _ = _npy_dir(tmp_path, ["v1", "v2"])
    csv = tmp_path / "labels.csv"
    csv.write_text("video_id,label\nv1,a\nv2,a\n")
    np.save(npy / "v2.npy", np.zeros((3, D + 2), np.float32))
    with pytest.raises(StoreError, match=r"v2.npy: feature dim 8 differs from 6 in .*v1.npy"):
        import_npy(npy, csv, tmp_path / "out")
    np.save(npy / "v2.npy", np.zeros(D, np.float32))
    with pytest.raises(StoreError, match=r"v2.npy: expected a \(T, D\) array"):
        import_npy(npy, csv, tmp_path / "out")


# ---- info ------------------------------------------------------------------------------------
def test_store_info_counts(tmp_path):
    vids = [(f"v{i}", np.zeros((2 + i, 4), np.float16), [0, 0, 0, 1, 2][i]) for i in range(5)]
    path = write_store(tmp_path / "train.h5", vids, ["cat", "dog", "eel"], 4, {"backbone": "r18"})
    text = store_info(path)
    assert str(path) in text
    assert "videos:         5" in text
    assert "cat: 3 (60.0%)" in text and "dog: 1 (20.0%)" in text and "eel: 1 (20.0%)" in text
    assert "min 2, median 4.0, mean 4.0, p95 6, max 6" in text and "total frames:   20" in text
    assert "longest video:  'v4' (6 frames)" in text
    assert "feature dim:    4" in text and "float16" in text and '"backbone": "r18"' in text
    assert "format version: 2" in text


def test_store_info_length_spread(tmp_path):
    # lengths 1..19 plus one 300-frame video: sorted, the 10th and 11th are 10 and 11
    # (median 10.5); 95 % of 20 videos is 19, and the 19th smallest is 19 (p95);
    # mean (190 + 300) / 20 = 24.5
    lengths = list(range(1, 6)) + [300] + list(range(6, 20))
    vids = [(f"v{i}", np.zeros((t, 2), np.float16), 0) for i, t in enumerate(lengths)]
    vids[5] = ("long_one", vids[5][1], 0)
    text = store_info(write_store(tmp_path / "train.h5", vids, ["only"], 2))
    assert "frames/video:   min 1, median 10.5, mean 24.5, p95 19, max 300" in text
    assert "longest video:  'long_one' (300 frames)" in text


def test_import_padded_refuses_fractional_labels(tmp_path):
    """1.7 would silently become class 1; whole floats (1.0) are fine."""
    src = tmp_path / "old.h5"
    _padded_file(src, n=6)
    with h5py.File(src, "r+") as f:
        labels = f["labels"][:].astype(np.float64)
        del f["labels"]
        f["labels"] = labels  # whole floats
    import_padded_h5(src, tmp_path / "ok.h5")
    assert FeatureStore(tmp_path / "ok.h5").labels.tolist() == [0, 1, 2, 0, 1, 2]
    with h5py.File(src, "r+") as f:
        labels = f["labels"][:]
        labels[4] = 1.7
        del f["labels"]
        f["labels"] = labels
    with pytest.raises(StoreError, match=r"'labels' must hold whole numbers.*row 4 = 1.7"):
        import_padded_h5(src, tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()
