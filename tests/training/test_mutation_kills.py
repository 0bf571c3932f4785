"""Edge cases of the data path that decide what the model trains on, pinned by hand-computed
expectations: the class weights' input handling and error message (``make mutation`` runs these
with the rest of the data tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidcls.data.dataset import class_weights


def test_class_weights_accept_whole_number_float_labels():
    # labels read from a CSV or a float array count like their integers: N / (C n_c) = 4/6, 4/2
    for labels in (np.array([0.0, 0.0, 0.0, 1.0]), [0.0, 0.0, 0.0, 1.0]):
        w = class_weights(labels, 2, (0.1, 10.0))
        torch.testing.assert_close(w, torch.tensor([4 / 6, 2.0]))


def test_class_weights_message_lists_every_missing_class():
    with pytest.raises(ValueError, match=r"class\(es\) alpha, gamma, delta have no training example"):
        class_weights(np.array([1, 1]), 4, class_names=["alpha", "beta", "gamma", "delta"])
    with pytest.raises(ValueError, match=r"class\(es\) 0, 2 have no training example"):
        class_weights(np.array([1, 1, 3]), 4)
