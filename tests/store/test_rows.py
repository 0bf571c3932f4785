"""Reading rows of a video (``FeatureStore.read(i, rows)``, ``timestamps(i, rows)``, the same on
``MultiFileStore``), and the dataset reading only the rows it thins a long video to.

Stores are written with ``write_store`` from arrays drawn here; every expectation is numpy indexing of
the array as written. Which rows h5py was asked for is recorded on ``h5py.Dataset.__getitem__``.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from vidcls.data.dataset import FeatureDataset
from vidcls.store import FeatureStore, MultiFileStore, write_store
from vidcls.store.rows import read_rows, select_rows
from vidcls.utils.sampling import uniform_indices

CLASSES = ["cat", "dog"]
D = 4
CHUNK = 256  # the writer's chunk: min(256, 1 MiB / (D x 2 bytes)) frames of float16
LENGTHS = [5, 3000, 40]  # the long one starts at frame 5: its chunks are not aligned with its rows


def make(vid: str, n: int, seed: int, dtype=np.float16) -> tuple:
    rng = np.random.default_rng(seed)
    return vid, rng.standard_normal((n, D)).astype(dtype), seed % 2, np.arange(n) * 40.0 + 1000.0 * seed


@pytest.fixture
def written(tmp_path):
    """(store, videos): three float16 videos with timestamps, one 3000 frames long."""
    videos = [make(f"v{k}", n, k) for k, n in enumerate(LENGTHS)]
    store = FeatureStore(write_store(tmp_path / "train.h5", videos, CLASSES, D, {"backbone": "toy"}))
    yield store, videos
    store.close()


@pytest.fixture
def reads(monkeypatch):
    """Every selection asked of a ``features`` dataset, as (start, stop) frame ranges."""
    seen: list[tuple[int, int]] = []
    original = h5py.Dataset.__getitem__

    def record(self, args, *rest, **kw):
        if self.name == "/features":
            assert isinstance(args, slice) and args.step is None, f"not one contiguous range: {args!r}"
            seen.append((int(args.start), int(args.stop)))
        return original(self, args, *rest, **kw)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", record)
    return seen


ROWS = [
    slice(None),
    slice(10, 700),
    slice(0, 3000, 7),
    slice(2900, 100, -13),  # a negative step: descending rows
    slice(-30, None),
    slice(2990, 5000),  # past the end: clamped, as numpy does
    slice(4000, 5000),  # wholly past the end: no rows
    [2999, 0, 1500],  # unsorted
    [7, 7, 300, 7, 2, 300],  # repeats, unsorted
    np.arange(2999, -1, -1),  # every row, backwards
    uniform_indices(3000, 64),
    uniform_indices(3000, 700),  # dense: several rows per chunk
    np.array([], dtype=np.int64),
    [],
    np.array([255, 256, 257, 511, 512], dtype=np.uint16),  # across chunk edges, unsigned
]


@pytest.mark.parametrize("rows", ROWS, ids=lambda r: repr(r)[:40])
def test_rows_equal_numpy_indexing_of_the_video(written, rows):
    store, videos = written
    _, x, _, ts = videos[1]
    want = x[rows]
    got = store.read(1, rows)
    assert got.dtype == np.float16 and got.shape == want.shape == (len(np.arange(3000)[rows]), D)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))  # bit for bit
    np.testing.assert_array_equal(store.timestamps(1, rows), ts[rows])
    assert store.timestamps(1, rows).dtype == np.float64


def test_rows_of_short_videos_and_negative_video_index(written):
    store, videos = written
    np.testing.assert_array_equal(store.read(0, [4, 0, 4]), videos[0][1][[4, 0, 4]])
    np.testing.assert_array_equal(store.read(-1, slice(1, None, 3)), videos[2][1][1::3])
    np.testing.assert_array_equal(store.read(2), videos[2][1])  # rows None: the whole video


def test_rows_on_a_multifile_store(tmp_path):
    parts = [[make("a0", 30, 1), make("a1", 600, 2)], [make("b0", 900, 3, np.float32), make("b1", 8, 4)]]
    for part in parts:  # float32 in both files (one split, one dtype)
        part[:] = [(v, x.astype(np.float32), y, t) for v, x, y, t in part]
    paths = [
        write_store(tmp_path / f"train-{k}.h5", p, CLASSES, D, {"backbone": "toy"}, dtype="float32")
        for k, p in enumerate(parts)
    ]
    store = MultiFileStore(paths)
    flat = [v for p in parts for v in p]
    for i, rows in [
        (2, [899, 0, 450, 450]),
        (2, slice(100, 800, 9)),
        (1, uniform_indices(600, 50)),
        (3, [7]),
    ]:
        got = store.read(i, rows)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, flat[i][1][rows])
        np.testing.assert_array_equal(store.timestamps(i, rows), flat[i][3][rows])
    with pytest.raises(IndexError, match=r"'b0'.*900 frames"):
        store.read(2, [900])
    store.close()


@pytest.mark.parametrize("bad", [[3000], [0, 3000, 5000], np.array([12345])])
def test_rows_out_of_range_name_the_video_and_its_length(written, bad):
    store, _ = written
    with pytest.raises(
        IndexError, match=r"out of range for video 'v1' of .*train\.h5, which has 3000 frames"
    ):
        store.read(1, bad)
    with pytest.raises(IndexError, match="'v1'"):
        store.timestamps(1, bad)


def test_negative_rows_refused(written):
    store, _ = written
    with pytest.raises(IndexError, match=r"negative rows \[-1\] for video 'v1'.*3000 frames"):
        store.read(1, [5, -1])


@pytest.mark.parametrize("bad", [[1.0, 2.0], np.zeros((2, 2), np.int64), np.ones(3000, bool), 5])
def test_rows_that_are_not_1d_integers_refused(written, bad):
    store, _ = written
    with pytest.raises(TypeError, match="'v1'.*1-D integer positions"):
        store.read(1, bad)


def test_slice_step_zero_refused(written):
    with pytest.raises(ValueError, match="zero"):
        written[0].read(1, slice(0, 10, 0))


def test_a_sparse_selection_reads_only_its_rows(written, reads):
    store, videos = written
    rows = uniform_indices(3000, 8)  # picks 428 frames apart: more than a chunk
    got = store.read(1, rows)
    np.testing.assert_array_equal(got, videos[1][1][rows])
    start = LENGTHS[0]
    assert reads == [(start + r, start + r + 1) for r in rows.tolist()]  # one row per read, no more
    reads.clear()
    store.read(1, [2000, 10, 10, 2000])  # repeats and order: each row read once
    assert sorted(reads) == [(start + 10, start + 11), (start + 2000, start + 2001)]


def test_a_dense_selection_reads_within_the_chunks_that_hold_it(written, reads):
    store, videos = written
    rows = uniform_indices(3000, 700)  # 3 rows apart, several per chunk
    np.testing.assert_array_equal(store.read(1, rows), videos[1][1][rows])
    start, absolute = LENGTHS[0], set((uniform_indices(3000, 700) + LENGTHS[0]).tolist())
    chunks = {r // CHUNK for r in absolute}
    assert len(reads) == len(chunks)  # one read per chunk holding requested rows
    for a, b in reads:
        assert a // CHUNK == (b - 1) // CHUNK  # never across a chunk edge
        assert a in absolute and b - 1 in absolute  # from its first requested row to its last
    assert sum(b - a for a, b in reads) < 3000 and min(a for a, _ in reads) == start


def test_rows_none_is_one_read_of_the_video(written, reads):
    store, _ = written
    store.read(1)
    assert reads == [(5, 3005)]


def test_read_rows_of_an_unchunked_dataset(tmp_path):
    data = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        ds = f.create_dataset("x", data=data)  # contiguous layout: no chunks
        assert ds.chunks is None
        for rows in ([899, 3, 3, 512, 0], uniform_indices(900, 100), slice(5, 900, 4)):
            sel = select_rows(rows, 900, where="video 'p'")
            np.testing.assert_array_equal(read_rows(ds, 100, sel), data[100:][rows])


@pytest.mark.parametrize("k", [None, 8, 32, 2999])
def test_dataset_items_equal_the_full_read_thinned(written, reads, k):
    store, videos = written
    ds = FeatureDataset(store, max_frames=k)
    for pos, (_, x, _, _) in enumerate(videos):
        old = x[uniform_indices(len(x), k)] if k is not None and len(x) > k else x  # read whole, thinned
        for key in (pos, (pos, 123)):  # unaugmented: a seed changes nothing
            item = ds[key][0].numpy()
            assert item.dtype == np.float16
            np.testing.assert_array_equal(item.view(np.uint16), old.view(np.uint16))  # bit for bit
    long_reads = [(a, b) for a, b in reads if a >= LENGTHS[0] and b <= LENGTHS[0] + 3000]
    if k is None:
        assert long_reads == [(5, 3005)] * 2
    else:  # thinned: never the whole video, only reads inside the chunks holding kept rows
        assert all(a // CHUNK == (b - 1) // CHUNK for a, b in long_reads)


def test_dataset_reads_only_the_kept_rows_of_a_long_video(written, reads):
    store, videos = written
    item = FeatureDataset(store, max_frames=8)[1][0].numpy()
    kept = uniform_indices(3000, 8)  # 428 frames apart: one chunk each
    np.testing.assert_array_equal(item, videos[1][1][kept])
    assert reads == [(LENGTHS[0] + r, LENGTHS[0] + r + 1) for r in kept.tolist()]
