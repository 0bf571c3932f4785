"""``vidcls import npy`` with ``a|b|c`` label sets, and ``vidcls info`` on single- and multi-label stores."""

from __future__ import annotations

import numpy as np
import pytest

from vidcls.cli import main
from vidcls.errors import StoreError
from vidcls.store import FeatureStore, write_store
from vidcls.store.importers import import_npy
from vidcls.store.info import store_info

D = 3


def npy_dir(tmp_path, ids):
    d = tmp_path / "npy"
    d.mkdir()
    for i, vid in enumerate(ids):
        np.save(d / f"{vid}.npy", np.full((2 + i, D), float(i), np.float32))
    return d


def sets_of(store) -> list[list[int]]:
    return [s.tolist() for s in store.label_sets]


def test_import_npy_label_sets(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "video_id,label,split\n"
        "a,dog | outdoor,train\n"
        "b,music,train\n"
        "c,outdoor|dog|music,train\n"
        "d,cat|dog,test\n"  # 'cat' occurs only in test: kept among the classes
    )
    paths = import_npy(npy_dir(tmp_path, "abcd"), csv, tmp_path / "out")
    train, test = FeatureStore(paths["train"]), FeatureStore(paths["test"])
    assert train.class_names == test.class_names == ["cat", "dog", "music", "outdoor"]
    assert train.multilabel and test.multilabel
    assert sets_of(train) == [[1, 3], [2], [1, 2, 3]] and sets_of(test) == [[0, 1]]
    assert train.labels.tolist() == [1, 2, 1]
    np.testing.assert_array_equal(train.read(2), np.full((4, D), 2.0, np.float16))


def test_import_npy_without_a_set_stays_single_label(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("video_id,label\na, dog \nb,cat\n")
    s = FeatureStore(import_npy(npy_dir(tmp_path, "ab"), csv, tmp_path / "out")["train"])
    assert not s.multilabel and s.class_names == ["cat", "dog"] and s.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "cell, says",
    [
        ("dog||cat", "has an empty label"),
        ("dog|", "has an empty label"),
        ("dog|cat|dog", "lists 'dog' more than once"),
        ("|", "has an empty label"),
        ('" "', "empty video_id or label"),
    ],
)
def test_import_npy_refuses_bad_label_sets_in_one_line(tmp_path, capsys, cell, says):
    csv = tmp_path / "labels.csv"
    csv.write_text(f"video_id,label\na,dog\nb,{cell}\n")
    nd = npy_dir(tmp_path, "ab")
    assert main(["import", "npy", str(nd), str(csv), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    if "empty video_id" not in says:
        assert "labels.csv line 3 (video 'b')" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(StoreError, match=says):
        import_npy(nd, csv, tmp_path / "out")


# ---- vidcls info -----------------------------------------------------------------------------
def test_info_of_a_multilabel_store(tmp_path):
    vids = [(f"v{i}", np.zeros((2, 4), np.float16), s) for i, s in enumerate([[0, 1], [1], [0, 1, 2], [1]])]
    text = store_info(write_store(tmp_path / "t.h5", vids, ["cat", "dog", "eel"], 4, multilabel=True))
    assert "task:           multi-label" in text
    assert "labels/video:   mean 1.75, min 1, max 3" in text  # (2 + 1 + 3 + 1) / 4
    assert "cat: 2 (50.0%)" in text and "dog: 4 (100.0%)" in text and "eel: 1 (25.0%)" in text


def test_info_of_a_single_label_store(tmp_path):
    vids = [(f"v{i}", np.zeros((2, 4), np.float16), y) for i, y in enumerate([0, 2, 2])]
    text = store_info(write_store(tmp_path / "t.h5", vids, ["cat", "dog", "eel"], 4))
    assert "task:           single-label" in text and "labels/video:   mean 1.00, min 1, max 1" in text
    assert "cat: 1 (33.3%)" in text and "dog: 0 (0.0%)" in text and "eel: 2 (66.7%)" in text


def test_info_with_many_classes_lists_the_most_and_least_frequent(tmp_path):
    names = [f"c{i:02d}" for i in range(40)]
    # video v (10..39) carries classes 0..39-v (below 30); ten more carry only 0: class 0 is in all
    # 40 videos, class c in 1..29 in the 30 - c videos v = 10..39-c, classes 30..39 in none
    sets = [[c for c in range(30) if c < 40 - v] for v in range(40) if v >= 10] + [[0]] * 10
    vids = [(f"v{i}", np.zeros((1, 4), np.float16), s) for i, s in enumerate(sets)]
    text = store_info(write_store(tmp_path / "t.h5", vids, names, 4, multilabel=True))
    lines = text.splitlines()
    assert "classes:        40 (listed: the 20 most and 5 least frequent; 15 not shown)" in lines
    listed = [ln.split(":")[0].strip() for ln in lines if ln.startswith("  c")]
    assert listed == [f"c{i:02d}" for i in range(20)] + ["c35", "c36", "c37", "c38", "c39"]
    assert "  ... (15 classes not shown)" in lines
    assert "  c00: 40 (100.0%)" in lines and "  c19: 11 (27.5%)" in lines and "  c39: 0 (0.0%)" in lines
