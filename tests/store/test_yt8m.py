"""Tests for ``vidcls import yt8m``: TFRecord framing, the SequenceExample decoder and the import.

The records are written here by a small encoder of the test's own (varints, length-delimited
fields, masked CRC-32C computed bit by bit), in the layout of YouTube-8M's frame-level files.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from vidcls import cli
from vidcls.errors import ConfigError, StoreError
from vidcls.store import FeatureStore
from vidcls.store.tfrecord import crc32c, iter_records, masked_crc32c, parse_sequence_example
from vidcls.store.yt8m import dequantize_table, import_yt8m

RGB, AUDIO = 1024, 128


# ---- the test's own encoder ---------------------------------------------------------------------
def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c_bitwise(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def _varint(n: int) -> bytes:
    n &= 2**64 - 1  # int64 as protobuf writes it: two's complement, 10 bytes when negative
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:  # a length-delimited field
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(*values: bytes) -> bytes:
    return _ld(1, b"".join(_ld(1, v) for v in values))  # Feature.bytes_list, BytesList.value


def _int64_feature(values, packed=True) -> bytes:
    if packed:
        body = _ld(1, b"".join(_varint(v) for v in values))
    else:
        body = b"".join(_varint(1 << 3 | 0) + _varint(v) for v in values)
    return _ld(3, body)  # Feature.int64_list


def _float_feature(values) -> bytes:
    return _ld(2, _ld(1, struct.pack(f"<{len(values)}f", *values)))  # Feature.float_list, packed


def _map(entries: dict[str, bytes]) -> bytes:  # map<string, V> in field 1: entries {key 1, value 2}
    return b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, v)) for k, v in entries.items())


def _sequence_example(context: dict[str, bytes], lists: dict[str, list[bytes]]) -> bytes:
    feature_lists = {k: b"".join(_ld(1, f) for f in frames) for k, frames in lists.items()}
    return _ld(1, _map(context)) + _ld(2, _map(feature_lists))


def _video(vid, labels, rgb, audio=None, *, id_key="id", packed=True, extra=None) -> bytes:
    """One frame-level record: rgb (T, 1024) and audio (T, 128) uint8 arrays."""
    context = {id_key: _bytes_feature(vid.encode()), "labels": _int64_feature(labels, packed)}
    context.update(extra or {})
    lists = {"rgb": [_bytes_feature(bytes(row)) for row in rgb]}
    if audio is not None:
        lists["audio"] = [_bytes_feature(bytes(row)) for row in audio]
    return _sequence_example(context, lists)


def _write_tfrecord(path: Path, records: list[bytes]) -> Path:
    with open(path, "wb") as fh:
        for data in records:
            length = struct.pack("<Q", len(data))
            fh.write(length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data)))
    return path


def _frames(rng, t, width=RGB):
    return rng.integers(0, 256, (t, width), dtype=np.uint8)


def _dequantized(q: np.ndarray) -> np.ndarray:  # the formula, in float64
    return q.astype(np.float64) * (2 - -2) / 255.0 + (2 - -2) / 512.0 + -2


@pytest.fixture
def yt8m(tmp_path):
    """Two train files and one validate file; returns (dir, {video id: (rgb, audio, labels)})."""
    rng = np.random.default_rng(0)
    videos = {
        "aa01": (_frames(rng, 5), _frames(rng, 5, AUDIO), [3862 - 1, 17]),
        "bb02": (_frames(rng, 3), _frames(rng, 3, AUDIO), [17, 17, 4]),  # a label twice: one label
        "cc03": (_frames(rng, 4), _frames(rng, 4, AUDIO), []),  # no labels: skipped
        "dd04": (_frames(rng, 2), _frames(rng, 2, AUDIO), [4]),
        "ee05": (_frames(rng, 6), _frames(rng, 6, AUDIO), [250, 4]),
    }

    def rec(vid, **kw):
        rgb, audio, labels = videos[vid]
        return _video(vid, labels, rgb, audio, **kw)

    d = tmp_path / "frame"
    d.mkdir()
    segment = {"segment_scores": _float_feature([1.0, 0.0]), "segment_labels": _int64_feature([4, 4])}
    _write_tfrecord(d / "train0001.tfrecord", [rec("aa01"), rec("bb02", packed=False)])
    _write_tfrecord(d / "train0002.tfrecord", [rec("cc03"), rec("dd04", id_key="video_id")])
    _write_tfrecord(d / "validate0001.tfrecord", [rec("ee05", extra=segment)])
    return d, videos


# ---- CRC and framing ----------------------------------------------------------------------------
def test_crc32c_known_value_and_the_numpy_lanes():
    assert _crc32c_bitwise(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    rng = np.random.default_rng(1)
    for n in (1, 31, 4095, 4096, 4097, 9000):  # the byte loop below 4096 bytes, numpy lanes above
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _crc32c_bitwise(data), n
    a, b = b"frame-level ", b"records" * 1000
    assert crc32c(b, crc32c(a)) == crc32c(a + b)  # continuing a CRC
    data = b"\x00\x01\x02" * 2000
    crc = _crc32c_bitwise(data)
    assert masked_crc32c(data) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def test_records_and_the_sequence_example_decoder(tmp_path):
    rgb = _frames(np.random.default_rng(2), 3)
    unpacked = _ld(2, b"".join(_varint(1 << 3 | 5) + struct.pack("<f", v) for v in (3.0, 0.25)))
    extra = {
        "scores": _float_feature([0.5, -1.25]),
        "one_by_one": unpacked,
        "neg": _int64_feature([-3, 2**40], packed=False),
        "names": _bytes_feature(b"a", b"bc"),
        "none": _bytes_feature(),
    }
    records = [_video("x1", [5, 9], rgb, extra=extra), b"", _video("x2", [1], rgb[:1])]
    path = _write_tfrecord(tmp_path / "a.tfrecord", records)
    assert list(iter_records(path)) == records  # an empty record is a record too
    context, lists = parse_sequence_example(records[0])
    assert context["id"] == ("bytes_list", [b"x1"])
    assert context["labels"] == ("int64_list", [5, 9])
    assert context["scores"] == ("float_list", [0.5, -1.25])
    assert context["one_by_one"] == ("float_list", [3.0, 0.25])
    assert context["neg"] == ("int64_list", [-3, 2**40])
    assert context["names"] == ("bytes_list", [b"a", b"bc"]) and context["none"] == ("bytes_list", [])
    assert [v for _, v in lists["rgb"]] == [[bytes(r)] for r in rgb]
    context, lists = parse_sequence_example(records[0], feature_lists=False)
    assert lists == {} and context["labels"] == ("int64_list", [5, 9])
    assert parse_sequence_example(b"") == ({}, {})


# ---- the import ---------------------------------------------------------------------------------
def test_import_yt8m_features_labels_and_classes(yt8m, tmp_path):
    d, videos = yt8m
    vocab = tmp_path / "vocabulary.csv"
    vocab.write_text(
        "Index,TrainVideoCount,KnowledgeGraphId,Name\n"
        "4,100,/m/01,Game\n17,50,/m/02,Car\n250,9,/m/03,Dog|Puppy\n3861,3,/m/04,Tractor\n8,1,/m/05,Unused\n"
    )
    out = tmp_path / "store"
    report = import_yt8m(
        out, train=str(d / "train*.tfrecord"), val=d / "validate*", vocabulary=vocab, dtype="float32"
    )
    assert report == {"train": out / "train.h5", "val": out / "val.h5"}
    assert report.videos == {"train": 3, "val": 1} and report.skipped == {"train": 1, "val": 0}
    assert report.frames == {"train": 5 + 3 + 2, "val": 6}
    # classes: only those carried, ascending YouTube-8M index, renumbered 0..3; "|" may not be in a name
    assert report.label_index == [4, 17, 250, 3861]
    assert report.class_names == ["Game", "Car", "Dog/Puppy", "Tractor"]
    expected_sets = {"aa01": [1, 3], "bb02": [0, 1], "dd04": [0], "ee05": [0, 2]}
    for split, ids in (("train", ["aa01", "bb02", "dd04"]), ("val", ["ee05"])):
        with FeatureStore(out / f"{split}.h5") as s:
            assert s.multilabel and s.class_names == report.class_names and s.feature_dim == RGB + AUDIO
            assert s.video_ids == ids  # file order, record order; cc03 (no labels) left out
            assert s.extractor["yt8m_label_index"] == [4, 17, 250, 3861]
            assert s.extractor["source"] == "yt8m" and s.extractor["features"] == ["rgb", "audio"]
            for i, vid in enumerate(ids):
                rgb, audio, _ = videos[vid]
                assert s.label_sets[i].tolist() == expected_sets[vid]
                want = np.concatenate([_dequantized(rgb), _dequantized(audio)], axis=1)
                np.testing.assert_allclose(s.read(i), want, rtol=0, atol=1e-6)
                assert s.timestamps(i).tolist() == [1000.0 * t for t in range(len(rgb))]
    assert sorted(p.name for p in out.iterdir()) == ["train.h5", "val.h5"]  # no temp directory left
    assert "4 classes" in report.summary() and "1 videos without labels skipped" in report.summary()


def test_dequantize_table_and_float16_rgb_only(yt8m, tmp_path):
    table = dequantize_table()
    assert table.dtype == np.float32
    # the starter code's half-step offset: 0 -> min + 4/512, 255 -> max + 4/512 (not max)
    assert table[0] == pytest.approx(-2 + 4 / 512) and table[255] == pytest.approx(2 + 4 / 512)
    np.testing.assert_allclose(table, _dequantized(np.arange(256)), rtol=0, atol=1e-6)
    d, videos = yt8m
    out = tmp_path / "rgb"
    report = import_yt8m(out, train=[d / "train0001.tfrecord"], features=["rgb"])
    assert report.class_names == ["class_4", "class_17", "class_3861"] and report.feature_dim == RGB
    with FeatureStore(out / "train.h5") as s:
        assert str(s.dtype) == "float16" and s.video_ids == ["aa01", "bb02"]
        assert [s.label_sets[i].tolist() for i in range(2)] == [[1, 2], [0, 1]]  # 3861,17 and 17,4
        # float16 keeps 11 significant bits: within half a step (2**-10 near 2) of the exact value
        np.testing.assert_allclose(s.read(0).astype(np.float64), _dequantized(videos["aa01"][0]), atol=2**-10)


def test_audio_only_and_the_cli_summary(yt8m, tmp_path, capsys):
    d, videos = yt8m
    out = tmp_path / "audio"
    argv = f"import yt8m {out} --train {d}/train000[12].tfrecord --features audio --dtype float32".split()
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "train: 3 videos, 10 frames, 1.67 labels per video, 1 videos without labels skipped" in printed
    assert "3 classes" in printed and "D=128" in printed
    assert cli.main(f"import yt8m {out} --train {d}/nothing*".split()) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("vidcls import: error: --train") and "matches no files" in err and err.count("\n") == 1
    )
    with FeatureStore(out / "train.h5") as s:
        assert s.feature_dim == AUDIO and s.class_names == ["class_4", "class_17", "class_3861"]
        np.testing.assert_allclose(s.read(2), _dequantized(videos["dd04"][1]), rtol=0, atol=1e-6)


# ---- errors -------------------------------------------------------------------------------------
def _error(tmp_path, **kwargs) -> str:
    with pytest.raises(StoreError) as info:
        import_yt8m(tmp_path / "out", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_damaged_files_name_the_file_and_record(yt8m, tmp_path):
    d, _ = yt8m
    good = (d / "train0001.tfrecord").read_bytes()
    first = 12 + struct.unpack("<Q", good[:8])[0] + 4  # where record 1 starts
    text = tmp_path / "notes.tfrecord"
    text.write_text("this is not a tfrecord file at all\n")
    assert "notes.tfrecord: record 0 (byte 0): bad length checksum; not a TFRecord" in _error(
        tmp_path, train=text
    )
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(good[:-10])
    assert f"cut.tfrecord: record 1 (byte {first}): the record needs" in _error(tmp_path, train=cut)
    cut.write_bytes(good[: first + 5])
    assert f"cut.tfrecord: record 1 (byte {first}): the file ends inside a record header" in _error(
        tmp_path, train=cut
    )
    flipped = bytearray(good)
    flipped[first + 12 + 100] ^= 0x01  # one bit inside record 1's data
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(flipped))
    assert f"bad.tfrecord: record 1 (byte {first}): bad data checksum" in _error(tmp_path, train=bad)
    assert not (tmp_path / "out").exists()


def test_records_that_are_not_frame_level_videos(tmp_path):
    rng = np.random.default_rng(3)
    f = tmp_path / "f.tfrecord"
    _write_tfrecord(
        f,
        [
            _video("ok", [1], _frames(rng, 2)),
            _sequence_example({"id": _bytes_feature(b"v9"), "labels": _int64_feature([2])}, {}),
        ],
    )
    assert "f.tfrecord: record 1 (video 'v9'): no 'rgb' frames" in _error(tmp_path, train=f, features=["rgb"])
    assert "f.tfrecord: record 0 (video 'ok'): no 'audio' frames" in _error(tmp_path, train=f)
    mixed = np.zeros((3, RGB), np.uint8)
    rec = _sequence_example(
        {"id": _bytes_feature(b"w1"), "labels": _int64_feature([1])},
        {
            "rgb": [
                _bytes_feature(bytes(mixed[0])),
                _bytes_feature(bytes(mixed[1])),
                _bytes_feature(b"\x00" * 1000),
            ]
        },
    )
    _write_tfrecord(f, [rec])
    message = _error(tmp_path, train=f, features=["rgb"])
    assert "record 0 (video 'w1'): frame 2 of 'rgb' has 1000 values, other frames 1024" in message
    assert "frames of different widths" in message
    rec = _sequence_example(
        {"id": _bytes_feature(b"w2"), "labels": _int64_feature([1])},
        {"rgb": [_bytes_feature(bytes(mixed[0])), _bytes_feature(bytes(mixed[1]), bytes(mixed[2]))]},
    )
    _write_tfrecord(f, [rec])
    message = _error(tmp_path, train=f, features=["rgb"])
    assert "record 0 (video 'w2'): frame 1 of 'rgb' is not one byte string" in message
    _write_tfrecord(f, [_video("a", [1], _frames(rng, 2)), _video("b", [1], _frames(rng, 2, 512))])
    assert "record 1 (video 'b'): frame 0 of 'rgb' has 512 values, other frames 1024" in _error(
        tmp_path, train=f, features=["rgb"]
    )
    video_level = {
        "id": _bytes_feature(b"v"),
        "labels": _int64_feature([1]),
        "mean_rgb": _float_feature([0.0] * 4),
    }
    _write_tfrecord(f, [_ld(1, _map(video_level))])  # a tf.train.Example of the video-level files
    assert "record 0: a video-level record" in _error(tmp_path, train=f)
    _write_tfrecord(f, [_video("c", [1], _frames(rng, 3), _frames(rng, 2, AUDIO))])
    message = _error(tmp_path, train=f)
    assert (
        "record 0 (video 'c'): the feature lists have different frame counts {'rgb': 3, 'audio': 2}"
        in message
    )
    _write_tfrecord(f, [b"\x0a\xff\xff\xff\x0f"])  # field 1 says 4 GB, the record has 5 bytes
    assert "record 0: not a tf.train.SequenceExample" in _error(tmp_path, train=f)
    _write_tfrecord(f, [_sequence_example({"labels": _int64_feature([1])}, {})])
    assert "record 0: no video id" in _error(tmp_path, train=f)


def test_split_level_errors(yt8m, tmp_path):
    d, videos = yt8m
    message = _error(tmp_path, train=str(d / "nothing*.tfrecord"))
    assert "--train" in message and "nothing*.tfrecord" in message and "matches no files" in message
    message = _error(tmp_path, train=str(d / "train*.tfrecord"), val=str(d / "train0002.tfrecord"))
    assert "train0002.tfrecord: record 1: video 'dd04' is also in --train file" in message
    rgb, audio, labels = videos["aa01"]
    again = _write_tfrecord(tmp_path / "again.tfrecord", [_video("aa01", labels, rgb, audio)])
    assert "video 'aa01' is also in --train file" in _error(tmp_path, train=[d / "train0001.tfrecord", again])
    rgb = _frames(np.random.default_rng(4), 1)
    unlabelled = _write_tfrecord(
        tmp_path / "test0001.tfrecord", [_video("t1", [], rgb), _video("t2", [], rgb)]
    )
    message = _error(tmp_path, train=d / "train0001.tfrecord", test=unlabelled)
    assert "--test: none of the 2 videos" in message and "carries a label" in message
    vocab = tmp_path / "vocabulary.csv"
    vocab.write_text("Index,Name\n17,Car\n4,Game\n")
    message = _error(tmp_path, train=d / "train0001.tfrecord", vocabulary=vocab)
    assert (
        "vocabulary.csv: label 3861 of" in message
        and "train0001.tfrecord: record 0 (video 'aa01')" in message
    )
    with pytest.raises(ConfigError, match="--features 'rgb,depth'"):
        import_yt8m(tmp_path / "out", train=d / "train0001.tfrecord", features=["rgb", "depth"])


def test_a_failed_import_leaves_out_dir_unchanged(yt8m, tmp_path):
    d, _ = yt8m
    out = tmp_path / "out"
    import_yt8m(out, train=d / "train0001.tfrecord", features=["audio"])
    before = (out / "train.h5").read_bytes()
    broken = _write_tfrecord(
        tmp_path / "v.tfrecord",
        [_sequence_example({"id": _bytes_feature(b"zz"), "labels": _int64_feature([17])}, {})],
    )
    message = _error(tmp_path, train=d / "train0001.tfrecord", val=broken, features=["audio"])
    assert "no 'audio' frames" in message and "nothing was imported" in message
    assert (out / "train.h5").read_bytes() == before and [p.name for p in out.iterdir()] == ["train.h5"]
    (out / "test.h5").write_bytes(b"")
    assert "already holds ['test.h5']" in _error(tmp_path, train=d / "train0001.tfrecord")
