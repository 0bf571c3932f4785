"""Tests for vidcls.models: tiny configs on CPU, seeded."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from vidcls.errors import ConfigError
from vidcls.models import (
    MODELS,
    build_model,
    length_mask,
    list_models,
    sinusoidal_encoding,
)

NAMES = ["bilstm_attn", "transformer", "mean_mlp", "inception_time", "netvlad", "nextvlad"]
D, C = 6, 3
TINY = dict(feature_dim=D, n_classes=C, hidden_dim=16, layers=2, heads=4, dropout=0.1)


def tiny(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **TINY)


def padded_batch(
    lengths: list[int], T: int | None = None, seed: int = 1, fill: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features, each row filled with `fill` after its length."""
    g = torch.Generator().manual_seed(seed)
    T = T or max(lengths)
    x = torch.randn(len(lengths), T, D, generator=g)
    L = torch.tensor(lengths, dtype=torch.int64)
    pad = torch.arange(T)[None, :] >= L[:, None]
    return x.masked_fill(pad[:, :, None], fill), L


# ---------------------------------------------------------------------------------- registry


def test_list_models_matches_registry():
    assert list_models() == [
        "bilstm_attn",
        "inception_time",
        "mean_mlp",
        "netvlad",
        "nextvlad",
        "transformer",
    ]
    assert set(MODELS) == set(NAMES)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        build_model("x", feature_dim=D, n_classes=C)
    assert (
        str(e.value)
        == "unknown model 'x'; valid names: bilstm_attn, inception_time, mean_mlp, netvlad, nextvlad, transformer"
    )


def test_unknown_size_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown model size hidden, width; valid: hidden_dim, layers"):
        build_model("mean_mlp", feature_dim=D, n_classes=C, width=8, hidden=4)


@pytest.mark.parametrize("name", NAMES)
def test_sizes_not_given_are_the_spec_s(name):
    from vidcls.models import SPEC

    assert (SPEC.hidden_dim, SPEC.layers, SPEC.heads, SPEC.dropout) == (768, 4, 12, 0.4)
    given = build_model(name, feature_dim=D, n_classes=C, hidden_dim=768, layers=4, heads=12, dropout=0.4)
    default = build_model(name, feature_dim=D, n_classes=C)
    assert [p.shape for p in default.parameters()] == [p.shape for p in given.parameters()]
    dropouts = [m.p for m in default.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(p in (0.4, 0.2) for p in dropouts)  # the spec's dropout, its half at the input


@pytest.mark.parametrize("name", NAMES)
def test_build_returns_registered_class(name):
    assert type(tiny(name)) is MODELS[name]


@pytest.mark.parametrize(
    "name, override, option",
    [
        ("bilstm_attn", dict(hidden_dim=18, heads=4), "heads"),  # 18 % 4 != 0
        ("transformer", dict(hidden_dim=18, heads=4), "heads"),
        ("bilstm_attn", dict(hidden_dim=15, heads=3), "even"),  # divisible by heads, but odd
        ("bilstm_attn", dict(layers=0), "layers"),
        ("transformer", dict(layers=0), "layers"),
        ("bilstm_attn", dict(dropout=1.0), "dropout"),
        ("mean_mlp", dict(dropout=-0.1), "dropout"),
        ("transformer", dict(n_classes=1), "n_classes"),
        ("mean_mlp", dict(n_classes=1), "n_classes"),
        ("inception_time", dict(layers=0), "layers"),
        ("inception_time", dict(dropout=1.0), "dropout"),
    ],
)
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
            alone = m(x[i : i + 1, :n], L[i : i + 1])
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_padding_content_is_never_read(name):
    # Stronger than zero padding: junk after each length must not leak into the logits either.
    m = tiny(name).eval()
    x0, L = padded_batch([8, 3, 5], fill=0.0)
    x1, _ = padded_batch([8, 3, 5], fill=1e3)
    with torch.no_grad():
        torch.testing.assert_close(m(x1, L), m(x0, L), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name, order_matters",
    [
        ("bilstm_attn", True),
        ("transformer", True),
        ("mean_mlp", False),
        ("inception_time", True),
        ("netvlad", False),
        ("nextvlad", False),
    ],
)
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
        means = torch.stack([x[0, :5].mean(0), x[1, :2].mean(0)])  # (B, D)
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


# ---------------------------------------------------------------------------------- inception_time


@pytest.mark.parametrize("hidden_dim", [18, 30, 2])  # 18 % 4 == 2, 30 % 4 == 2, 2 % 4 == 2
def test_inception_hidden_not_divisible_by_4_names_hidden_dim(hidden_dim):
    # Four branches of hidden_dim // 4 filters each: any other width cannot be split evenly.
    with pytest.raises(ConfigError, match=rf"hidden_dim \({hidden_dim}\) must be divisible by 4"):
        build_model("inception_time", **{**TINY, "hidden_dim": hidden_dim})


def test_inception_ignores_heads():
    # heads=5 divides neither 16 nor anything here; inception_time has no attention, so it builds.
    m = build_model("inception_time", **{**TINY, "heads": 5}).eval()
    x, L = padded_batch([5, 3])
    assert m(x, L).shape == (2, C)


def test_inception_parameter_count_by_hand():
    # D=6, hidden 16 -> nf=4 per branch, 3 modules (one shortcut), C=3; every conv is bias-free.
    #   module 1 (6 ch in): bottleneck 6*4 + convs 4*4*(9+19+39) + pool 1x1 6*4 + LayerNorm 2*16
    #                     = 24 + 1072 + 24 + 32 = 1152
    #   modules 2, 3 (16 ch in): 16*4 + 1072 + 16*4 + 32 = 1232 each
    #   shortcut 6 -> 16 channels: 1x1 conv 6*16 + LayerNorm 2*16 = 128
    #   head Linear(16 -> 3): 48 + 3 = 51
    m = build_model("inception_time", **{**TINY, "layers": 3})
    assert sum(p.numel() for p in m.parameters()) == 1152 + 2 * 1232 + 128 + 51 == 3795


@pytest.mark.parametrize("feature_dim, layers", [(1, 1), (1, 4), (6, 4)])
def test_inception_padding_invariant_with_shortcut_and_1d_input(feature_dim, layers):
    # 1-D input skips the bottleneck (paper); layers=4 adds a shortcut after module 3 plus a
    # module after it. The features are mostly negative, so a max-pool that saw zero padding
    # would pick 0 at a row's end where the video alone (pool padding -inf) picks a negative
    # value; +5 junk would be picked too. Every fill must give the video-alone logits.
    torch.manual_seed(0)
    m = build_model(
        "inception_time",
        feature_dim=feature_dim,
        n_classes=C,
        hidden_dim=8,
        layers=layers,
        heads=1,
        dropout=0.0,
    ).eval()
    g = torch.Generator().manual_seed(3)
    lengths = [12, 5, 1]
    x = torch.randn(3, 20, feature_dim, generator=g) - 1.0
    L = torch.tensor(lengths)
    pad = torch.arange(20)[None, :, None] >= L[:, None, None]
    with torch.no_grad():
        for fill in (0.0, 5.0, -5.0):
            batch = m(x.masked_fill(pad, fill), L)
            for i, n in enumerate(lengths):
                alone = m(x[i : i + 1, :n], L[i : i + 1])
                torch.testing.assert_close(batch[i], alone[0], atol=1e-5, rtol=0)


def _ramp_data(n: int, T: int = 48, ramp: int = 8, seed: int = 0):
    """Class 0: an upward ramp -2..2 at a random place in noise; class 1: the same ramp reversed.

    Both classes hold the same values (one ramp's values + noise), so the mean, the max or any
    order-blind statistic cannot tell them apart: only the local temporal shape can.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    lengths = torch.randint(ramp + 8, T + 1, (n,), generator=g)
    x = 0.3 * torch.randn(n, T, 1, generator=g)
    up = torch.linspace(-2.0, 2.0, ramp)
    for i in range(n):
        start = int(torch.randint(0, int(lengths[i]) - ramp + 1, (1,), generator=g))
        x[i, start : start + ramp, 0] += up if y[i] == 0 else up.flip(0)
    pad = torch.arange(T)[None, :] >= lengths[:, None]
    return x.masked_fill(pad[:, :, None], 0.0), lengths, y


def test_inception_learns_ramp_direction():
    # Chance is 50 % (32 + 32 items); a model that sees local shape should fit 64 items almost
    # perfectly; 90 % leaves room for a few hard (noisy) items.
    x, L, y = _ramp_data(64)
    torch.manual_seed(0)
    m = build_model(
        "inception_time", feature_dim=1, n_classes=2, hidden_dim=16, layers=1, heads=1, dropout=0.0
    )
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    # One thread: these tensors are too small to gain from more, and on a shared, busy CPU the
    # extra threads' spin-waits made each step ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(200):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x, L), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    m.eval()
    with torch.no_grad():
        acc = (m(x, L).argmax(1) == y).float().mean().item()
    assert acc >= 0.9, acc


# ---------------------------------------------------------------------------------- default size


def _expected_bilstm_params(D: int, H: int, L: int, C: int) -> int:
    """Parameter count of bilstm_attn written out layer by layer."""
    h = H // 2
    proj = D * H + H + 2 * H  # Linear + LayerNorm
    lstm = L * 2 * (4 * h * (H + h) + 8 * h)  # every layer's input is H wide
    mha = 3 * H * H + 3 * H + H * H + H + 2 * H  # in/out projections + LayerNorm
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


@pytest.mark.parametrize(
    "lengths, shown",
    [
        (torch.tensor([2.0, 3.0]), r"\(2,\) torch.float32"),
        (torch.tensor([True, True]), r"\(2,\) torch.bool"),
        (torch.tensor([[2, 3]]), r"\(1, 2\) torch.int64"),
    ],
)
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


# ---------------------------------------------------------------------------------- standardisation


def test_standardized_model_sees_standardised_input_and_zero_padding():
    """build_model(..., standardize=True) == the bare model fed (x - mean) / std, padding still zero."""
    torch.manual_seed(0)
    wrapped = build_model("bilstm_attn", standardize=True, **TINY).eval()
    mean, std = torch.linspace(-2, 2, D), torch.linspace(0.5, 3, D)
    wrapped.set_stats(mean, std)
    x, L = padded_batch([5, 3], T=6)
    x = x * 7 + 40  # far from zero mean / unit scale
    x[1, 3:] = 0  # padding stays padding
    expected_in = ((x - mean) / std).masked_fill(~length_mask(L, 6)[:, :, None], 0.0)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, L), wrapped.net(expected_in, L))
    # the statistics are weights: a rebuilt model with the state dict applies them identically
    clone = build_model("bilstm_attn", standardize=True, **TINY).eval()
    clone.load_state_dict(wrapped.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clone(x, L), wrapped(x, L))
    with pytest.raises(ValueError, match="std > 0"):
        wrapped.set_stats(mean, torch.zeros(D))
