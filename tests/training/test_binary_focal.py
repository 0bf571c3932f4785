"""BinaryFocalLoss against hand-computed values and against torch's BCE where it must reduce to it."""

import math

import pytest
import torch
import torch.nn.functional as F

from vidcls.training.losses import BinaryFocalLoss


def _hand(z: float, y: float, *, gamma: float, s: float, alpha: float = 1.0) -> float:
    q = y * (1 - s) + s / 2
    p = 1 / (1 + math.exp(-z))
    bce = -(q * math.log(p) + (1 - q) * math.log(1 - p))
    w = alpha if y == 1 else 1.0
    return w * (1 - math.exp(-bce)) ** gamma * bce


def test_plain_settings_are_bce_summed_over_classes_mean_over_videos():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g)
    y = (torch.rand(5, 7, generator=g) > 0.6).float()
    got = BinaryFocalLoss(None, gamma=0.0, smoothing=0.0)(z, y)
    want = F.binary_cross_entropy_with_logits(z, y, reduction="sum") / 5
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_focal_smoothing_and_alpha_match_the_hand_computed_sum():
    z = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    alpha = torch.tensor([2.0, 0.5, 3.0])
    loss = BinaryFocalLoss(alpha, gamma=2.0, smoothing=0.1)(z, y)
    rows = [
        sum(_hand(float(z[b, c]), float(y[b, c]), gamma=2.0, s=0.1, alpha=float(alpha[c])) for c in range(3))
        for b in range(2)
    ]
    assert loss.item() == pytest.approx(sum(rows) / 2, rel=1e-5)


def test_alpha_weighs_positives_only():
    z = torch.tensor([[0.3, -0.2]])
    neg = torch.tensor([[0.0, 0.0]])
    a = BinaryFocalLoss(torch.tensor([5.0, 5.0]), gamma=0.0, smoothing=0.0)
    b = BinaryFocalLoss(None, gamma=0.0, smoothing=0.0)
    assert a(z, neg).item() == pytest.approx(b(z, neg).item())  # all negatives: alpha changes nothing
    pos = torch.tensor([[1.0, 0.0]])
    first = F.binary_cross_entropy_with_logits(z[0, 0], torch.tensor(1.0)).item()
    assert a(z, pos).item() - b(z, pos).item() == pytest.approx(4.0 * first, rel=1e-5)


def test_gradients_are_finite_on_saturated_logits():
    z = torch.tensor([[40.0, -40.0]], requires_grad=True)
    BinaryFocalLoss(None, gamma=0.5, smoothing=0.0)(z, torch.tensor([[1.0, 0.0]])).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    "shapes", [((2, 3), (2,)), ((2, 3), (2, 4)), ((3,), (3,))], ids=["class-ids", "wrong-C", "1-D"]
)
def test_bad_shapes_are_refused(shapes):
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        BinaryFocalLoss()(torch.zeros(shapes[0]), torch.zeros(shapes[1]))


def test_alpha_of_another_length_is_refused():
    with pytest.raises(ValueError, match="alpha has shape"):
        BinaryFocalLoss(torch.ones(2))(torch.zeros(1, 3), torch.zeros(1, 3))
