"""Sigmoid served probabilities and the multi-label decision, on hand-made logits."""

import math

import numpy as np
import pytest

from vidcls.engine.forward import Outputs
from vidcls.engine.probs import labels_above, served_probs, sigmoid


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_multilabel_serves_the_mean_of_the_sigmoids_over_members_and_views():
    z = np.array([[[[0.0, 2.0], [1.0, -1.0]], [[4.0, 0.0], [-2.0, 3.0]]]])  # (1, M=2, V=2, C=2)
    got = served_probs(z, 2.0, "multilabel")
    want0 = np.mean([_sig(0.0), _sig(0.5), _sig(2.0), _sig(-1.0)])
    want1 = np.mean([_sig(1.0), _sig(-0.5), _sig(0.0), _sig(1.5)])
    np.testing.assert_allclose(got, [[want0, want1]], rtol=1e-12)
    # a softmax would make the row sum to 1; independent sigmoids do not
    assert got.sum() != pytest.approx(1.0)


def test_sigmoid_does_not_overflow():
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


def test_single_stays_a_softmax_and_an_unknown_task_is_refused():
    z = np.array([[1.0, 2.0, 3.0]])
    e = np.exp(z - 3)
    np.testing.assert_allclose(served_probs(z), e / e.sum())
    with pytest.raises(ValueError, match="task"):
        served_probs(z, 1.0, "multi")


def test_labels_above_orders_by_probability_and_allows_an_empty_set():
    p = np.array([[0.2, 0.9, 0.6, 0.6], [0.1, 0.2, 0.3, 0.4]])
    assert labels_above(p, [0.5, 0.5, 0.5, 0.5]) == [[1, 2, 3], []]
    assert labels_above(p, np.array([0.1, 0.95, 0.7, 0.35])) == [[3, 0], [3, 0]]
    assert labels_above(p, 0.6) == [[1, 2, 3], []]  # a scalar for every class; >= reaches it


def test_outputs_know_their_task():
    z = np.zeros((2, 1, 1, 3))
    sets = np.array([[1, 0, 1], [0, 1, 0]])
    out = Outputs(z, (0,), ("original",), sets, task="multilabel")
    np.testing.assert_allclose(out.probs(), np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="label sets"):
        Outputs(z, (0,), ("original",), np.array([0, 1]), task="multilabel")
    with pytest.raises(ValueError, match="class indices"):
        Outputs(z, (0,), ("original",), sets)
