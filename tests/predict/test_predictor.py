"""``vidcls.load``: the predictor serves the run's recorded final choice exactly as ``vidcls evaluate``
scores it, on feature arrays and on videos (through the recorded extractor), and refuses what it
cannot reproduce with an error that says what to provide."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vidcls
import videos as V
from vidcls.cli import main
from vidcls.config import load_config
from vidcls.data.dataset import load_splits
from vidcls.engine.probs import served_probs
from vidcls.engine.scores import calibration_score
from vidcls.errors import BackboneError, CheckpointError, ExtractError
from vidcls.evaluation.calibrate import calibrate_run
from vidcls.evaluation.evaluate import model_outputs
from vidcls.evaluation.policy import final_predictions
from vidcls.predict.verdict import trust_verdict
from vidcls.run.calibration import typicality_stats
from vidcls.run.checkpoint import load_checkpoint, save_checkpoint
from vidcls.run.final import FinalChoice, load_final_choice, write_final_choice
from vidcls.store.reader import FeatureStore
from vidcls.utils.sampling import uniform_indices

ALL_MODES = ["original", "reverse", "speed_up", "speed_down"]
EXTRACT = (
    "--backbone resnet18 --weights none --image-size 64 --frames 4 --decode-workers 0 --device cpu"
).split()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_features) -> Path:
    """A finished 2-member run (1 epoch) on the tiny features with max_frames 16 (their videos have
    6-24 frames, so some are thinned). Read-only: copy it first."""
    root = tmp_path_factory.mktemp("predictor")
    run = root / "run"
    assert (
        main(
            [
                "train",
                str(tiny_features),
                str(run),
                "--epochs",
                "1",
                "--members",
                "2",
                "--max-frames",
                "16",
                "--no-plots",
                "--hidden-dim",
                "16",
                "--layers",
                "1",
                "--heads",
                "2",
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return run


@pytest.fixture
def video_run(clip_run) -> tuple[Path, Path, Path]:
    return clip_run


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of the run directory (its config still points at the original features)."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def serve(run: Path, members: list, tta_used: bool) -> None:
    """Overwrite the run's final.json: serve ``members`` (an ensemble when several)."""
    source = "ensemble" if len(members) > 1 else f"member {members[0]}"
    write_final_choice(
        run,
        FinalChoice(
            source=source,
            members=members,
            tta_used=tta_used,
            tta_modes=ALL_MODES,
            select="val_acc",
            reason="set by the test",
            val_score=0.5,
            tta="auto",
        ),
    )


def evaluate_probs(run: Path, split: str = "test") -> tuple[np.ndarray, list]:
    """What evaluate's code computes for the recorded final choice on ``split``, and the stored
    (unthinned) feature arrays of that split, in its order."""
    cfg = load_config(run / "config.yaml")
    splits = load_splits(
        cfg.features_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        augment=False,
        max_frames=cfg.max_frames,
    )
    ds = getattr(splits, split)
    choice = load_final_choice(run)
    outputs = model_outputs(cfg, run, {split: ds}, device=torch.device("cpu"), modes=cfg.tta_modes)
    arrays = [ds.store.read(int(i)) for i in ds.indices]
    return final_predictions(outputs, choice)[split], arrays


def rewrite_extractor(run: Path, extractor: dict) -> None:
    """Give every member checkpoint of ``run`` another extractor record."""
    for path in run.glob("members/*/checkpoints/*.pt"):
        ckpt = load_checkpoint(path)
        ckpt["extractor"] = extractor
        save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})


# ---------------------------------------------------------------- the same numbers as evaluate


@pytest.mark.parametrize("members,tta_used", [([0, 1], False), ([1], True)])
def test_predict_proba_equals_evaluate(trained, tmp_path, capsys, members, tta_used):
    run = copy_run(trained, tmp_path)
    serve(run, members, tta_used)
    expected, arrays = evaluate_probs(run)
    assert any(len(a) > 16 for a in arrays) and any(len(a) <= 16 for a in arrays)  # thinning is exercised
    p = vidcls.load(run, device="cpu")
    assert (p.members_, p.tta_used_, p.max_frames_) == (members, tta_used, 16)
    assert p.views_ == (ALL_MODES if tta_used else ["original"])
    got = p.predict_proba(arrays, calibrated=False)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    # ... and what `vidcls evaluate` wrote for the same choice
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 0
    ev = json.loads((run / "eval_test.json").read_text())
    assert ev["final"]["members"] == members and ev["final"]["tta_used"] is tta_used
    np.testing.assert_allclose(got.max(axis=1), [r["confidence"] for r in ev["predictions"]], atol=1e-6)
    assert p.predict(arrays) == [r["pred"] for r in ev["predictions"]]
    # the raw logits: (N, M, V, C), their mean softmax is what is served
    logits = p.logits_features(arrays)
    assert (
        logits.shape == (len(arrays), len(members), len(p.views_), len(p.classes_))
        and logits.dtype == np.float64
    )
    np.testing.assert_allclose(served_probs(logits), got, atol=1e-12)


def test_tta_setting_overrides_the_recorded_choice(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    serve(run, [0], tta_used=True)
    assert vidcls.load(run, device="cpu", tta="off").views_ == ["original"]
    serve(run, [0], tta_used=False)
    assert vidcls.load(run, device="cpu", tta="on").views_ == ALL_MODES


def test_classes_predict_and_input_forms(trained, tiny_features):
    p = vidcls.load(trained, device="cpu")
    store = FeatureStore(tiny_features / "test.h5")
    arrays = [store.read(i) for i in range(6)]
    assert p.classes_ == store.class_names and p.feature_dim_ == 16
    probs = p.predict_proba(arrays)
    assert probs.shape == (6, len(p.classes_))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert p.predict(arrays) == [p.classes_[i] for i in probs.argmax(axis=1)]
    # one array alone, as a list of one, as nested lists (JSON): the same row, whatever its batch held
    for single in (arrays[3], [arrays[3]], arrays[3].astype(np.float64).tolist()):
        np.testing.assert_allclose(p.predict_proba(single), probs[3:4], atol=1e-6)
    # batching: with one video per batch every row is still the same
    p.batch_size_ = 1
    np.testing.assert_allclose(p.predict_proba(arrays), probs, atol=1e-6)
    assert p.predict_proba([]).shape == (0, len(p.classes_))
    store.close()


def test_long_inputs_are_thinned_like_training(trained):
    p = vidcls.load(trained, device="cpu")
    x = np.random.default_rng(0).normal(size=(100, 16)).astype(np.float16)
    keep = uniform_indices(100, 16)
    np.testing.assert_array_equal(p.predict_proba(x), p.predict_proba(x[keep]))
    ex = p.explain(x)[0]
    assert ex["index"] == keep.tolist() and len(ex["attention"]) == 16
    assert ex["timestamps_ms"] == [None] * 16 and sum(ex["attention"]) == pytest.approx(1.0, abs=1e-5)
    rec = p.predict_records(x)[0]
    assert [f["index"] for f in rec["frames"]] == keep.tolist()


def test_records_of_features_and_bad_inputs(trained):
    p = vidcls.load(trained, device="cpu")
    good = np.random.default_rng(1).normal(size=(9, 16)).astype(np.float32)
    recs = p.predict_records([good, np.zeros((4, 7)), np.full((3, 16), np.nan)], top_k=2)
    r = recs[0]
    assert set(r) == {
        "input",
        "label",
        "top_k",
        "probabilities",
        "trusted",
        "trust_reason",
        "ood_score",
        "ood_scores",
        "ood",
        "frames",
        "timings",
        "error",
    }
    assert r["input"] == "features[0]" and r["error"] is None and r["label"] == r["top_k"][0]["class"]
    assert [t["class"] for t in r["top_k"]] == sorted(
        r["probabilities"], key=r["probabilities"].get, reverse=True
    )[:2]
    assert list(r["probabilities"]) == p.classes_ and len(r["frames"]) == 9
    assert set(r["timings"]) == {"decode_s", "features_s", "model_s"}
    if p.calibration_ is None:
        assert (r["trusted"], r["ood_score"], r["ood"]) == (None, None, None)
        assert r["trust_reason"].startswith("not calibrated")
    assert "D=7" in recs[1]["error"] and "D=16" in recs[1]["error"] and recs[1]["label"] is None
    assert "NaN" in recs[2]["error"]
    json.dumps(recs, allow_nan=False)
    with pytest.raises(CheckpointError, match="D=7"):
        p.predict_proba(np.zeros((4, 7)))


def test_calibration_scales_the_served_logits_and_gives_the_verdict(trained, tiny_features, tmp_path):

    run = copy_run(trained, tmp_path)
    serve(run, [0, 1], tta_used=False)
    (run / "calibration.json").unlink(missing_ok=True)
    store = FeatureStore(tiny_features / "test.h5")
    arrays = [store.read(i) for i in range(8)]
    store.close()
    p = vidcls.load(run, device="cpu")
    assert p.calibration_ is None and p.predict_records(arrays[:1])[0]["trust_reason"].startswith(
        "not calibrated"
    )
    cal = calibrate_run(run, device="cpu")
    p = vidcls.load(run, device="cpu")
    assert p.calibration_["temperature"] == cal["temperature"]
    logits = p.logits_features(arrays)
    np.testing.assert_allclose(p.predict_proba(arrays), served_probs(logits, cal["temperature"]), atol=1e-12)
    np.testing.assert_allclose(p.predict_proba(arrays, calibrated=False), served_probs(logits), atol=1e-12)
    noise = np.random.default_rng(2).normal(0, 50, size=(12, 16)).astype(np.float32)
    recs = p.predict_records([*arrays, noise])
    scores = calibration_score(p.logits_features([*arrays, noise]), cal)
    for rec, score in zip(recs, scores):
        assert rec["ood_score"] == pytest.approx(float(score), abs=1e-9)
        assert (rec["trusted"], rec["trust_reason"]) == trust_verdict(rec["ood_scores"], cal)
    # a calibration fitted for other views than served is not applied, and the records say why
    forced = vidcls.load(run, device="cpu", tta="on")
    assert forced.calibration_ is None
    rec = forced.predict_records(arrays[:1])[0]
    assert rec["trusted"] is None and "vidcls calibrate" in rec["trust_reason"] and rec["ood_score"] is None


# ---------------------------------------------------------------- videos through the recorded extractor


def test_a_video_and_its_stored_features_give_the_same_probabilities(video_run):
    videos, feats, run = video_run
    p = vidcls.load(run, device="cpu")
    assert p.extractor_["backbone"] == "resnet18" and p.feature_dim_ == 512
    store = FeatureStore(feats / "train.h5")
    ids = store.video_ids[:3]
    paths = [videos / f"{vid}.mp4" for vid in ids]
    stored = [store.read(i) for i in range(3)]
    np.testing.assert_allclose(p.predict_proba(paths), p.predict_proba(stored), atol=1e-6)
    np.testing.assert_allclose(p.predict_proba(str(paths[0])), p.predict_proba(stored[:1]), atol=1e-6)
    recs = p.predict_records(paths)
    for rec, path, i in zip(recs, paths, range(3)):
        assert rec["input"] == str(path) and rec["error"] is None
        assert [f["timestamp_ms"] for f in rec["frames"]] == store.timestamps(i).tolist()
        assert rec["timings"]["decode_s"] > 0 and rec["timings"]["features_s"] > 0
    ex = p.explain(paths[0])[0]
    assert ex["timestamps_ms"] == store.timestamps(0).tolist() and len(ex["attention"]) == len(stored[0])
    store.close()


def test_a_broken_video_gives_an_error_record(video_run, tmp_path):
    videos, _, run = video_run
    p = vidcls.load(run, device="cpu")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    cut = V.truncate(
        V.write_clip(tmp_path / "full.mp4", V.shapes_frames(100), faststart=True),
        tmp_path / "cut.mp4",
        keep=0.3,
    )
    empty = V.write_no_frames(tmp_path / "empty.avi")
    good = videos / "red" / "v00.mp4"
    recs = p.predict_records([text, good, cut, empty, tmp_path / "missing.mp4"])
    assert recs[1]["error"] is None and recs[1]["label"] in p.classes_
    for rec in recs[:1] + recs[2:]:
        assert rec["error"] and rec["label"] is None and rec["frames"] == [] and rec["top_k"] == []
    assert recs[0]["error"].startswith("cannot_open") and recs[3]["error"].startswith("too_short")
    assert recs[4]["error"].startswith("unreadable")
    with pytest.raises(ExtractError, match="notes.mp4"):
        p.predict_proba(text)


def test_missing_or_other_extractor_weights_are_named(video_run, tmp_path):
    videos, _, trained_run = video_run
    run = copy_run(trained_run, tmp_path)
    record = load_checkpoint(run / "members/0/checkpoints/best.pt")["extractor"]
    rewrite_extractor(
        run, {**record, "weights": "file", "weights_file": "frames.pth", "weights_sha256": "ab" * 32}
    )
    clip = videos / "red" / "v00.mp4"
    p = vidcls.load(run, device="cpu")
    with pytest.raises(BackboneError, match=r"frames\.pth.*--weights PATH"):
        p.predict(clip)
    with pytest.raises(BackboneError, match="--weights"):
        p.predict_records([clip])  # a run-level problem: not one error record per video
    p.predict_proba(np.zeros((3, 512), np.float32))  # feature inputs need no extractor
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights")
    with pytest.raises(BackboneError, match="sha256"):
        vidcls.load(run, device="cpu", weights=other).predict(clip)
    with pytest.raises(BackboneError, match="no such file"):
        vidcls.load(run, device="cpu", weights=tmp_path / "absent.pth").predict(clip)


def test_random_weights_take_no_weights_file(video_run, tmp_path):
    videos, _, run = video_run
    other = tmp_path / "other.pth"
    other.write_bytes(b"x")
    with pytest.raises(BackboneError, match="drop --weights"):
        vidcls.load(run, device="cpu", weights=other).predict(videos / "red" / "v00.mp4")


def test_another_feature_dimension_is_named(trained, video_run, tmp_path):
    videos, feats, _ = video_run
    run = copy_run(trained, tmp_path)
    rewrite_extractor(run, FeatureStore(feats / "train.h5").extractor)  # a 512-d extractor, a 16-d model
    p = vidcls.load(run, device="cpu")
    with pytest.raises(CheckpointError, match=r"16-dimensional.*512-dimensional"):
        p.predict(videos / "red" / "v00.mp4")


def test_synthetic_features_have_no_extractor_for_videos(trained, video_run):
    videos, _, _ = video_run
    with pytest.raises(BackboneError, match="synthetic"):
        vidcls.load(trained, device="cpu").predict(videos / "red" / "v00.mp4")


def test_torchvision_weights_not_on_this_machine_are_named(video_run, tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    videos, _, trained_run = video_run
    run = copy_run(trained_run, tmp_path)
    record = load_checkpoint(run / "members/0/checkpoints/best.pt")["extractor"]
    rewrite_extractor(run, {**record, "weights": "ResNet18_Weights.IMAGENET1K_V1"})
    build = torchvision.models.get_model

    def offline(name, weights=None, **kw):
        if weights is not None:
            raise urllib.error.URLError("no network")
        return build(name, weights=None, **kw)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(BackboneError, match=r"resnet18-f37072fd\.pth.*--weights PATH\.pth"):
        vidcls.load(run, device="cpu").predict(videos / "red" / "v00.mp4")
    wrong = tmp_path / "resnet18.pth"
    wrong.write_bytes(b"not the published file")
    with pytest.raises(BackboneError, match="published file resnet18-f37072fd.pth"):
        vidcls.load(run, device="cpu", weights=wrong).predict(videos / "red" / "v00.mp4")


def test_records_carry_energy_and_typicality_after_calibration(trained, tiny_features, tmp_path):
    """After calibrate_run, every record has both scores; the typicality is that of the features the
    model saw (float16, thinned to max_frames); a constant sequence is not trusted and the reason says
    which score failed."""
    from vidcls.engine.typicality import typicality_score

    run = copy_run(trained, tmp_path)
    cal = calibrate_run(run, device="cpu")
    assert cal["ood"]["scores"] == ["energy", "typicality"]
    p = vidcls.load(run, device="cpu")
    store = FeatureStore(tiny_features / "test.h5")
    arrays = [store.read(i) for i in range(6)]
    store.close()
    long = np.concatenate([arrays[0]] * 40)  # longer than max_frames when the run caps frames
    const = np.tile(arrays[0][:1], (10, 1))
    recs = p.predict_records([*arrays, long, const])
    stats = typicality_stats(run, p.calibration_)
    seen = [p._thin(p._check(a, "x"))[0] for a in [*arrays, long, const]]
    want = typicality_score(seen, stats)
    for rec, w in zip(recs, want):
        assert set(rec["ood_scores"]) == {"energy", "typicality"}
        assert rec["ood_score"] == rec["ood_scores"]["energy"]
        assert rec["ood_scores"]["typicality"] == pytest.approx(float(w), rel=1e-9, abs=1e-9)
        assert (rec["trusted"], rec["trust_reason"]) == trust_verdict(rec["ood_scores"], cal)
    assert recs[-1]["trusted"] is False and "typicality score" in recs[-1]["trust_reason"]
    json.dumps(recs, allow_nan=False)


def test_complex_ragged_and_top_k_zero_inputs_are_refused(trained):
    from vidcls.errors import ConfigError, VidclsError

    p = vidcls.load(trained, device="cpu")
    good = np.zeros((4, 16), np.float32)
    complex_ = good.astype(np.complex64) + 1j  # numpy calls it a number; casting drops the 1j
    rec = p.predict_records([complex_, good])
    assert rec[0]["error"] and "complex64" in rec[0]["error"] and rec[0]["label"] is None
    assert rec[1]["error"] is None
    with pytest.raises(ConfigError, match="complex64"):
        p.predict_proba(complex_)
    ragged = [[0.0] * 16, [0.0] * 15]
    with pytest.raises(VidclsError, match="different lengths"):
        p.predict_proba(ragged)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="top_k must be an integer >= 1"):
            p.predict_records([good], top_k=bad)
    assert len(p.predict_records([good], top_k=1)[0]["top_k"]) == 1
