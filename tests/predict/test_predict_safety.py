"""``vidcls predict`` never destroys what it did not write, and refuses a bad --output before any work.

* An --output file that holds anything but vidcls output of the same format (foreign JSON lines,
  non-JSON lines, a CSV where JSON lines are asked for, ...) is refused with one line naming the file,
  left byte-identical; only the torn last line of our own JSON lines (a killed run) is ever dropped.
* An --output that is one of the inputs (also through a link, a hard link, or a file found in an input
  folder), a directory, a device, a read-only file or in a folder that cannot be written is refused
  before the run is loaded.
* A run trained on imported features (no extractor record) gives each video an error record and
  predicts the .npy inputs beside them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from vidcls.cli import main
from vidcls.errors import ConfigError
from vidcls.predict import predictor as predictor_module
from vidcls.predict.batch import run_predict
from vidcls.predict.inputs import error_record
from vidcls.predict.outputs import CSV_FIELDS, read_jsonl

D = 8
# tests/conftest.py's TINY_ARGS: importing it by the name "conftest" clashes with tests/serve/conftest.py
TINY_ARGS = (
    "--model bilstm_attn --min-steps 1 --hidden-dim 16 --layers 1 --heads 2 --workers 0 --device cpu"
).split()
FORMATS = ("jsonl", "csv", "json", "table")


# ---- a tiny run trained on imported features (no extractor record) ----------------------------
@pytest.fixture(scope="module")
def imported_run(tmp_path_factory) -> Path:
    """A 1-member run trained (1 epoch) on features brought in by ``vidcls import npy``: its
    checkpoint carries no extractor record, so it can read .npy features but no video."""
    root = tmp_path_factory.mktemp("imported_run")
    rng = np.random.default_rng(0)
    rows = ["video_id,label,split"]
    for i in range(36):
        label = ("a", "b")[i % 2]
        x = rng.normal(size=(int(rng.integers(4, 10)), D)).astype(np.float32) + (
            2.0 if label == "a" else -2.0
        )
        np.save(_mkdir(root / "npy") / f"v{i:02d}.npy", x)
        rows.append(f"v{i:02d},{label},{('train', 'train', 'val', 'test')[(i // 2) % 4]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    assert main(["import", "npy", str(root / "npy"), str(root / "labels.csv"), str(root / "feats")]) == 0
    assert (
        main(
            [
                "train",
                str(root / "feats"),
                str(root / "run"),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--no-plots",
                *TINY_ARGS,
            ]
        )
        == 0
    )
    return root / "run"


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _npy(path: Path, t: int = 6, d: int = D, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(seed).normal(size=(t, d)).astype(np.float32))
    return path


@pytest.fixture
def no_load(monkeypatch):
    """Loading the run is the first piece of work: a refusal must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the run was loaded although --output had to be refused first")

    monkeypatch.setattr(predictor_module, "load", refuse)


def _one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


class Fake:
    """A predictor that records what it was asked (a deterministic record per input)."""

    classes_ = ("a", "b")
    feature_dim_ = D

    def __init__(self):
        self.calls = []

    def predict_records(self, x, top_k=3):
        self.calls.append(len(x))
        return [
            {
                **error_record("?", "x"),
                "label": "a",
                "error": None,
                "trusted": True,
                "trust_reason": "ok",
                "top_k": [{"class": "a", "probability": 0.9}],
            }
            for _ in x
        ]


# ---- 1. foreign content in the --output file ---------------------------------------------------
def test_foreign_lines_in_a_jsonl_output_are_refused_untouched(imported_run, tmp_path, capsys):
    mine = tmp_path / "mine.jsonl"
    mine.write_bytes(b'{"my":"data"}\nnot json\n')
    before = mine.read_bytes()
    n = _npy(tmp_path / "n.npy")
    assert main(["predict", str(imported_run), str(n), "--output", str(mine), "--device", "cpu"]) == 2
    err = _one_line_error(capsys, str(mine), "--output")
    assert "delete" in err
    assert mine.read_bytes() == before


def test_a_csv_is_not_wiped_by_a_rerun_that_asks_for_json_lines(imported_run, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    n = _npy(tmp_path / "n.npy")
    assert (
        main(
            ["predict", str(imported_run), str(n), "--output", str(out), "--format", "csv", "--device", "cpu"]
        )
        == 0
    )
    capsys.readouterr()
    written = out.read_bytes()
    assert written.startswith(",".join(CSV_FIELDS).encode())
    assert main(["predict", str(imported_run), str(n), "--output", str(out), "--device", "cpu"]) == 2
    _one_line_error(capsys, str(out), "csv")
    assert out.read_bytes() == written


def test_a_bad_line_in_the_middle_of_our_records_is_refused_not_dropped(tmp_path):
    out = tmp_path / "p.jsonl"
    good = [json.dumps(error_record(f"v{i}", "e")) for i in range(3)]
    out.write_text(f"{good[0]}\nnot json\n{good[1]}\n{good[2]}\n")
    before = out.read_bytes()
    with pytest.raises(ConfigError, match="p.jsonl"):
        read_jsonl(out)
    assert out.read_bytes() == before


def test_only_a_torn_tail_of_our_own_records_is_dropped(tmp_path):
    good = [json.dumps(error_record(f"v{i}", "e")) for i in range(2)]
    out = tmp_path / "p.jsonl"
    out.write_text(f"{good[0]}\n{good[1]}\n" + '{"input": "v2", "lab')  # killed while writing v2
    assert [r["input"] for r in read_jsonl(out)] == ["v0", "v1"]
    assert out.read_text() == f"{good[0]}\n{good[1]}\n"
    other = tmp_path / "q.jsonl"
    other.write_text(f"{good[0]}\nsomebody's note without a newline")
    before = other.read_bytes()
    with pytest.raises(ConfigError, match="q.jsonl"):
        read_jsonl(other)
    assert other.read_bytes() == before


FOREIGN = {
    "foreign json lines": b'{"my": "data"}\n{"input": 3}\n',
    "plain text": b"my notes\nmore notes\n",
    "binary": bytes(range(256)) * 4,
    "a json object": b'{"input": "x", "note": "mine, without a newline"}',
    "foreign csv": b"input,label\nx,a\n",
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("content", sorted(FOREIGN))
def test_foreign_files_are_refused_in_every_format(tmp_path, fmt, content):
    out = tmp_path / f"out.{fmt}"
    out.write_bytes(FOREIGN[content])
    fake = Fake()
    with pytest.raises(ConfigError, match=r"out\." + fmt):
        run_predict(fake, [_npy(tmp_path / "n.npy")], fmt=fmt, output=out, progress=False)
    assert fake.calls == [] and out.read_bytes() == FOREIGN[content]


@pytest.mark.parametrize("written", FORMATS)
@pytest.mark.parametrize("asked", FORMATS)
def test_vidcls_output_of_another_format_is_refused_the_same_format_is_replaced_or_resumed(
    tmp_path, written, asked
):
    out = tmp_path / "out.txt"
    inputs = [_npy(tmp_path / f"n{i}.npy", seed=i) for i in range(2)]
    run_predict(Fake(), inputs[:1], fmt=written, output=out, progress=False)
    before = out.read_bytes()
    fake = Fake()
    if written != asked:
        with pytest.raises(ConfigError, match=f"{written}.*delete"):
            run_predict(fake, inputs, fmt=asked, output=out, progress=False)
        assert fake.calls == [] and out.read_bytes() == before
        return
    summary = run_predict(fake, inputs, fmt=asked, output=out, progress=False)
    text = out.read_text()
    if asked == "jsonl":  # resumed: the first input is skipped, the second appended
        assert (summary.skipped, summary.predicted) == (1, 1) and text.startswith(before.decode())
        assert [json.loads(line)["input"] for line in text.splitlines()] == [str(p) for p in inputs]
    else:  # replaced by this run's records
        assert summary.predicted == 2 and all(str(p) in text for p in inputs)


def test_an_empty_output_file_is_used(tmp_path):
    for fmt in FORMATS:
        out = tmp_path / f"empty.{fmt}"
        out.write_bytes(b"")
        assert (
            run_predict(Fake(), [_npy(tmp_path / "n.npy")], fmt=fmt, output=out, progress=False).predicted
            == 1
        )


# ---- 2. --output that is an input, a directory, a device, unwritable ---------------------------
@pytest.mark.parametrize("name", ["victim.mp4", "victim.npy"])
def test_output_naming_an_input_is_refused_before_loading(imported_run, tmp_path, capsys, no_load, name):
    victim = tmp_path / name
    if name.endswith(".npy"):
        _npy(victim)
    else:
        victim.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    before = victim.read_bytes()
    t0 = time.perf_counter()
    assert main(["predict", str(imported_run), str(victim), "--output", str(victim)]) == 2
    assert time.perf_counter() - t0 < 5
    _one_line_error(capsys, str(victim), "input")
    assert victim.read_bytes() == before


def test_output_reaching_an_input_through_links_or_a_folder_is_refused(
    imported_run, tmp_path, capsys, no_load
):
    folder = tmp_path / "inputs"
    victim = _npy(folder / "sub" / "victim.npy")
    before = victim.read_bytes()
    (tmp_path / "link.csv").symlink_to(victim)
    os.link(victim, tmp_path / "hard.json")
    cases = [
        ([str(victim)], tmp_path / "link.csv"),  # a symbolic link to the input
        ([str(victim)], tmp_path / "hard.json"),  # a hard link to it
        ([str(folder)], victim),  # a file found in an input folder
        ([str(tmp_path / "link.csv")], victim),  # the input given through a link
        ([str(folder)], folder / "sub" / ".." / "sub" / "victim.npy"),
    ]
    for inputs, output in cases:
        assert (
            main(["predict", str(imported_run), *inputs, "--output", str(output), "--format", "jsonl"]) == 2
        )
        _one_line_error(capsys, "input")
        assert victim.read_bytes() == before


def test_output_that_is_a_directory_a_device_or_under_a_file_is_refused_before_loading(
    imported_run, tmp_path, capsys, no_load
):
    n = _npy(tmp_path / "n.npy")
    (tmp_path / "afile").write_text("x")
    cases = [str(tmp_path), str(tmp_path / "afile" / "p.csv"), str(tmp_path / "afile" / "deeper" / "p.jsonl")]
    if os.path.exists("/dev/full"):
        cases.append("/dev/full")
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "gone" / "x.jsonl")
    cases.append(str(tmp_path / "dangling.jsonl"))
    for output in cases:
        for fmt in ("jsonl", "csv"):
            assert main(["predict", str(imported_run), str(n), "--output", output, "--format", fmt]) == 2
            _one_line_error(capsys, output)
    assert (tmp_path / "afile").read_text() == "x"


def test_a_read_only_output_or_folder_is_refused_before_loading(
    imported_run, tmp_path, capsys, no_load, monkeypatch
):
    n = _npy(tmp_path / "n.npy")
    ro = tmp_path / "ro.jsonl"
    ro.write_bytes(b"")
    ro.chmod(0o444)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: answer as the file system would answer a user
        real = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and os.path.abspath(path) in (str(ro), str(locked)):
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    try:
        for output in (ro, locked / "p.csv", locked / "new" / "p.jsonl"):
            assert main(["predict", str(imported_run), str(n), "--output", str(output)]) == 2
            _one_line_error(capsys, str(output))
        assert ro.read_bytes() == b"" and list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_csv_output_through_a_link_writes_the_file_it_points_to(tmp_path):
    real = tmp_path / "real" / "p.csv"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "p.csv"
    link.symlink_to(real)
    run_predict(Fake(), [_npy(tmp_path / "n.npy")], fmt="csv", output=link, progress=False)
    assert link.is_symlink() and len(list(csv.DictReader(real.open()))) == 1


# ---- 11. a run without an extractor record, given videos and .npy files ------------------------
def test_imported_run_gives_videos_error_records_and_predicts_the_features(imported_run, tmp_path, capsys):
    import videos as V

    a, b = _npy(tmp_path / "a.npy", seed=2), _npy(tmp_path / "b.npy", seed=3)
    clip = tmp_path / "clip.mp4"
    V.write_clip(clip, V.shapes_frames(8, seed=0))
    junk = tmp_path / "junk.mkv"
    junk.write_bytes(b"not a video")
    out = tmp_path / "p.jsonl"
    inputs = [a, clip, b, junk]
    assert (
        main(["predict", str(imported_run), *map(str, inputs), "--output", str(out), "--device", "cpu"]) == 0
    )
    assert "4 inputs: 2 predicted, 2 could not be used" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in inputs]
    assert [r["error"] is None for r in records] == [True, False, True, False]
    for r in (records[1], records[3]):
        assert "extractor record" in r["error"] and ".npy" in r["error"] and r["label"] is None
    assert all(r["label"] in ("a", "b") for r in (records[0], records[2]))
    # only videos: every record an error, still written, exit status 3
    assert main(["predict", str(imported_run), str(clip), "--format", "csv", "--device", "cpu"]) == 3
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == 1 and "extractor record" in rows[0]["error"]
    assert "1 inputs: 0 predicted, 1 could not be used" in captured.err


# ---- hostile feature files and inputs ------------------------------------------------------------
def test_bad_feature_arrays_are_error_records_with_a_right_count(imported_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    bad = {
        "empty.npy": np.zeros((0, D), np.float32),
        "wide.npy": rng.normal(size=(5, D + 1)),
        "flat.npy": rng.normal(size=D),
        "cube.npy": rng.normal(size=(2, 5, D)),
        "nan.npy": np.full((3, D), np.nan),
        "complex.npy": rng.normal(size=(5, D)) + 1j,
        "bool.npy": np.ones((5, D), bool),
    }
    for name, x in bad.items():
        np.save(tmp_path / name, x)
    good = _npy(tmp_path / "good.npy")
    paths = [str(tmp_path / name) for name in bad]
    assert main(["predict", str(imported_run), *paths, "--format", "json", "--device", "cpu"]) == 3
    captured = capsys.readouterr()
    records = {Path(r["input"]).name: r for r in json.loads(captured.out)}
    assert set(records) == set(bad) and all(r["error"] and r["label"] is None for r in records.values())
    assert "complex" in records["complex.npy"]["error"]
    assert f"{len(bad)} inputs: 0 predicted, {len(bad)} could not be used" in captured.err
    assert (
        main(["predict", str(imported_run), *paths, str(good), "--format", "jsonl", "--device", "cpu"]) == 0
    )
    assert f"{len(bad) + 1} inputs: 1 predicted, {len(bad)} could not be used" in capsys.readouterr().err


def test_same_input_twice_and_an_output_inside_the_input_folder(imported_run, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    a = _npy(folder / "a.npy")
    _npy(folder / "b.npy", seed=4)
    out = folder / "preds.jsonl"
    monkeypatch.chdir(tmp_path)
    args = [
        "predict",
        str(imported_run),
        "in/a.npy",
        "in/a.npy",
        "./in/a.npy",
        str(a),
        "in",
        "--output",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert "2 inputs: 2 predicted" in capsys.readouterr().out
    assert sorted(Path(json.loads(x)["input"]).name for x in out.read_text().splitlines()) == [
        "a.npy",
        "b.npy",
    ]
    assert main(args) == 0  # the output file in the folder is not an input; the rerun skips both
    assert "2 inputs: 0 predicted, 2 already in" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 2


def test_an_empty_folder_and_an_unmatched_glob_are_one_line_errors(imported_run, tmp_path, capsys, no_load):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(imported_run), str(tmp_path / "empty")]) == 2
    _one_line_error(capsys, "no inputs found")
    assert main(["predict", str(imported_run), str(tmp_path / "*.mp4")]) == 2
    _one_line_error(capsys, "no such file")


def test_disk_full_in_the_middle_names_the_file_and_keeps_the_lines_before(
    imported_run, tmp_path, capsys, monkeypatch
):
    import errno

    from vidcls.predict import batch
    from vidcls.predict.outputs import JsonlAppender

    class Full:
        """A file on a disk that fills up after ``room`` bytes (what /dev/full does from the start)."""

        def __init__(self, fh, room):
            self.fh, self.room = fh, room

        def write(self, data):
            if len(data) > self.room:
                self.fh.write(data[: self.room])
                self.room = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    class FillingUp(JsonlAppender):
        def __init__(self, path):
            super().__init__(path)
            self.fh = Full(self.fh, room=1500)

    monkeypatch.setattr(batch, "JsonlAppender", FillingUp)
    inputs = [str(_npy(tmp_path / f"n{i}.npy", seed=i)) for i in range(6)]
    out = tmp_path / "p.jsonl"
    assert (
        main(
            [
                "predict",
                str(imported_run),
                *inputs,
                "--output",
                str(out),
                "--device",
                "cpu",
                "--batch-size",
                "1",
            ]
        )
        == 2
    )
    err = _one_line_error(capsys, str(out), "space")
    assert "Traceback" not in err
    written = read_jsonl(out)  # the whole lines stay; the torn one is dropped
    assert 1 <= len(written) < 6 and [r["input"] for r in written] == inputs[: len(written)]
    monkeypatch.setattr(batch, "JsonlAppender", JsonlAppender)
    assert main(["predict", str(imported_run), *inputs, "--output", str(out), "--device", "cpu"]) == 0
    assert f"{6 - len(written)} predicted, {len(written)} already in" in capsys.readouterr().out
    assert [json.loads(line)["input"] for line in out.read_text().splitlines()] == inputs


def test_a_last_record_without_its_newline_is_kept_and_the_next_one_goes_on_a_line_of_its_own(tmp_path):
    out = tmp_path / "p.jsonl"
    first = json.dumps(error_record(str(tmp_path / "n0.npy"), "e"))
    out.write_text(first)  # written by hand, or the newline lost: a whole record all the same
    inputs = [tmp_path / "n0.npy", _npy(tmp_path / "n1.npy")]
    summary = run_predict(Fake(), inputs, fmt="jsonl", output=out, progress=False)
    assert (summary.skipped, summary.predicted) == (1, 1)
    lines = out.read_text().splitlines()
    assert lines[0] == first and [json.loads(x)["input"] for x in lines] == [str(p) for p in inputs]


def test_a_jsonl_output_another_run_is_writing_is_refused(tmp_path):
    """Two runs appending to one file would each predict every input again: the second is refused."""
    from vidcls.errors import RunLockedError
    from vidcls.predict.outputs import JsonlAppender

    out = tmp_path / "p.jsonl"
    first = JsonlAppender(out)
    try:
        with pytest.raises(RunLockedError, match="is being written by another vidcls predict"):
            JsonlAppender(out)
    finally:
        first.close()
    JsonlAppender(out).close()  # free again once the first has closed it
