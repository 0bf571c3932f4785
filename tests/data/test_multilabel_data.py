"""Multi-label data: label sets through the dataset, the batches, the class weights, the sampler and the task."""

import numpy as np
import pytest
import torch

from vidcls.data.dataset import FeatureDataset, collate, label_weights, load_splits, train_sampler
from vidcls.errors import StoreError
from vidcls.store import write_store

NAMES = ["cat", "dog", "rain"]


def _store(path, sets, *, multilabel=True, dim=4, names=NAMES):
    rng = np.random.default_rng(0)
    videos = [
        (f"v{i}", rng.normal(size=(3 + i % 2, dim)).astype(np.float32), s if multilabel else s[0])
        for i, s in enumerate(sets)
    ]
    return write_store(path, videos, names, dim, multilabel=multilabel)


def test_items_carry_their_label_sets_and_batches_stack_them(tmp_path):
    from vidcls.store import FeatureStore

    store = FeatureStore(_store(tmp_path / "train.h5", [[0, 2], [1], [0, 1, 2]]))
    ds = FeatureDataset(store)
    assert ds.multilabel
    np.testing.assert_array_equal(ds.targets, [[1, 0, 1], [0, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(ds.label_counts(), [2, 2, 2])
    x, lengths, y, pos = collate([ds[0], ds[1]])
    assert y.dtype == torch.float32 and y.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert x.shape == (2, 4, 4) and lengths.tolist() == [3, 4] and pos.tolist() == [0, 1]


def test_a_single_label_store_read_as_multilabel_gives_one_element_sets(tmp_path):
    from vidcls.store import FeatureStore

    store = FeatureStore(_store(tmp_path / "train.h5", [[2], [0], [1]], multilabel=False))
    ds = FeatureDataset(store, multilabel=True)
    np.testing.assert_array_equal(ds.targets, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert FeatureDataset(store).targets is None  # its own kind: single-label, class indices
    assert FeatureDataset(store)[0][1] == 2


def test_label_weights_are_inverse_frequency_over_all_labels_given():
    # 6 labels given over 3 classes: a class of average frequency (2) weighs 1
    w = label_weights(np.array([4, 1, 1]), clip=(0.1, 10.0))
    np.testing.assert_allclose(w.numpy(), [6 / 12, 6 / 3, 6 / 3], rtol=1e-6)
    with pytest.raises(ValueError, match="dog have no training example"):
        label_weights(np.array([2, 0, 1]), class_names=NAMES)


def test_the_sampler_weighs_a_video_as_its_rarest_label(tmp_path):
    from vidcls.store import FeatureStore

    ds = FeatureDataset(FeatureStore(_store(tmp_path / "train.h5", [[0], [0, 2], [1, 2]])))
    sampler = train_sampler(ds, torch.tensor([0.5, 3.0, 2.0]), seed=0)
    np.testing.assert_allclose(sampler.weights.numpy(), [0.5, 2.0, 3.0])


def test_task_auto_single_and_multilabel(tmp_path):
    _store(tmp_path / "ml" / "train.h5", [[0, 1], [1], [2], [0, 2], [1, 2], [0]] * 3)
    assert load_splits(tmp_path / "ml").task == "multilabel"
    with pytest.raises(StoreError, match="carry several labels.*--task multilabel"):
        load_splits(tmp_path / "ml", task="single")
    _store(tmp_path / "sl" / "train.h5", [[0], [1], [2]] * 6, multilabel=False)
    assert load_splits(tmp_path / "sl").task == "single"
    splits = load_splits(tmp_path / "sl", task="multilabel")  # one-vs-rest on one-label videos
    assert splits.task == "multilabel" and splits.val.targets.sum(axis=1).tolist() == [1] * len(splits.val)


def test_a_class_without_a_training_video_is_named(tmp_path):
    _store(tmp_path / "d" / "train.h5", [[0, 1], [1], [0]] * 4)
    _store(tmp_path / "d" / "val.h5", [[2], [0, 2]])
    with pytest.raises(StoreError, match="class\\(es\\) rain have no training video"):
        load_splits(tmp_path / "d")
