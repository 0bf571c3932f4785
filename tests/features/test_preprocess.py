"""Each family's preprocessing against the library's own eval transform: the same resize, crop,
interpolation and normalisation read off timm's and open_clip's transform objects, the same pixels
on a real photo, and the inputs vidcls cannot feed refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vidcls.errors import BackboneError
from vidcls.features.preprocess import Preprocess, parse_image_size

timm = pytest.importorskip("timm")

TIMM_CONFIGS = {  # name -> --image-size (None: the model's own)
    "tf_efficientnet_lite0": None,  # crop_pct 0.875: 224 of 256
    "convnext_tiny.in12k_ft_in1k": None,  # crop_pct 0.95
    "vit_base_patch16_clip_224.openai": None,  # crop_pct 0.9, CLIP's mean/std
    "vit_small_patch14_dinov2.lvd142m": 224,  # 518 px by default, crop_pct 1.0
    "resnet50.a1_in1k": 160,  # crop_pct 0.95 at another size
}


def steps(compose) -> dict:
    """Resize size, interpolation, crop size, mean and std of a torchvision Compose."""
    out = {}
    for t in compose.transforms:
        if isinstance(t, T.Resize):
            out["resize"], out["interpolation"] = t.size, t.interpolation.value
        elif isinstance(t, T.CenterCrop):
            out["crop"] = tuple(t.size)
        elif isinstance(t, T.Normalize):  # float32 in timm's tensors: compared at 1e-6
            out["mean"] = tuple(round(float(v), 5) for v in t.mean)
            out["std"] = tuple(round(float(v), 5) for v in t.std)
    if "crop" not in out and isinstance(out.get("resize"), (list, tuple)):
        out["crop"] = tuple(out["resize"])  # a squash without a crop: the crop of vidcls is a no-op then
    return out


def ours(pre: Preprocess) -> dict:
    resize = pre.resize_size if pre.crop_mode == "center" else (pre.resize_size, pre.resize_size)
    return {
        "resize": resize,
        "interpolation": pre.interpolation,
        "crop": (pre.crop_size, pre.crop_size),
        "mean": tuple(round(v, 5) for v in pre.mean),
        "std": tuple(round(v, 5) for v in pre.std),
    }


def timm_config(name: str, size: int | None) -> dict:
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    cfg = timm.data.resolve_model_data_config(model)
    if size is not None:
        cfg["input_size"] = (3, size, size)
    return cfg


@pytest.mark.parametrize("name", list(TIMM_CONFIGS))
def test_timm_preprocessing_is_timms_eval_transform(name):
    cfg = timm_config(name, TIMM_CONFIGS[name])
    expected = steps(timm.data.create_transform(**cfg))
    if isinstance(expected["resize"], (list, tuple)):
        expected["resize"] = expected["resize"][0]
    assert ours(Preprocess.from_timm(cfg, name)) == expected


def test_timm_squash_mode_resizes_both_sides():
    cfg = {**timm_config("tf_efficientnet_lite0", None), "crop_mode": "squash"}
    expected = steps(timm.data.create_transform(**cfg))
    pre = Preprocess.from_timm(cfg, "x")
    assert pre.crop_mode == "squash" and ours(pre) == {**expected, "resize": tuple(expected["resize"])}
    assert pre.describe()["crop_mode"] == "squash"
    assert "crop_mode" not in Preprocess.from_timm(timm_config("tf_efficientnet_lite0", None), "x").describe()


def test_open_clip_preprocessing_is_open_clips_eval_transform():
    open_clip = pytest.importorskip("open_clip")
    for mode in ("shortest", "squash"):
        cfg = {
            "size": 224,
            "mean": open_clip.OPENAI_DATASET_MEAN,
            "std": open_clip.OPENAI_DATASET_STD,
            "interpolation": "bicubic",
            "resize_mode": mode,
        }
        expected = steps(
            open_clip.image_transform(
                224,
                is_train=False,
                mean=cfg["mean"],
                std=cfg["std"],
                resize_mode=mode,
                interpolation="bicubic",
            )
        )
        pre = Preprocess.from_open_clip(cfg, "ViT-B-32")
        got = ours(pre)
        if mode == "squash":
            expected["resize"] = tuple(expected["resize"])
        assert got == expected, mode


def test_center_crop_and_squash_keep_different_parts_of_a_wide_frame():
    frame = torch.zeros(3, 100, 200, dtype=torch.uint8)
    frame[0, :, :20] = 255  # a red strip at the left edge
    base = dict(crop_size=50, resize_size=50, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    center = Preprocess(**base).geometry(frame)
    squash = Preprocess(**base, crop_mode="squash").geometry(frame)
    assert center.shape == squash.shape == (3, 50, 50)
    assert center[0, :, :3].max() == 0  # the centre crop of the short-side resize cuts the left edge
    assert squash[0, :, 0].min() > 200  # squashing keeps it (20 of 200 columns -> 5 of 50)
    assert squash[0, :, 10:].max() == 0


def test_pixels_match_timms_pil_transform_on_a_real_photo():
    skimage = pytest.importorskip("skimage")
    rgb = skimage.data.chelsea()  # 300 x 451, a real photo
    cfg = timm_config("tf_efficientnet_lite0", None)
    reference = timm.data.create_transform(**cfg)(Image.fromarray(rgb))
    pre = Preprocess.from_timm(cfg, "tf_efficientnet_lite0")
    got = pre(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    assert got.shape == reference.shape == (3, 224, 224)
    diff = (got - reference).abs()
    # tensor bicubic (antialiased, uint8 rounding) against PIL's: a few levels of 255 at edges, no offset
    assert float(diff.mean()) < 0.02 and abs(float((got - reference).mean())) < 0.005
    cos = torch.nn.functional.cosine_similarity(got.flatten(), reference.flatten(), dim=0)
    assert float(cos) > 0.999


@pytest.mark.parametrize(
    "cfg,word",
    [
        ({"input_size": (3, 224, 256), "crop_mode": "center"}, "224x256"),
        ({"input_size": (3, 224, 224), "crop_mode": "border"}, "border"),
    ],
)
def test_timm_inputs_vidcls_cannot_feed_are_refused(cfg, word):
    with pytest.raises(BackboneError, match=word):
        Preprocess.from_timm({**cfg, "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}, "m")


def test_open_clip_longest_resize_is_refused():
    with pytest.raises(BackboneError, match="longest"):
        Preprocess.from_open_clip(
            {"size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "resize_mode": "longest"}, "m"
        )


def test_image_size_values():
    assert parse_image_size(None) is None and parse_image_size("auto") is None
    assert parse_image_size("224") == 224 and parse_image_size(8) == 8
    for bad in ("7", "abc", "1.5", 0):
        with pytest.raises(BackboneError, match="--image-size"):
            parse_image_size(bad)


def test_normalize_scales_to_unit_range_then_standardises():
    pre = Preprocess(2, 2, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    x = torch.tensor([0, 255], dtype=torch.uint8).repeat(3, 1, 1).reshape(1, 3, 1, 2)
    y = pre.normalize(x)[0, :, 0]
    np.testing.assert_allclose(y.numpy(), [[-1.0, 1.0], [-1.0, 3.0], [0.0, 1.0]], atol=1e-6)


def test_interpolation_names():
    from vidcls.features.preprocess import _interpolation

    assert _interpolation("bilinear") == "bilinear" and _interpolation("BICUBIC") == "bicubic"
    assert _interpolation("nearest") == "nearest"
    # timm's training-only "random", unknown names and no name: timm's eval default, bicubic
    assert _interpolation("random") == _interpolation(None) == _interpolation("lanczos") == "bicubic"


def test_every_config_key_is_read_and_the_defaults_are_the_libraries():
    base = {"input_size": (3, 224, 224), "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    pre = Preprocess.from_timm(base, "m")  # no crop_pct, crop_mode, interpolation: timm's defaults
    assert (pre.resize_size, pre.crop_mode, pre.interpolation, pre.antialias) == (
        256,
        "center",
        "bicubic",
        True,
    )
    pre = Preprocess.from_timm(
        {**base, "crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "center"}, "m"
    )
    assert (pre.resize_size, pre.interpolation) == (224, "bilinear")
    assert pre.describe() == {
        "image_size": 224,
        "resize_size": 224,
        "interpolation": "bilinear",
        "antialias": True,
        "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6],
    }
    clip = {"size": 224, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    pre = Preprocess.from_open_clip(clip, "m")  # no resize_mode or interpolation: open_clip's defaults
    assert (pre.resize_size, pre.crop_mode, pre.interpolation, pre.antialias) == (
        224,
        "center",
        "bicubic",
        True,
    )
    pre = Preprocess.from_open_clip({**clip, "resize_mode": "squash", "interpolation": "bilinear"}, "m")
    assert (pre.crop_mode, pre.interpolation) == ("squash", "bilinear")
    assert pre.describe()["crop_mode"] == "squash"


def test_torchvision_presets_keep_their_antialias_flag():
    import torchvision

    pre = Preprocess.from_weights(torchvision.models.get_model_weights("resnet18").DEFAULT)
    assert (
        pre.antialias is True
        and pre.interpolation == "bilinear"
        and (pre.crop_size, pre.resize_size) == (224, 256)
    )


def test_geometry_uses_the_configured_interpolation_with_antialiasing():
    g = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (3, 90, 120), generator=g, dtype=torch.uint8)
    base = dict(crop_size=30, resize_size=30, mean=(0.5,) * 3, std=(0.5,) * 3)
    for mode in ("bicubic", "bilinear", "nearest"):
        got = Preprocess(**base, interpolation=mode).geometry(frame)
        expected = T.functional.center_crop(
            T.functional.resize(frame, [30], interpolation=T.InterpolationMode(mode), antialias=True), [30]
        )
        assert torch.equal(got, expected), mode
    bicubic = Preprocess(**base, interpolation="bicubic").geometry(frame)
    assert not torch.equal(bicubic, Preprocess(**base, interpolation="bilinear").geometry(frame))
    aliased = T.functional.center_crop(
        T.functional.resize(frame, [30], interpolation=T.InterpolationMode.BICUBIC, antialias=False), [30]
    )
    assert not torch.equal(bicubic, aliased)  # a 3x downscale: antialiasing changes the pixels
