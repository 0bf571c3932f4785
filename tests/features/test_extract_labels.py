"""``vidcls extract VIDEO_ROOT OUT --labels CSV``: videos and (multi-)labels from a CSV.

Real tiny clips (tests/videos.py) go through a seeded random resnet18 at 32 px, 2 frames a video,
for the stores; the CSV checks, splits and ids need no decoding, so they scan placeholder files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import videos as V
from vidcls.cli import main
from vidcls.errors import ExtractError
from vidcls.features.extract import extract
from vidcls.features.labels_csv import scan_labelled_videos
from vidcls.store import FeatureStore

SMALL = dict(backbone="resnet18", weights="none", image_size=32, batch_size=4, device="cpu", frames=2)
SMALL_CLI = (
    "--backbone resnet18 --weights none --image-size 32 --batch-size 4 --device cpu --frames 2".split()
)
quiet = dict(progress=False, log=lambda *a: None, decode_workers=0)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def stored(out: Path, name: str) -> dict:
    """{video_id: label names} of OUT/name, and whether it is multi-label."""
    s = FeatureStore(out / name)
    try:
        sets = s.label_sets if s.multilabel else [[int(x)] for x in s.labels]
        labels = {vid: sorted(s.class_names[c] for c in sets[i]) for i, vid in enumerate(s.video_ids)}
        return {"multilabel": s.multilabel, "class_names": s.class_names, "labels": labels}
    finally:
        s.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """VIDEO_ROOT with six real clips under clips/ and one more that no CSV lists."""
    d = tmp_path_factory.mktemp("labelled") / "videos"
    for i, name in enumerate(("a", "b", "c", "d", "e", "f")):
        V.write_clip(d / "clips" / f"{name}.mp4", V.shapes_frames(6 + i, seed=i))
    V.write_clip(d / "unlisted" / "x.mp4", V.shapes_frames(6, seed=9))
    (d / "clips" / "notes.txt").write_text("not a video")
    return d


MULTI = """
video,label,split
clips/a.mp4,dog|outdoor,train
clips/b.mp4, music ,train
./clips/c.mp4,outdoor | music|dog,val
clips/d.mp4,dog,test
clips/missing.mp4,cat,train
clips/notes.txt,cat,train
"""


def test_multilabel_csv_gives_label_sets_in_the_given_splits(root, tmp_path):
    csv_path = write_csv(tmp_path / "labels.csv", MULTI)
    out = tmp_path / "feats"
    report = extract(root, out, **SMALL, labels=csv_path, **quiet)
    assert report["status"] == "complete" and report["layout"] == "csv-splits"
    assert report["labels_csv"] == str(csv_path)
    names = ["cat", "dog", "music", "outdoor"]  # every label of the CSV, sorted (cat: no video stored)
    train, val, test = (stored(out, f"{s}.h5") for s in ("train", "val", "test"))
    assert train == {
        "multilabel": True,
        "class_names": names,
        "labels": {"clips/a": ["dog", "outdoor"], "clips/b": ["music"]},
    }
    assert val["labels"] == {"clips/c": ["dog", "music", "outdoor"]} and val["multilabel"]
    assert test["labels"] == {"clips/d": ["dog"]} and test["multilabel"]
    by_path = {v["path"]: v for v in report["videos"]}
    assert "unlisted/x.mp4" not in by_path and "clips/e.mp4" not in by_path and len(by_path) == 6
    missing, notes = by_path["clips/missing.mp4"], by_path["clips/notes.txt"]
    assert (missing["status"], missing["reason"]) == ("skipped", "unreadable") and "line 6" in missing[
        "detail"
    ]
    assert (notes["status"], notes["reason"]) == ("skipped", "not_video")
    assert f"remove its row from {csv_path}" in notes["detail"]


def test_single_label_csv_gives_a_single_label_store_split_by_the_split_rule(root, tmp_path):
    rows = "".join(f"clips/{n}.mp4,{c}\n" for n, c in zip("abcdef", ["red", "blue"] * 3, strict=True))
    csv_path = write_csv(tmp_path / "labels.csv", "path,label\n" + rows)
    out = tmp_path / "feats"
    report = extract(root, out, **SMALL, split="50,50,0", labels=csv_path, **quiet)
    assert report["layout"] == "csv" and report["totals"]["all"]["ok"] == 6
    train, val = stored(out, "train.h5"), stored(out, "val.h5")
    assert not (out / "test.h5").exists()
    assert not train["multilabel"] and not val["multilabel"] and train["class_names"] == ["blue", "red"]
    both = {**train["labels"], **val["labels"]}
    assert both == {f"clips/{n}": [c] for n, c in zip("abcdef", ["red", "blue"] * 3, strict=True)}
    # 3 videos a class at 50 %: round(1.5) = 2 of each class in val, 1 in train
    assert sorted(c for [c] in val["labels"].values()) == ["blue", "blue", "red", "red"]


def test_sharded_extraction_writes_multilabel_shards_and_resumes(root, tmp_path, capsys):
    csv_path = write_csv(tmp_path / "labels.csv", MULTI)
    out = tmp_path / "shards"
    for i in range(2):
        assert (
            main(["extract", str(root), str(out), *SMALL_CLI, "--labels", str(csv_path), "--shard", f"{i}/2"])
            == 0
        )
    got: dict = {}
    files = sorted(out.glob("*-of-00002.h5"))
    assert files
    for f in files:
        part = stored(out, f.name)
        assert part["multilabel"] and part["class_names"] == ["cat", "dog", "music", "outdoor"]
        got.update(part["labels"])
    assert got == {
        "clips/a": ["dog", "outdoor"],
        "clips/b": ["music"],
        "clips/c": ["dog", "music", "outdoor"],
        "clips/d": ["dog"],
    }
    capsys.readouterr()
    assert (
        main(["extract", str(root), str(out), *SMALL_CLI, "--labels", str(csv_path), "--shard", "1/2"]) == 0
    )
    assert "0 to do" in capsys.readouterr().out  # the re-run shard finds its share stored


def test_resume_with_a_csv_extracts_only_new_rows_and_refuses_relabelled_videos(root, tmp_path, capsys):
    csv_path = write_csv(tmp_path / "labels.csv", "video,label\nclips/a.mp4,x|y\nclips/b.mp4,y\n")
    out = tmp_path / "feats"
    args = ["extract", str(root), str(out), *SMALL_CLI, "--split", "100,0,0", "--labels", str(csv_path)]
    assert main(args) == 0
    assert (
        "2 videos in 2 classes (csv layout, multi-label), 0 already stored, 2 to do"
        in capsys.readouterr().out
    )
    write_csv(csv_path, "video,label\nclips/a.mp4,x|y\nclips/b.mp4,y\nclips/e.mp4,x\n")
    assert main(args) == 0
    assert "2 already stored, 1 to do" in capsys.readouterr().out
    assert stored(out, "train.h5")["labels"] == {"clips/a": ["x", "y"], "clips/b": ["y"], "clips/e": ["x"]}
    before = (out / "train.h5").read_bytes()

    write_csv(csv_path, "video,label\nclips/a.mp4,x|y\nclips/b.mp4,x\n")  # b re-labelled
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "video 'clips/b' is stored with labels 'y' but --labels" in err and "now gives 'x'" in err
    write_csv(csv_path, "video,label\nclips/a.mp4,x\nclips/b.mp4,y\n")  # no row with two labels left
    assert main(args) == 2
    assert "is a multi-label store but the videos are now single-label" in capsys.readouterr().err
    assert (out / "train.h5").read_bytes() == before  # nothing written by the refused runs


# ---------------------------------------------------------------- the CSV, without decoding


@pytest.fixture
def fake_root(tmp_path) -> Path:
    """VIDEO_ROOT with placeholder .mp4 files (distinct bytes: no duplicates), never decoded."""
    d = tmp_path / "videos"
    for name in ("a", "b", "c"):
        (d / "sub").mkdir(parents=True, exist_ok=True)
        (d / "sub" / f"{name}.mp4").write_bytes(name.encode())
    return d


@pytest.mark.parametrize(
    "text,expected",
    [
        ("vid,label\nsub/a.mp4,x\n", "line 1: unknown column 'vid'"),
        ("video,split\nsub/a.mp4,train\n", "line 1: no label column"),
        ("video,path,label\nsub/a.mp4,sub/b.mp4,x\n", "line 1: a second video column"),
        ("video,label\nsub/a.mp4,x\n/abs/b.mp4,y\n", "line 3: video path '/abs/b.mp4' is absolute"),
        ("video,label\n../b.mp4,y\n", "line 2: video path '../b.mp4' leads out of VIDEO_ROOT"),
        ("video,label\nsub/../../b.mp4,y\n", "line 2: video path 'sub/../../b.mp4' leads out"),
        ("video,label\n,y\n", "line 2: empty video path"),
        (
            "video,label\nsub/a.mp4,x\nsub/b.mp4,y\n./sub/a.mp4,z\n",
            "line 4: video 'sub/a.mp4' is listed twice (also line 2)",
        ),
        ("video,label\nsub/a.mp4,x||y\n", "line 2 (video 'sub/a.mp4'): label set 'x||y' has an empty label"),
        ("video,label\nsub/a.mp4,\n", "line 2 (video 'sub/a.mp4'): empty label set"),
        ("video,label\nsub/a.mp4,x|x\n", "line 2 (video 'sub/a.mp4'): label set 'x|x' lists 'x' more"),
        ("video,label,split\nsub/a.mp4,x,train\nsub/b.mp4,x,training\n", "line 3: split 'training'"),
        ("video,label\nsub/a.mp4,x,extra\n", "line 2: 3 cells but the header has 2"),
        ("video,label\n", "no videos listed"),
        ("video,label\nnope/a.mp4,x\n", "exists under VIDEO_ROOT"),
    ],
)
def test_csv_errors_are_one_line_and_nothing_is_written(fake_root, tmp_path, capsys, text, expected):
    csv_path = write_csv(tmp_path / "labels.csv", text)
    out = tmp_path / "feats"
    assert main(["extract", str(fake_root), str(out), *SMALL_CLI, "--labels", str(csv_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidcls extract: error: ") and err.count("\n") == 1
    assert expected in err, err
    assert not out.exists()  # refused before anything was written


def test_a_missing_csv_is_a_one_line_error(fake_root, tmp_path, capsys):
    assert main(["extract", str(fake_root), str(tmp_path / "o"), "--labels", str(tmp_path / "no.csv")]) == 2
    err = capsys.readouterr().err
    assert "no.csv: no such file" in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("header", ["video,label", "path,label", "\ufeffVideo_Path , Label"])
def test_header_names_and_ids(fake_root, tmp_path, header):
    (fake_root / "sub" / "a.mkv").write_bytes(b"other a")
    text = f'{header}\nsub/a.mp4,x\n\nsub/a.mkv,y\n"sub/b.mp4","x|y"\n'
    vs = scan_labelled_videos(fake_root, write_csv(tmp_path / "l.csv", text), split="100,0,0")
    assert vs.layout == "csv" and vs.multilabel and vs.class_names == ["x", "y"]
    got = {j.video_id: (j.rel, j.label_set, j.split) for j in vs.jobs}
    assert got == {  # a.mp4 / a.mkv differ only in extension: they keep it in the id
        "sub/a.mp4": ("sub/a.mp4", [0], "train"),
        "sub/a.mkv": ("sub/a.mkv", [1], "train"),
        "sub/b": ("sub/b.mp4", [0, 1], "train"),
    }


def test_without_a_split_column_label_sets_are_stratified_by_their_rarest_label(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    rows = []
    for i in range(20):  # 10 "common|rare" and 10 "common": rare is the stratum of the first ten
        (root / f"v{i:02d}.mp4").write_bytes(f"video {i}".encode())
        rows.append(f"v{i:02d}.mp4,{'common|rare' if i < 10 else 'common'}")
    csv_path = write_csv(tmp_path / "l.csv", "video,label\n" + "\n".join(rows) + "\n")
    for seed in (1, 2, 3):
        vs = scan_labelled_videos(root, csv_path, split="50,50,0", seed=seed)
        val = [j for j in vs.jobs if j.split == "val"]
        assert len(val) == 10 and sum(j.label_set == [0, 1] for j in val) == 5
        again = scan_labelled_videos(root, csv_path, split="50,50,0", seed=seed)
        assert [(j.video_id, j.split) for j in again.jobs] == [(j.video_id, j.split) for j in vs.jobs]


def test_the_split_column_overrides_split_and_byte_identical_rows_are_kept_once(fake_root, tmp_path):
    (fake_root / "sub" / "copy.mp4").write_bytes(b"a")  # the same bytes as sub/a.mp4
    text = "video,label,split\nsub/a.mp4,x,test\nsub/b.mp4,y,val\nsub/copy.mp4,x,train\nsub/c.mp4,x,train\n"
    vs = scan_labelled_videos(fake_root, write_csv(tmp_path / "l.csv", text), split="10,90,0")
    assert vs.layout == "csv-splits" and not vs.multilabel
    got = [(j.rel, j.split) for j in vs.jobs]  # by split, then path
    assert got == [("sub/c.mp4", "train"), ("sub/copy.mp4", "train"), ("sub/b.mp4", "val")]
    assert vs.duplicates[0]["kept"] == "sub/copy.mp4"  # the earliest split keeps it, as with folders
    assert [(j.rel, code) for j, code, _ in vs.skipped] == [("sub/a.mp4", "duplicate")]


def test_video_root_that_is_not_a_folder_is_refused_before_the_csv_is_read(tmp_path):
    with pytest.raises(ExtractError, match="is not a directory; the paths in --labels"):
        scan_labelled_videos(tmp_path / "nowhere", tmp_path / "not-read.csv")
