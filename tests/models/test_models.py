"""Tests for vidcls.models: tiny configs on CPU, seeded."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from vidcls.models import MODELS, build_model, length_mask, list_models, sinusoidal_encoding

NAMES = ["bilstm_attn", "transformer", "mean_mlp"]
D, C = 6, 3
TINY = dict(feature_dim=D, n_classes=C, hidden_dim=16, layers=2, heads=4, dropout=0.1)


def tiny(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **TINY)


def padded_batch(lengths: list[int], T: int | None = None, seed: int = 1,
                 fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features, each row filled with `fill` after its length."""
    g = torch.Generator().manual_seed(seed)
    T = T or max(lengths)
    x = torch.randn(len(lengths), T, D, generator=g)
    L = torch.tensor(lengths, dtype=torch.int64)
    pad = torch.arange(T)[None, :] >= L[:, None]
    return x.masked_fill(pad[:, :, None], fill), L


# ---------------------------------------------------------------------------------- registry

def test_list_models_matches_registry():
    assert list_models() == ["bilstm_attn", "mean_mlp", "transformer"]
    assert set(MODELS) == set(NAMES)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        build_model("x", feature_dim=D, n_classes=C)
    assert str(e.value) == "unknown model 'x'; valid names: bilstm_attn, mean_mlp, transformer"


@pytest.mark.parametrize("name", NAMES)
def test_build_returns_registered_class(name):
    assert type(tiny(name)) is MODELS[name]


@pytest.mark.parametrize("name, override, option", [
    ("bilstm_attn", dict(hidden_dim=18, heads=4), "heads"),      # 18 % 4 != 0
    ("transformer", dict(hidden_dim=18, heads=4), "heads"),
    ("bilstm_attn", dict(hidden_dim=15, heads=3), "even"),       # divisible by heads, but odd
    ("bilstm_attn", dict(layers=0), "layers"),
    ("transformer", dict(layers=0), "layers"),
    ("bilstm_attn", dict(dropout=1.0), "dropout"),
    ("mean_mlp", dict(dropout=-0.1), "dropout"),
    ("transformer", dict(n_classes=1), "n_classes"),
    ("mean_mlp", dict(n_classes=1), "n_classes"),
])
def test_invalid_options_name_the_option(name, override, option):
    with pytest.raises(ValueError, match=option):
        build_model(name, **{**TINY, **override})


def test_odd_hidden_is_fine_for_transformer():
    # Only the BiLSTM splits hidden_dim in two; the transformer needs just divisibility by heads.
    m = build_model("transformer", **{**TINY, "hidden_dim": 15, "heads": 3}).eval()
    x, L = padded_batch([5, 3])
    assert m(x, L).shape == (2, C)


# ---------------------------------------------------------------------------------- forward

@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_attention_weights(name):
    m = tiny(name).eval()
    x, L = padded_batch([7, 3, 1, 5])
    logits = m(x, L)
    assert isinstance(logits, torch.Tensor) and logits.shape == (4, C)
    logits2, attn = m(x, L, return_attention=True)
    assert torch.equal(logits, logits2)
    assert attn.shape == (4, 7)
    mask = torch.arange(7)[None, :] < L[:, None]
    assert torch.all(attn[~mask] == 0)
    assert torch.all(attn[mask] > 0)
    torch.testing.assert_close(attn.sum(1), torch.ones(4))
    # A one-frame video puts all its weight on that frame.
    torch.testing.assert_close(attn[2], torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))


@pytest.mark.parametrize("name", NAMES)
def test_logits_invariant_to_extra_padding(name):
    m = tiny(name).eval()
    x, L = padded_batch([9, 4, 1, 6])
    x_more = torch.cat([x, torch.zeros(4, 7, D)], dim=1)  # T = 9 -> 16
    with torch.no_grad():
        a, attn_a = m(x, L, return_attention=True)
        b, attn_b = m(x_more, L, return_attention=True)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    torch.testing.assert_close(attn_b[:, :9], attn_a, atol=1e-5, rtol=0)
    assert torch.all(attn_b[:, 9:] == 0)


@pytest.mark.parametrize("name", NAMES)
def test_video_alone_equals_video_in_batch(name):
    m = tiny(name).eval()
    x, L = padded_batch([10, 4, 7])  # video 1 (length 4) sits next to longer ones
    with torch.no_grad():
        batch = m(x, L)
        for i, n in enumerate(L.tolist()):
            alone = m(x[i:i + 1, :n], L[i:i + 1])
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_padding_content_is_never_read(name):
    # Stronger than zero padding: junk after each length must not leak into the logits either.
    m = tiny(name).eval()
    x0, L = padded_batch([8, 3, 5], fill=0.0)
    x1, _ = padded_batch([8, 3, 5], fill=1e3)
    with torch.no_grad():
        torch.testing.assert_close(m(x1, L), m(x0, L), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, order_matters", [
    ("bilstm_attn", True), ("transformer", True), ("mean_mlp", False)])
def test_frame_order(name, order_matters):
    m = tiny(name).eval()
    x, L = padded_batch([6])
    with torch.no_grad():
        fwd, rev = m(x, L), m(x.flip(1), L)
    assert torch.allclose(fwd, rev, atol=1e-5) is not order_matters


def test_mean_mlp_is_head_of_frame_mean():
    m = tiny("mean_mlp").eval()
    x, L = padded_batch([5, 2])
    with torch.no_grad():
        means = torch.stack([x[0, :5].mean(0), x[1, :2].mean(0)])          # (B, D)
        lin1, lin2 = m.head.net[0], m.head.net[4]
        expected = lin2(torch.relu(lin1(means)))
        logits, attn = m(x, L, return_attention=True)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(attn[1], torch.tensor([0.5, 0.5, 0, 0, 0]))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    m = tiny(name).train()
    x, L = padded_batch([7, 2, 5])
    logits = m(x, L)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_bad_lengths_or_shapes_raise(name):
    m = tiny(name).eval()
    x, _ = padded_batch([4, 4])
    for bad in ([0, 4], [4, 5]):
        with pytest.raises(ValueError, match="lengths"):
            m(x, torch.tensor(bad))
    with pytest.raises(ValueError, match="x must be"):
        m(torch.zeros(2, 4, D + 1), torch.tensor([4, 4]))


def test_length_mask():
    mask = length_mask(torch.tensor([3, 1]), 4)
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]


def test_sinusoidal_encoding_values():
    pe = sinusoidal_encoding(50, 5)
    assert pe.shape == (50, 5)
    assert pe[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    # column 2 is sin(pos / 10000^(2/5))
    torch.testing.assert_close(pe[7, 2], torch.tensor(7 / 10000 ** (2 / 5)).sin())


# ---------------------------------------------------------------------------------- default size

def _expected_bilstm_params(D: int, H: int, L: int, C: int) -> int:
    """Parameter count of bilstm_attn written out layer by layer."""
    h = H // 2
    proj = D * H + H + 2 * H                                  # Linear + LayerNorm
    lstm = L * 2 * (4 * h * (H + h) + 8 * h)                  # every layer's input is H wide
    mha = 3 * H * H + 3 * H + H * H + H + 2 * H               # in/out projections + LayerNorm
    pool = H * h + h + h + 1
    head = H * h + h + 2 * h + h * C + C
    return proj + lstm + mha + pool + head


def test_default_model_builds():
    m = build_model("bilstm_attn", feature_dim=1280, n_classes=4)
    n = sum(p.numel() for p in m.parameters())
    print(f"bilstm_attn default (D=1280, C=4): {n:,} parameters")
    assert n == _expected_bilstm_params(1280, 768, 4, 4) == 18_122_885
    assert m.lstm.num_layers == 4 and m.attn.num_heads == 12 and m.lstm.dropout == 0.4


# ---------------------------------------------------------------------------------- masks

def test_length_mask_boundaries():
    # length T: every frame valid; length 1: only the first
    mask = length_mask(torch.tensor([5, 1, 4], dtype=torch.int32), 5)
    assert mask.dtype == torch.bool and mask.shape == (3, 5)
    assert mask.tolist() == [[True] * 5, [True] + [False] * 4, [True] * 4 + [False]]


@pytest.mark.parametrize("lengths, shown", [
    (torch.tensor([2.0, 3.0]), r"\(2,\) torch.float32"),
    (torch.tensor([True, True]), r"\(2,\) torch.bool"),
    (torch.tensor([[2, 3]]), r"\(1, 2\) torch.int64"),
])
def test_length_mask_rejects_non_integer_or_2d_lengths(lengths, shown):
    with pytest.raises(ValueError, match=r"1-D integer tensor, got " + shown):
        length_mask(lengths, 4)


@pytest.mark.parametrize("lengths", [[0, 3], [2, 5]])
def test_length_mask_rejects_lengths_outside_1_to_t(lengths):
    with pytest.raises(ValueError, match=r"\[1, T=4\]"):
        length_mask(torch.tensor(lengths), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_length_mask_on_the_lengths_device():
    mask = length_mask(torch.tensor([2, 3], device="cuda"), 3)
    assert mask.device.type == "cuda"
    assert mask.cpu().tolist() == [[True, True, False], [True, True, True]]
