"""One forward engine: ``forward`` over models x views x sequences, and the ``Outputs`` it returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidcls.data.dataset import FeatureDataset
from vidcls.engine.forward import ArraySequences, DatasetSequences, Outputs, as_sequences, forward
from vidcls.engine.views import tta_indices
from vidcls.models import build_model
from vidcls.store import write_store
from vidcls.store.reader import FeatureStore

ALL = ("original", "reverse", "speed_up", "speed_down")
CPU = torch.device("cpu")


def _model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return build_model(
        "bilstm_attn", feature_dim=3, n_classes=3, hidden_dim=8, layers=1, heads=2, dropout=dropout
    )


def _alone(model, v: torch.Tensor, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits and attention of one video alone (no padding) under ``mode``."""
    view = v[tta_indices(len(v), mode)]
    with torch.inference_mode():
        z, a = model(view[None].float(), torch.tensor([len(view)]), return_attention=True)
    return z[0].double().numpy(), a[0].double().numpy()


# ---------------------------------------------------------------- forward


def test_forward_matches_each_video_alone_in_input_order():
    models = [_model(0).eval(), _model(1).eval()]
    vids = [torch.randn(n, 3) for n in (13, 7, 4, 12, 6)]
    # batches of two, in input order: (13, 7), (4, 12), (6)
    out = forward(models, ALL, vids, batch_size=2, batch_frames=None, device=CPU)
    assert out.logits.shape == (5, 2, 4, 3) and out.logits.dtype == np.float64
    assert (out.members, out.views, out.labels, out.attention) == ((0, 1), ALL, None, None)
    for i, v in enumerate(vids):
        for m, model in enumerate(models):
            for k, mode in enumerate(ALL):
                np.testing.assert_allclose(out.logits[i, m, k], _alone(model, v, mode)[0], atol=1e-6)


def test_forward_batches_by_the_frame_budget_in_input_order():
    """Lengths 5, 100, 6, 99: two videos a batch in input order pad to 100 and 99; a 120-frame budget
    puts every video in a batch of its own (5 + 100 > 120 padded as 2 x 100)."""
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, lengths):
            seen.append((x.shape[0], x.shape[1], lengths.tolist()))
            return x[torch.arange(len(x)), lengths - 1]  # logits: the last valid frame

    vids = [np.full((n, 3), float(n), np.float32) for n in (5, 100, 6, 99)]
    out = forward([Spy()], ["original"], vids, batch_size=2, batch_frames=None, device=CPU)
    assert seen == [(2, 100, [5, 100]), (2, 99, [6, 99])]
    np.testing.assert_array_equal(out.logits[:, 0, 0, 0], [5, 100, 6, 99])
    seen.clear()
    forward([Spy()], ["original"], vids, batch_size=2, batch_frames=120, device=CPU)
    assert [s[0] for s in seen] == [1, 1, 1, 1]


def test_shortest_first_pads_less_and_keeps_input_order():
    """Lengths 5, 100, 6, 99 shortest first: batches (5, 6) and (99, 100) pad to 6 and 100 frames
    (206 padded rows of 2 x 2, against 398 in input order); the outputs stay in input order."""
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, lengths):
            seen.append((x.shape[0], x.shape[1], lengths.tolist()))
            return x[torch.arange(len(x)), lengths - 1]

    vids = [np.full((n, 3), float(n), np.float32) for n in (5, 100, 6, 99)]
    out = forward(
        [Spy()], ["original"], vids, batch_size=2, batch_frames=None, device=CPU, shortest_first=True
    )
    assert seen == [(2, 6, [5, 6]), (2, 100, [99, 100])]
    np.testing.assert_array_equal(out.logits[:, 0, 0, 0], [5, 100, 6, 99])


def test_forward_without_the_original_view_still_gives_its_attention_and_runs_in_eval_mode():
    models = [_model(0, dropout=0.5).train(), _model(1, dropout=0.5).train()]  # train mode would be random
    vids = [torch.randn(n, 3) for n in (12, 6, 9)]
    out = forward(
        models,
        ("reverse", "speed_up"),
        vids,
        batch_size=8,
        batch_frames=None,
        device=CPU,
        attention=True,
        members=[3, 5],
    )
    assert not any(m.training for m in models)
    assert out.views == ("reverse", "speed_up") and out.members == (3, 5) and out.logits.shape == (3, 2, 2, 3)
    for i, v in enumerate(vids):
        want = np.mean([_alone(m, v, "original")[1] for m in models], axis=0)  # mean over members
        assert out.attention[i].shape == (len(v),)
        np.testing.assert_allclose(out.attention[i], want, atol=1e-6)
        np.testing.assert_allclose(out.logits[i, 1, 0], _alone(models[1], v, "reverse")[0], atol=1e-6)
    again = forward(
        [m.train() for m in models],
        ("reverse", "speed_up"),
        vids,
        batch_size=1,
        batch_frames=None,
        device=CPU,
    )
    np.testing.assert_allclose(again.logits, out.logits, atol=1e-6)


def test_forward_of_nothing_keeps_the_shape():
    out = forward([_model()], ALL, [], batch_size=4, batch_frames=None, device=CPU, n_classes=3)
    assert out.logits.shape == (0, 1, 4, 3) and len(out) == 0 and out.probs().shape == (0, 3)
    assert forward([_model()], ALL, [], batch_size=4, batch_frames=None, device=CPU).logits.shape == (
        0,
        1,
        4,
        0,
    )


def test_forward_reads_a_dataset_one_batch_at_a_time_with_its_labels(tmp_path):
    rng = np.random.default_rng(0)
    vids = [
        (f"v{i}", rng.normal(size=(n, 3)).astype(np.float32), i % 3) for i, n in enumerate((20, 5, 9, 14))
    ]
    write_store(tmp_path / "s.h5", vids, ["a", "b", "c"], 3)
    store = FeatureStore(tmp_path / "s.h5")
    ds = FeatureDataset(store, [3, 1, 0], max_frames=10)  # thinned to 10 frames, in this order
    reads = []
    read = store.read
    store.read = lambda i, rows=None: reads.append(i) or read(i, rows)
    model = _model().eval()
    out = forward([model], ["original", "reverse"], ds, batch_size=2, batch_frames=None, device=CPU)
    assert reads == [3, 1, 0]  # each video read once
    np.testing.assert_array_equal(out.labels, [0, 1, 0])
    assert out.labels.dtype == np.int64
    for pos in range(3):
        x = ds[pos][0]
        assert len(x) == min(len(vids[ds.indices[pos]][1]), 10)
        np.testing.assert_allclose(out.logits[pos, 0, 1], _alone(model, x, "reverse")[0], atol=1e-6)
    store.close()


def test_as_sequences_reads_datasets_sequences_and_arrays():
    arrays = [np.zeros((4, 2)), np.zeros((7, 2))]
    seqs = as_sequences(arrays)
    assert isinstance(seqs, ArraySequences) and seqs.lengths.tolist() == [4, 7] and len(seqs) == 2
    assert seqs.labels is None and seqs[1] is arrays[1]
    assert as_sequences(seqs) is seqs

    class FakeDataset:
        store, indices, lengths, labels = object(), [0, 1], [3, 2], [1, 0]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(self.lengths[i], 2), self.labels[i], i

    wrapped = as_sequences(FakeDataset())
    assert isinstance(wrapped, DatasetSequences) and wrapped.labels.tolist() == [1, 0]
    assert wrapped[0].shape == (3, 2) and len(wrapped) == 2


def test_a_length_that_does_not_match_its_sequence_is_refused():
    class Lying(ArraySequences):
        pass

    seqs = Lying([np.zeros((4, 3), np.float32)])
    seqs.lengths = np.array([5])
    with pytest.raises(ValueError, match="sequence 0 has 4 frames but its length says 5"):
        forward([_model()], ["original"], seqs, batch_size=1, batch_frames=None, device=CPU)


# ---------------------------------------------------------------- Outputs


def _outputs() -> Outputs:
    """Two videos, models 0 and 2, views original and reverse; logits log(p): softmax gives p back."""
    p = np.array(
        [  # (N, M, V, C)
            [[[0.9, 0.1], [0.5, 0.5]], [[0.7, 0.3], [0.3, 0.7]]],
            [[[0.2, 0.8], [0.4, 0.6]], [[0.6, 0.4], [0.2, 0.8]]],
        ]
    )
    return Outputs(np.log(p), [0, 2], ["original", "reverse"], [0, 1], [np.ones(3), np.ones(5)])


def test_outputs_probs_average_softmax_over_members_and_views():
    out = _outputs()
    np.testing.assert_allclose(out.probs(), [[0.6, 0.4], [0.35, 0.65]])  # (.9 + .5 + .7 + .3) / 4, ...
    np.testing.assert_allclose(out.select(views=["original"]).probs(), [[0.8, 0.2], [0.4, 0.6]])
    np.testing.assert_allclose(out.select(members=[2], views=["reverse"]).probs(), [[0.3, 0.7], [0.2, 0.8]])
    # temperature 2: softmax(log p / 2) = sqrt(p) normalised
    want = np.sqrt([0.9, 0.1]) / np.sqrt([0.9, 0.1]).sum()
    np.testing.assert_allclose(out.select(members=[0], views=["original"]).probs(2.0)[0], want)


def test_outputs_select_keeps_the_order_asked_and_the_attention_of_all_members():
    out = _outputs()
    sub = out.select(members=[2, 0], views=["reverse"])
    assert (sub.members, sub.views) == ((2, 0), ("reverse",)) and sub.logits.shape == (2, 2, 1, 2)
    np.testing.assert_array_equal(sub.logits[:, 0, 0], out.logits[:, 1, 1])
    np.testing.assert_array_equal(sub.labels, [0, 1])
    assert sub.attention is out.attention  # the mean over the same members, in any order
    assert out.select(views=["reverse"]).attention is out.attention
    assert out.select(members=[2]).attention is None and out.select(members=[0, 0]).attention is None
    np.testing.assert_array_equal(out.select().logits, out.logits)
    with pytest.raises(KeyError, match="model 1 was not computed"):
        out.select(members=[1])
    with pytest.raises(KeyError, match="view 'speed_up' was not computed"):
        out.select(views=["speed_up"])


def test_outputs_check_their_shape():
    with pytest.raises(ValueError, match="do not match 2 members x 1 views"):
        Outputs(np.zeros((3, 2, 2, 4)), [0, 1], ["original"])
    with pytest.raises(ValueError, match="2 labels for 3 videos"):
        Outputs(np.zeros((3, 1, 1, 4)), [0], ["original"], [0, 1])
    out = Outputs(np.zeros((3, 1, 1, 4), np.float32), np.array([4]), ("original",), [0, 1, 2])
    assert out.logits.dtype == np.float64 and out.members == (4,) and out.labels.dtype == np.int64
