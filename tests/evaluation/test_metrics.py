"""The one-model validation pass the training loop runs every epoch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vidcls.data.dataset import collate
from vidcls.evaluation.metrics import validate


class FirstFrame(nn.Module):
    """Logits = the first frame's features: predictions fixed by hand."""

    def forward(self, x, lengths):
        return x[:, 0, :]


def test_validate_scores_and_averages_the_loss_by_hand():
    frames = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0], [5.0, 0.0]]), torch.tensor([[0.0, 3.0]])]
    labels = [0, 0, 1]
    loader = [collate([(f, y, i) for i, (f, y) in enumerate(zip(frames, labels))])]
    out = validate(FirstFrame(), loader, torch.device("cpu"), ["a", "b"], nn.CrossEntropyLoss())
    # predictions a, b, b against a, a, b: 2 of 3 right
    assert out["accuracy"] == pytest.approx(2 / 3)
    # cross-entropy of each row: log(1 + e^(other - true))
    want = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1)) + math.log(1 + math.exp(-3))) / 3
    assert out["loss"] == pytest.approx(want)
    assert out["confusion_matrix"] == [[1, 1], [0, 1]]
    assert validate(FirstFrame(), loader, torch.device("cpu"), ["a", "b"])["loss"] is None
