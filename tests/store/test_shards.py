"""Multi-file splits (vidcls.store.shards): the size-balanced deal, reading K shard files as one split,
and every way a shard set can be incomplete or inconsistent (each a StoreError naming the file).

The shard sets are hand-made: float32 features drawn here, written with ``write_store``, and shard
reports holding only what the reader checks, so every expectation is the data as it was written.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from vidcls.data.dataset import load_splits
from vidcls.errors import StoreError
from vidcls.store import FeatureStore, MultiFileStore, open_splits, write_store
from vidcls.store.shards import (
    assign_shards,
    check_output_dir,
    leftover_shards,
    load_shard_set,
    shard_name,
    shard_report_name,
    write_merged,
)

D = 6
CLASSES = ["cat", "dog", "owl"]
EXTRACTOR = {"backbone": "hand", "sampling": {"mode": "fps", "fps": 1.0}, "torch": "2.0"}


def video(vid: str, label: int, frames: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    return (vid, rng.normal(size=(frames, D)).astype(np.float32), label, np.arange(frames) * 100.0 + seed)


def shard_videos(index: int, per_split: dict) -> dict:
    """{split: [video, ...]} for one shard; ``per_split`` gives the count, ids unique per shard."""
    return {
        split: [
            video(
                f"{split}/s{index}v{k}",
                (index + k) % len(CLASSES),
                2 + (k % 4),
                seed=100 * index + 10 * k + len(split),
            )
            for k in range(n)
        ]
        for split, n in per_split.items()
        if n
    }


def write_shards(
    d: Path, shards: list[dict], *, class_names=None, extractors=None, statuses=None, scans=None
) -> list[dict]:
    """Write K shards: files via write_store, reports with what the reader checks. Returns shards."""
    count = len(shards)
    d.mkdir(parents=True, exist_ok=True)
    for i, parts in enumerate(shards):
        for split, videos in parts.items():
            write_store(
                d / shard_name(split, i, count),
                videos,
                (class_names or {}).get(i, CLASSES),
                D,
                (extractors or {}).get(i, EXTRACTOR),
                dtype="float32",
            )
        report = {
            "status": (statuses or {}).get(i, "complete"),
            "shard": {"index": i, "count": count, "videos": 99, "scan": (scans or {}).get(i, "abc")},
            "totals": {split: {"ok": len(v)} for split, v in parts.items()},
            "videos": [
                {"split": s, "video_id": v[0], "path": v[0], "status": "ok"}
                for s, vs in parts.items()
                for v in vs
            ],
        }
        (d / shard_report_name(i, count)).write_text(json.dumps(report))
    return shards


def concat(shards: list[dict], split: str) -> list[tuple]:
    return [v for parts in shards for v in parts.get(split, [])]


@pytest.fixture
def three(tmp_path) -> tuple[Path, list[dict]]:
    """Three shards: train in all, val only in shard 0, test in shards 0 and 2 (shard 1 has none)."""
    shards = [
        shard_videos(0, {"train": 4, "val": 3, "test": 1}),
        shard_videos(1, {"train": 3}),
        shard_videos(2, {"train": 5, "test": 2}),
    ]
    return tmp_path / "feats", write_shards(tmp_path / "feats", shards)


# ---------------------------------------------------------------- the deal


def test_assign_shards_by_hand():
    # largest first to the least-loaded shard, ties to the lower shard, equal sizes in input order
    assert assign_shards([5, 9, 2, 7, 3, 3], 2) == [1, 0, 1, 1, 0, 0]  # loads 15, 14
    assert assign_shards([5, 9, 2, 7, 3, 3], 3) == [2, 0, 2, 1, 2, 1]  # loads 9, 10, 10
    assert assign_shards([4, 4, 4, 4], 2) == [0, 1, 0, 1]
    assert assign_shards([3], 3) == [0] and assign_shards([], 2) == []
    assert assign_shards([8, 1, 1], 1) == [0, 0, 0]
    # a greedy deal is never worse than one item away from perfect balance
    sizes = list(np.random.default_rng(0).integers(1, 1000, 200))
    owner = assign_shards(sizes, 4)
    loads = np.bincount(owner, weights=sizes, minlength=4)
    assert loads.max() - loads.min() <= max(sizes) and sorted(set(owner)) == [0, 1, 2, 3]


# ---------------------------------------------------------------- reading as one


def test_multifile_store_is_the_concatenation(three):
    d, shards = three
    want = concat(shards, "train")
    s = MultiFileStore([d / shard_name("train", i, 3) for i in range(3)])
    assert len(s) == len(want) == 12
    assert s.video_ids == [v[0] for v in want]
    np.testing.assert_array_equal(s.labels, [v[2] for v in want])
    np.testing.assert_array_equal(s.lengths, [len(v[1]) for v in want])
    np.testing.assert_array_equal(s.offsets, np.concatenate([[0], np.cumsum([len(v[1]) for v in want])]))
    for i, v in enumerate(want):
        np.testing.assert_array_equal(s.read(i), v[1])
        np.testing.assert_array_equal(s.timestamps(i), v[3])
    np.testing.assert_array_equal(s.read(-1), want[-1][1])
    with pytest.raises(IndexError):
        s.read(12)
    assert (s.class_names, s.feature_dim, str(s.dtype)) == (CLASSES, D, "float32")
    assert s.path.name == "train-*-of-00003.h5"
    clone = pickle.loads(pickle.dumps(s))  # what DataLoader workers receive (after reads: open handles)
    np.testing.assert_array_equal(clone.read(7), want[7][1])
    s.close()
    clone.close()


def test_open_splits_and_training_read_a_directory_of_shards(three):
    d, shards = three
    stores = open_splits(d, require=("train", "val", "test"))
    assert all(isinstance(s, MultiFileStore) for s in stores.values())
    for split in ("train", "val", "test"):
        assert stores[split].video_ids == [v[0] for v in concat(shards, split)]
    assert len(stores["val"].parts) == 1 and len(stores["test"].parts) == 2  # no empty shard files
    splits = load_splits(d, augment=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 3, 3)
    x, label, _ = splits.test[2]
    np.testing.assert_array_equal(x.numpy(), concat(shards, "test")[2][1])
    assert label == concat(shards, "test")[2][2] and splits.class_names == CLASSES


def test_write_merged_restores_an_order(three, tmp_path):
    d, shards = three
    want = concat(shards, "train")
    s = MultiFileStore([d / shard_name("train", i, 3) for i in range(3)])
    order = list(np.random.default_rng(1).permutation(len(want)))
    with FeatureStore(write_merged(s, tmp_path / "train.h5", order)) as m:
        assert m.video_ids == [want[i][0] for i in order]
        for k, i in enumerate(order):
            np.testing.assert_array_equal(m.read(k), want[i][1])
            np.testing.assert_array_equal(m.timestamps(k), want[i][3])
            assert m.labels[k] == want[i][2]


# ---------------------------------------------------------------- incomplete or inconsistent sets


def test_a_missing_shard_is_named(three):
    d, _ = three
    (d / shard_report_name(1, 3)).unlink()
    with pytest.raises(
        StoreError,
        match=r"shard 1 of 3 is missing: .*extract_report-00001-of-00003\.json"
        r".*--shard 1/3",
    ):
        open_splits(d)


def test_an_unfinished_shard_is_named(tmp_path):
    d = tmp_path / "f"
    write_shards(d, [shard_videos(0, {"train": 2}), shard_videos(1, {"train": 2})], statuses={1: "running"})
    with pytest.raises(
        StoreError,
        match=r"shard 1 of 2 is not complete: .*00001-of-00002\.json has status "
        r"'running'",
    ):
        open_splits(d)


def test_a_lost_shard_file_is_named(three):
    d, _ = three
    (d / shard_name("test", 2, 3)).unlink()  # its report says 2 test videos went into it
    with pytest.raises(StoreError, match=r"test-00002-of-00003\.h5 is missing: .* says 2 test videos"):
        open_splits(d)


def test_a_replaced_shard_file_is_named(three):
    d, _ = three
    write_store(
        d / shard_name("train", 2, 3),
        shard_videos(2, {"train": 2})["train"],
        CLASSES,
        D,
        EXTRACTOR,
        dtype="float32",
    )  # 2 videos where the report counts 5
    with pytest.raises(StoreError, match=r"train-00002-of-00003\.h5 holds 2 videos but .* says 5"):
        open_splits(d)


def test_mismatched_class_names_are_named(tmp_path):
    d = tmp_path / "f"
    write_shards(
        d,
        [shard_videos(0, {"train": 2}), shard_videos(1, {"train": 2})],
        class_names={1: ["cat", "dog", "eel"]},
    )
    with pytest.raises(
        StoreError,
        match=r"train-00001-of-00002\.h5 has class_names .* but "
        r".*train-00000-of-00002\.h5 has",
    ):
        open_splits(d)


def test_extractors_must_agree_except_runtime_keys(tmp_path):
    d = tmp_path / "f"
    write_shards(
        d,
        [shard_videos(0, {"train": 2}), shard_videos(1, {"train": 2})],
        extractors={1: {**EXTRACTOR, "torch": "2.9", "vidcls_version": "9"}},
    )
    assert len(open_splits(d)["train"]) == 4  # other versions on another machine: same features
    d = tmp_path / "g"
    write_shards(
        d,
        [shard_videos(0, {"train": 2}), shard_videos(1, {"train": 2})],
        extractors={1: {**EXTRACTOR, "sampling": {"mode": "fps", "fps": 2.0}}},
    )
    with pytest.raises(StoreError, match=r"train-00001-of-00002\.h5 was extracted with other settings"):
        open_splits(d)


def test_a_video_in_two_shards_is_named(tmp_path):
    d = tmp_path / "f"
    a, b = shard_videos(0, {"train": 3}), shard_videos(1, {"train": 2})
    b["train"][1] = (a["train"][2][0],) + b["train"][1][1:]
    write_shards(d, [a, b])
    with pytest.raises(
        StoreError,
        match=r"'train/s0v2' is in both .*train-00000-of-00002\.h5 and "
        r".*train-00001-of-00002\.h5",
    ):
        open_splits(d)


def test_single_file_and_shards_of_one_split_are_refused(three):
    d, shards = three
    write_store(d / "train.h5", concat(shards, "train"), CLASSES, D, EXTRACTOR, dtype="float32")
    with pytest.raises(
        StoreError,
        match=r"holds both train\.h5 and its shards 'train-00000-of-00003\.h5'"
        r".*vidcls merge",
    ):
        open_splits(d)


def test_shards_of_different_scans_or_runs_are_refused(tmp_path):
    d = tmp_path / "f"
    write_shards(d, [shard_videos(0, {"train": 2}), shard_videos(1, {"train": 2})], scans={1: "other"})
    with pytest.raises(StoreError, match="different scans of the videos"):
        open_splits(d)
    d = tmp_path / "g"
    write_shards(d, [shard_videos(0, {"train": 2}), shard_videos(1, {"train": 2})])
    write_store(d / shard_name("train", 0, 3), shard_videos(5, {"train": 1})["train"], CLASSES, D)
    with pytest.raises(
        StoreError,
        match=r"shards of different sharded runs .*of 2: .*of 3: "
        r"'train-00000-of-00003\.h5'",
    ):
        open_splits(d)
    report = json.loads((d / shard_report_name(1, 2)).read_text())
    report["shard"]["index"] = 0
    (d / shard_report_name(1, 2)).write_text(json.dumps(report))
    (d / shard_name("train", 0, 3)).unlink()
    with pytest.raises(
        StoreError, match=r"extract_report-00001-of-00002\.json does not describe shard 1 of 2"
    ):
        open_splits(d)


def test_reports_without_shard_files_are_not_a_data_set(tmp_path):
    d = tmp_path / "f"
    write_shards(d, [{}, {}])  # every video of both shares broken: reports only
    assert load_shard_set(d) is None
    assert load_shard_set(d, require_files=False).files == {}
    with pytest.raises(StoreError, match=r"required split file\(s\) \['train.h5'\] missing"):
        open_splits(d)


# ---------------------------------------------------------------- output directory and leftovers


def test_check_output_dir(tmp_path):
    d = tmp_path / "f"
    check_output_dir(d, None)  # nothing there yet: any run may start
    check_output_dir(d, 4)
    write_shards(d, [shard_videos(0, {"train": 1}), shard_videos(1, {"train": 1})])
    check_output_dir(d, 2)  # continuing the same sharded run
    with pytest.raises(StoreError, match="vidcls merge"):
        check_output_dir(d, None)
    with pytest.raises(StoreError, match="run of 2, not 4"):
        check_output_dir(d, 4)
    e = tmp_path / "e"
    write_store(e / "val.h5", shard_videos(0, {"val": 1})["val"], CLASSES, D)
    with pytest.raises(StoreError, match=r"single-file store \(val\.h5\)"):
        check_output_dir(e, 2)


def test_leftover_shards_only_when_all_were_merged(three):
    d, shards = three
    names = [p.name for p in load_shard_set(d).paths()]
    report = {"merged_from": names, "totals": {"train": {"ok": 12}, "val": {"ok": 3}, "test": {"ok": 3}}}
    (d / "extract_report.json").write_text(json.dumps(report))
    assert leftover_shards(d, d / "extract_report.json") == []  # merged files not written yet
    for split in ("train", "val", "test"):
        write_store(d / f"{split}.h5", concat(shards, split), CLASSES, D, dtype="float32")
    assert sorted(p.name for p in leftover_shards(d, d / "extract_report.json")) == sorted(names)
    report["merged_from"] = names[1:]  # one shard file the merge never saw: not a leftover
    (d / "extract_report.json").write_text(json.dumps(report))
    assert leftover_shards(d, d / "extract_report.json") == []
    assert leftover_shards(d, d / "missing.json") == []
