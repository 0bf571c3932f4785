"""The many-inputs runner behind ``vidcls predict``: inputs, formats, resume, broken files."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from vidcls.errors import ConfigError
from vidcls.predict.batch import PredictOptions, run_predict
from vidcls.predict.collect import collect_inputs
from vidcls.predict.inputs import error_record
from vidcls.predict.outputs import CSV_FIELDS, format_records, read_jsonl

RECORD_KEYS = {
    "input",
    "label",
    "top_k",
    "probabilities",
    "trusted",
    "trust_reason",
    "ood_score",
    "ood_scores",
    "frames",
    "timings",
    "error",
}


class FakePredictor:
    """Stands in for a loaded run: a deterministic record per input, and a log of what it was asked.

    A video "decodes" when its bytes start with b"VIDEO"; its class is fixed by the file name.
    """

    classes_ = ["cat", "dog", "$5_<b>"]
    feature_dim_ = 4

    def __init__(self):
        self.calls: list[list[str]] = []

    def _record(self, name: str, seed: int, frames: int) -> dict:
        logits = np.asarray([seed % 3 == 0, seed % 3 == 1, seed % 3 == 2], float) * 2.0
        p = np.exp(logits) / np.exp(logits).sum()
        order = np.argsort(-p)
        att = np.full(frames, 1.0 / frames)
        return {
            "input": name,
            "label": self.classes_[order[0]],
            "top_k": [{"class": self.classes_[i], "probability": float(p[i])} for i in order[: self._k]],
            "probabilities": {c: float(v) for c, v in zip(self.classes_, p)},
            "trusted": seed % 2 == 0,
            "trust_reason": "in distribution" if seed % 2 == 0 else "low score",
            "ood_score": float(seed),
            "ood_scores": {"energy": float(seed)},
            "frames": [{"index": i, "timestamp_ms": None, "attention": float(a)} for i, a in enumerate(att)],
            "timings": {"decode_s": 0.0, "features_s": 0.0, "model_s": 0.001},
            "error": None,
        }

    def predict_records(self, x, top_k=3):
        self._k = top_k
        items = x if isinstance(x, list) else [x]
        out = []
        self.calls.append([str(i) if not isinstance(i, np.ndarray) else f"array{i.shape}" for i in items])
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray):
                out.append(self._record(f"features[{i}]", int(abs(item.sum())), len(item)))
                continue
            data = Path(item).read_bytes()
            if not data.startswith(b"VIDEO"):
                out.append(error_record(str(item), f"{item}: FFmpeg cannot open it"))
            else:
                out.append(self._record(str(item), len(Path(item).name), 5))
        return out


def _video(path: Path, body: bytes = b"VIDEO") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def _predicted(calls) -> list[str]:
    return [name for call in calls for name in call]


# ---- inputs -----------------------------------------------------------------------------------
def test_collect_inputs_recursive_sorted_and_links_kept_inside(tmp_path):
    root = tmp_path / "in"
    for rel in ("b.mp4", "a/z.mkv", "a/c.MOV", "feats/x.npy", "notes.txt", ".hidden.mp4", ".cache/d.mp4"):
        _video(root / rel)
    outside = tmp_path / "outside"
    _video(outside / "o.mp4")
    os.symlink(outside, root / "link_out")  # leads out of the folder: not followed
    os.symlink(root / "a", root / "link_in")  # a second way into a/: its files count once
    os.symlink(root / "b.mp4", root / "b_link.mp4")  # a file link is read like the file (once)
    got = collect_inputs([root])
    assert [p.relative_to(root).as_posix() for p in got] == ["a/c.MOV", "a/z.mkv", "b.mp4", "feats/x.npy"]
    # a file named directly is taken whatever its extension; the same file twice counts once
    got = collect_inputs([root / "notes.txt", root / "b.mp4", root])
    assert [p.relative_to(root).as_posix() for p in got] == [
        "notes.txt",
        "b.mp4",
        "a/c.MOV",
        "a/z.mkv",
        "feats/x.npy",
    ]


def test_collect_inputs_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no inputs found"):
        collect_inputs([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="no such file"):
        collect_inputs([tmp_path / "missing.mp4"])


# ---- formats ----------------------------------------------------------------------------------
def _inputs(tmp_path, n=3) -> list[Path]:
    return [_video(tmp_path / "v" / f"clip{'x' * i}.mp4") for i in range(n)]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table"])
def test_formats_parse_with_expected_fields(tmp_path, fmt):
    inputs = _inputs(tmp_path) + [_video(tmp_path / "v" / "broken.mp4", b"\x00junk")]
    buf = io.StringIO()
    summary = run_predict(FakePredictor(), inputs, fmt=fmt, top_k=2, stdout=buf, progress=False)
    assert (summary.total, summary.predicted, summary.errors) == (4, 4, 1)
    text = buf.getvalue()
    if fmt == "json":
        records = json.loads(text)
    elif fmt == "jsonl":
        records = [json.loads(line) for line in text.splitlines()]
    if fmt in ("json", "jsonl"):
        assert [r["input"] for r in records] == [str(p) for p in inputs]
        for r in records:
            assert set(r) == RECORD_KEYS
        ok, bad = records[:3], records[3]
        assert all(len(r["top_k"]) == 2 and r["error"] is None for r in ok)
        assert ok[0]["top_k"][0]["class"] == ok[0]["label"]
        assert bad["label"] is None and "cannot open" in bad["error"]
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert tuple(rows[0]) == CSV_FIELDS
        assert [r["input"] for r in rows] == [str(p) for p in inputs]
        first = rows[0]
        classes = [part.split(":")[0] for part in first["top_k"].split(";")]
        probs = [float(part.rsplit(":", 1)[1]) for part in first["top_k"].split(";")]
        assert len(classes) == 2 and classes[0] == first["label"]
        assert float(first["prob"]) == pytest.approx(probs[0], abs=1e-6)
        assert first["trusted"] in ("true", "false") and first["error"] == ""
        assert rows[3]["label"] == "" and "cannot open" in rows[3]["error"]
    else:
        lines = text.splitlines()
        assert lines[0].split() == ["input", "label", "prob", "trusted", "note"]
        assert len(lines) == 5 and "ERROR" in lines[4]


def test_output_file_written_whole_for_json_and_csv(tmp_path):
    out = tmp_path / "out" / "preds.csv"
    summary = run_predict(FakePredictor(), _inputs(tmp_path), fmt="csv", output=out, progress=False)
    assert summary.output == out and len(list(csv.DictReader(out.open()))) == 3
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    # a second run replaces the file (only jsonl appends)
    run_predict(FakePredictor(), _inputs(tmp_path, 2), fmt="csv", output=out, progress=False)
    assert len(list(csv.DictReader(out.open()))) == 2


def test_format_follows_the_output_extension_unless_given():
    from vidcls.predict.outputs import format_for

    assert [format_for(o) for o in (None, "p.JSONL", "p.json", "p.csv", "p.txt")] == [
        "table",
        "jsonl",
        "json",
        "csv",
        "table",
    ]
    assert format_for("p.jsonl", "csv") == "csv"


def test_non_finite_numbers_become_null():
    rec = {**error_record("x", "e"), "ood_score": float("nan")}
    assert json.loads(format_records([rec], "jsonl"))["ood_score"] is None


# ---- resume -----------------------------------------------------------------------------------
def test_resume_skips_written_inputs_and_drops_torn_line(tmp_path):
    inputs = _inputs(tmp_path, 4)
    out = tmp_path / "preds.jsonl"
    options = PredictOptions(fmt="jsonl", output=out)
    first = FakePredictor()
    run_predict(first, inputs[:2], options, progress=False)
    assert len(out.read_text().splitlines()) == 2
    with open(out, "ab") as fh:  # a run killed while writing its third line
        fh.write(b'{"input": "' + str(inputs[2]).encode() + b'", "label": "c')
    again = FakePredictor()
    summary = run_predict(again, inputs, options, progress=False)
    assert _predicted(again.calls) == [str(p) for p in inputs[2:]]
    assert (summary.skipped, summary.predicted) == (2, 2)
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and out.read_text().endswith("\n")
    assert [json.loads(line)["input"] for line in lines] == [str(p) for p in inputs]
    # complete: a third run predicts nothing and leaves the file alone
    third = FakePredictor()
    summary = run_predict(third, inputs, options, progress=False)
    assert third.calls == [] and summary.skipped == 4 and len(out.read_text().splitlines()) == 4


def test_read_jsonl_refuses_a_bad_line_in_the_middle_and_leaves_the_file(tmp_path):
    out = tmp_path / "p.jsonl"
    good = [json.dumps(error_record(f"v{i}", "e")) for i in range(3)]
    out.write_text(f"{good[0]}\nnot json\n{good[1]}\n{good[2]}\n")
    before = out.read_bytes()
    with pytest.raises(ConfigError, match="line 2 is not a vidcls record"):
        read_jsonl(out)
    assert out.read_bytes() == before  # only a torn last line is ever dropped
    assert read_jsonl(tmp_path / "missing.jsonl") == []


# ---- broken inputs ----------------------------------------------------------------------------
def test_broken_files_in_a_folder_are_records_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "videos"
    _video(folder / "a.mp4")
    _video(folder / "b_broken.mp4", b"\x00\x01 not a video")
    _video(folder / "c.mp4")
    buf = io.StringIO()
    fake = FakePredictor()
    summary = run_predict(
        fake, collect_inputs([folder]), fmt="jsonl", stdout=buf, batch_size=2, progress=False
    )
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [r["error"] is None for r in records] == [True, False, True]
    assert records[1]["label"] is None and records[1]["input"].endswith("b_broken.mp4")
    assert summary.errors == 1 and "1 could not be used" in summary.line()
    assert [len(c) for c in fake.calls] == [2, 1]  # --batch-size inputs per model call


def test_feature_files_are_inputs_and_bad_ones_are_error_records(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((5, 4), np.float32))
    np.save(tmp_path / "b_wrong_dim.npy", np.ones((5, 3), np.float32))
    np.save(tmp_path / "c_1d.npy", np.ones(4, np.float32))
    (tmp_path / "d_garbage.npy").write_bytes(b"nonsense")
    np.save(tmp_path / "e_nan.npy", np.full((2, 4), np.nan, np.float32))
    np.save(tmp_path / "f.npy", np.zeros((3, 4), np.float64))
    buf = io.StringIO()
    fake = FakePredictor()
    run_predict(fake, collect_inputs([tmp_path]), fmt="json", stdout=buf, progress=False)
    records = {Path(r["input"]).name: r for r in json.loads(buf.getvalue())}
    assert fake.calls == [["array(5, 4)", "array(3, 4)"]]  # one model call for the usable ones
    assert records["a.npy"]["error"] is None and len(records["a.npy"]["frames"]) == 5
    assert records["f.npy"]["error"] is None
    assert "D=3" in records["b_wrong_dim.npy"]["error"]
    assert "(T, D)" in records["c_1d.npy"]["error"]
    assert "is not a .npy array file" in records["d_garbage.npy"]["error"]
    assert "NaN" in records["e_nan.npy"]["error"]


def test_bad_options_are_user_errors(tmp_path):
    for kwargs in ({"fmt": "xml"}, {"top_k": 0}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            run_predict(FakePredictor(), _inputs(tmp_path, 1), progress=False, **kwargs)
        with pytest.raises(ConfigError):
            PredictOptions(**kwargs)
    with pytest.raises(TypeError, match="either options or settings"):
        run_predict(FakePredictor(), _inputs(tmp_path, 1), PredictOptions(), top_k=2, progress=False)


# ---- the command line -------------------------------------------------------------------------
def test_cli_user_errors_exit_2_with_one_line(tmp_path, run_cli, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "empty").mkdir()
    assert run_cli("predict", run_dir, tmp_path / "empty") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no inputs found" in err
    _video(tmp_path / "v.mp4")
    assert run_cli("predict", tmp_path / "no_run", tmp_path / "v.mp4") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run directory" in err


# ---- overlapped decoding ----------------------------------------------------------------------
class PipelineFake(FakePredictor):
    """A predictor that exposes its frame encoder, sampling and quality filter."""

    encoder_, sampling_, quality_ = object(), object(), object()


def test_pipeline_path_keeps_order_fills_timestamps_and_survives_a_decoder_crash(tmp_path, monkeypatch):
    """A worker crash (a decoder dying on some file) costs that file an error record, nothing more."""
    from vidcls.errors import ExtractError
    from vidcls.features import pipeline

    names = ["a.mp4", "b.mp4", "crash.mp4", "d.mp4", "e.mp4"]
    paths = [_video(tmp_path / n) for n in names]
    calls = []

    def fake_iter(ps, encoder, sampling, quality, *, decode_workers=2, stats=None):
        calls.append(([Path(p).name for p in ps], decode_workers))
        for i, p in enumerate(ps):
            if "crash" in p:
                raise ExtractError(f"a decode worker died while decoding one of: {p}")
            yield pipeline.VideoResult(
                i,
                "ok",
                np.full((3, 4), i, np.float32),
                np.asarray([0.0, 500.0, 1000.0]),
                info={"decode_s": 0.5, "cnn_s": 0.25},
            )

    monkeypatch.setattr(pipeline, "iter_features", fake_iter)
    monkeypatch.setattr(pipeline, "PREFETCH", 1)  # the window decoded one by one: 2 * workers * 1
    buf = io.StringIO()
    run_predict(
        PipelineFake(), paths, fmt="jsonl", stdout=buf, batch_size=2, decode_workers=1, progress=False
    )
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [Path(r["input"]).name for r in records] == names
    assert [r["error"] is None for r in records] == [True, True, False, True, True]
    assert "decoder crashed" in records[2]["error"]
    assert [f["timestamp_ms"] for f in records[0]["frames"]] == [0.0, 500.0, 1000.0]
    assert records[0]["timings"]["decode_s"] == 0.5 and records[0]["timings"]["features_s"] == 0.25
    # all five at once, then the two in flight one by one, then the rest in one pipeline again
    assert calls == [(names, 1), (["crash.mp4"], 1), (["d.mp4"], 1), (["e.mp4"], 1)]


# ---- end to end: clips -> extract -> train -> predict -------------------------------------------
SMALL_EXTRACT = (
    "--backbone resnet18 --weights none --image-size 32 --batch-size 4 --device cpu --frames 4 "
    "--decode-workers 0 --split 50,25,25"
).split()


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """A tiny run trained on features extracted from generated clips (random resnet18 at 32 px)."""
    import videos as V
    from vidcls.cli import main

    root = tmp_path_factory.mktemp("predict_e2e")
    colors = {"red": (220, 40, 40), "blue": (40, 40, 220)}
    for name, color in colors.items():
        for i in range(4):
            V.write_clip(root / "clips" / name / f"{name}{i}.mp4", V.shapes_frames(20, color=color, seed=i))
    assert main(["extract", str(root / "clips"), str(root / "feats"), *SMALL_EXTRACT]) == 0
    args = ["--hidden-dim", "16", "--layers", "1", "--heads", "2", "--workers", "0", "--device", "cpu"]
    assert (
        main(
            [
                "train",
                str(root / "feats"),
                str(root / "run"),
                *args,
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--no-plots",
            ]
        )
        == 0
    )
    new = root / "new"
    for name, color in colors.items():
        V.write_clip(new / f"{name}_new.mp4", V.shapes_frames(30, color=color, seed=9))
    V.corrupt(new / "sub" / "broken.mp4")
    np.save(new / "sub" / "feats.npy", np.random.default_rng(0).normal(size=(5, 512)).astype(np.float32))
    return root


def test_cli_predict_end_to_end_resumable_with_timelines(video_run, run_cli, capsys):
    from vidcls.predict.predictor import load

    run, new = video_run / "run", video_run / "new"
    out, tl = video_run / "out" / "preds.jsonl", video_run / "timelines"
    assert (
        run_cli(
            "predict",
            run,
            new,
            "--output",
            out,
            "--timeline",
            tl,  # jsonl from the extension
            "--device",
            "cpu",
            "--decode-workers",
            "1",
            "--top-k",
            "2",
        )
        == 0
    )
    summary = capsys.readouterr().out
    assert "4 inputs: 3 predicted, 1 could not be used" in summary  # the broken one is not counted twice
    records = {Path(r["input"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"blue_new.mp4", "red_new.mp4", "broken.mp4", "feats.npy"}
    assert records["broken.mp4"]["label"] is None and records["broken.mp4"]["error"]
    clip = records["red_new.mp4"]
    assert set(clip) == RECORD_KEYS | {"ood"} and len(clip["top_k"]) == 2 and clip["label"] in ("red", "blue")
    assert len(clip["frames"]) == 4 and all(f["timestamp_ms"] is not None for f in clip["frames"])
    assert sum(f["attention"] for f in clip["frames"]) == pytest.approx(1.0, abs=1e-4)
    assert records["feats.npy"]["error"] is None
    # the overlapped pipeline gives what the predictor gives for the same video on its own
    own = load(run, device="cpu").predict_records([clip["input"]], top_k=2)[0]
    assert own["probabilities"] == pytest.approx(clip["probabilities"], abs=1e-5)
    assert [f["timestamp_ms"] for f in own["frames"]] == [f["timestamp_ms"] for f in clip["frames"]]
    pngs = sorted(p.name for p in tl.iterdir())
    assert pngs == ["blue_new.mp4.png", "red_new.mp4.png", "sub__feats.npy.png"]  # named below NEW
    # a rerun finds everything written and predicts nothing
    assert run_cli("predict", run, new, "--format", "jsonl", "--output", out, "--device", "cpu") == 0
    assert "0 predicted, 4 already in" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 4
    # other formats go to stdout; the summary to stderr
    assert run_cli("predict", run, new / "red_new.mp4", "--format", "csv", "--device", "cpu") == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == 1 and rows[0]["label"] in ("red", "blue") and "1 inputs" in captured.err


def test_cli_predict_exits_3_when_no_input_could_be_used(video_run, run_cli, capsys):
    run, new = video_run / "run", video_run / "new"
    broken = new / "sub" / "broken.mp4"
    assert broken.is_file()
    assert run_cli("predict", run, broken, "--device", "cpu", "--format", "json") == 3
    captured = capsys.readouterr()
    assert "1 inputs: 0 predicted, 1 could not be used" in captured.err
    assert json.loads(captured.out)[0]["error"]  # the error record is still written
