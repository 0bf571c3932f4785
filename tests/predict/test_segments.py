"""``predict_segments`` against the predictor's own records of the same slices, on arrays and videos,
and ``vidcls predict --segments`` (the rules themselves: test_segment_rules.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import vidcls
import videos as V
from vidcls.cli import main
from vidcls.errors import ConfigError
from vidcls.predict.segments import (
    FRAMES,
    SECONDS,
    fuse,
    window_starts,
)
from vidcls.store.reader import FeatureStore

TRAIN = "--epochs 1 --batch-size 4 --hidden-dim 16 --layers 1 --heads 2 --workers 0 --no-plots --device cpu"


# ---- the predictor --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def array_run(tmp_path_factory, tiny_features) -> Path:
    run = tmp_path_factory.mktemp("segments") / "run"
    assert main(["train", str(tiny_features), str(run), "--max-frames", "16", *TRAIN.split()]) == 0
    return run


def _long(features_dir: Path) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Three test videos of three classes end to end, and their (start, end, class)."""
    store = FeatureStore(features_dir / "test.h5")
    picks, seen = [], set()
    for i, y in enumerate(store.labels):
        if int(y) not in seen:
            seen.add(int(y))
            picks.append(i)
        if len(picks) == 3:
            break
    parts, truth, at = [], [], 0
    for i in picks:
        a = store.read(i).astype(np.float32)
        parts.append(a)
        truth.append((at, at + len(a), store.class_names[int(store.labels[i])]))
        at += len(a)
    return np.concatenate(parts), truth


def test_windows_are_predicted_as_the_same_slices_alone(array_run, tiny_features):
    p = vidcls.load(array_run, device="cpu")
    x, _ = _long(tiny_features)
    rec = p.predict_segments(x, window=6, stride=4)[0]
    starts = window_starts(len(x), 6, 4)
    assert [s["start_frame"] for s in rec["segments"]] == starts.tolist()
    assert all(s["end_frame"] - s["start_frame"] == 6 for s in rec["segments"])
    alone = p.predict_records([x[s : s + 6] for s in starts])
    for seg, ref in zip(rec["segments"], alone):
        assert seg["label"] == ref["label"]
        assert seg["trusted"] == ref["trusted"]
        np.testing.assert_allclose(list(seg["probabilities"].values()), list(ref["probabilities"].values()))
    whole = p.predict_records([x])[0]  # the video's own label is what predict gives without segments
    assert rec["label"] == whole["label"] and rec["probabilities"] == pytest.approx(whole["probabilities"])
    # the spans are the argmax runs of the mean of the covering windows' probabilities
    probs = np.array([list(r["probabilities"].values()) for r in alone])
    fused = fuse(probs, starts, 6, len(x))
    labels = [p.classes_[i] for i in fused.argmax(axis=1)]
    for sp in rec["spans"]:
        assert set(labels[sp["start_frame"] : sp["end_frame"]]) == {sp["label"]}
    assert rec["spans"][0]["start_frame"] == 0 and rec["spans"][-1]["end_frame"] == len(x)
    assert rec["window"] == {
        "frames": 6,
        "stride_frames": 4,
        "seconds": None,
        "stride_s": None,
        "source": "option",
    }
    assert json.loads(json.dumps(rec)) == rec  # JSON-able as it is


def test_the_default_window_is_the_runs_typical_length(array_run, tiny_features):
    p = vidcls.load(array_run, device="cpu")
    store = FeatureStore(tiny_features / "train.h5")
    # the synthetic store has no timestamps and no rate: the median stored length, in frames
    assert p.window_ == (float(int(np.median(store.lengths))), FRAMES)
    x, _ = _long(tiny_features)
    rec = p.predict_segments(x)[0]
    assert rec["window"]["frames"] == int(np.median(store.lengths))
    assert rec["window"]["stride_frames"] == int(np.median(store.lengths)) // 2
    assert rec["window"]["source"] == "run"
    short = p.predict_segments(x[:3])[0]  # the run's window, longer than the input: the whole input
    assert short["error"] is None and [(s["start_frame"], s["end_frame"]) for s in short["segments"]] == [
        (0, 3)
    ]


def test_unusable_inputs_are_error_records_with_one_line(array_run, tiny_features, tmp_path):
    p = vidcls.load(array_run, device="cpu")
    x, _ = _long(tiny_features)
    np.save(tmp_path / "short.npy", x[:4])
    recs = p.predict_segments([x[:4], str(tmp_path / "short.npy"), np.zeros((5, 3))], window=10)
    assert [r["label"] for r in recs] == [None, None, None]
    assert "features[0]: the window (10 frames) is longer than the video (4 frames)" in recs[0]["error"]
    assert recs[1]["error"].startswith(f"{tmp_path / 'short.npy'}: the window")
    assert "D=3" in recs[2]["error"]
    assert all(r["segments"] == [] and r["spans"] == [] and "\n" not in r["error"] for r in recs)
    with pytest.raises(ConfigError, match="whole number"):
        p.predict_segments(x, window="2.5")
    # a run sampled at no rate (synthetic features): a window in seconds is refused for each input
    assert "windows in seconds need the frame rate" in p.predict_segments(x, window="3s")[0]["error"]


@pytest.fixture(scope="module")
def fps_run(rate_clips_run) -> tuple[Path, Path]:
    """(video root, run): clips of two colours extracted at 5 fps, a finished 1-member run."""
    return rate_clips_run


def test_a_long_video_in_seconds(fps_run, tmp_path):
    clips, run = fps_run
    frames = np.concatenate(
        [V.shapes_frames(40, color=(220, 40, 40), seed=1), V.shapes_frames(40, color=(40, 60, 220), seed=2)]
    )
    video = V.write_clip(tmp_path / "long.mp4", frames)  # 10 fps: 8 s, red then blue
    p = vidcls.load(run, device="cpu")
    assert p.fps_ == 5.0
    # clips of 20-25 frames at 10 fps last 2.0-2.5 s: their median span (frames at 5 fps, one period on)
    assert p.window_[1] == SECONDS and 2.0 <= p.window_[0] <= 2.6
    rec = p.predict_segments(str(video), window="2s", stride="1s")[0]
    assert rec["error"] is None
    assert rec["window"] == {
        "frames": 10,
        "stride_frames": 5,
        "seconds": 2.0,
        "stride_s": 1.0,
        "source": "option",
    }
    feats = p.stream_video(video)
    assert len(feats["features"]) == 40  # 8 s at 5 fps, the whole video: no frame cap over it
    np.testing.assert_allclose(feats["timestamps_ms"], np.arange(40) * 200.0)
    assert [(s["start_frame"], s["start_s"], s["end_s"]) for s in rec["segments"][:2]] == [
        (0, 0.0, 2.0),
        (5, 1.0, 3.0),
    ]
    assert rec["segments"][-1]["end_s"] == pytest.approx(8.0)
    assert rec["spans"][0]["start_s"] == 0.0 and rec["spans"][-1]["end_s"] == pytest.approx(8.0)
    alone = p.predict_records([feats["features"][5:15]])[0]
    assert rec["segments"][1]["label"] == alone["label"]
    assert rec["segments"][1]["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-6)


def test_cli_segments_writes_spans_in_every_format(fps_run, tmp_path, capsys):
    clips, run = fps_run
    video = clips / "red" / "v00.mp4"
    out = tmp_path / "out.jsonl"
    assert (
        main(["predict", str(run), str(video), "--segments", "2s", "--output", str(out), "--device", "cpu"])
        == 0
    )
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["window"]["frames"] == 10 and rec["spans"]
    capsys.readouterr()  # the summary of the run above
    assert (
        main(["predict", str(run), str(video), "--segments", "2s", "--format", "csv", "--device", "cpu"]) == 0
    )
    csv_text = capsys.readouterr().out
    assert csv_text.splitlines()[0].endswith(",spans")
    first = rec["spans"][0]
    assert f"{first['label']}@{first['start_s']:g}s-" in csv_text
    assert main(["predict", str(run), str(video), "--segments", "2s", "--device", "cpu"]) == 0
    assert "  spans: 0s–" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, says",
    [
        (["--segments", "0"], "--segments must be a positive length"),
        (["--segments", "2s", "--stride", "3s"], "longer than the window"),
        (["--segments=-2s"], "positive"),
        (["--segments", "-2s"], "--segments must be a positive length"),  # not argparse's usage
        (["--segments", "4", "--stride", "-1"], "--stride must be a positive length"),
        (["--stride", "2"], "needs --segments"),
    ],
)
def test_cli_refuses_bad_windows_before_loading(args, says, tmp_path, capsys):
    clip = tmp_path / "a.npy"
    np.save(clip, np.zeros((4, 16), np.float32))
    assert main(["predict", str(tmp_path / "no-run-needed"), str(clip), *args]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_cli_window_longer_than_the_video_is_one_line(fps_run, capsys):
    clips, run = fps_run
    assert (
        main(["predict", str(run), str(clips / "red" / "v00.mp4"), "--segments", "60s", "--device", "cpu"])
        == 3
    )
    out = capsys.readouterr().out
    assert "the window (300 frames, 60 s) is longer than the video" in out
