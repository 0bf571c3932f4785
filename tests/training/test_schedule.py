"""Tests for vidcls.training.schedule: the per-batch schedule position and the closed-form LR."""

from __future__ import annotations

import math

import pytest
import torch

from vidcls.config import TrainConfig
from vidcls.data.dataset import collate
from vidcls.training.loop import train_one_epoch
from vidcls.training.schedule import (
    cycle_ends,
    epoch_draws,
    fractional_epoch,
    lr_at,
    stop_at_cycle_end,
)

# ---------------------------------------------------------------- fractional_epoch


@pytest.mark.parametrize(
    "epoch, i, n, expected",
    [
        (0, 0, 4, 0.25),
        (0, 1, 4, 0.5),
        (3, 3, 4, 4.0),  # the last batch lands exactly on the next whole epoch
        (2, 0, 1, 3.0),  # one batch per epoch: whole epochs
        (5, 1, 3, 5 + 2 / 3),
    ],
)
def test_fractional_epoch_hand_values(epoch, i, n, expected):
    assert fractional_epoch(epoch, i, n) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 49])
def test_fractional_epoch_ends_on_whole_epochs(n):
    positions = [fractional_epoch(6, i, n) for i in range(n)]
    assert positions[-1] == 7.0  # exact, so a restart at epoch 7 is not missed by rounding
    assert all(6 < p <= 7 for p in positions)
    assert all(b - a == pytest.approx(1 / n) for a, b in zip(positions, positions[1:]))


@pytest.mark.parametrize(
    "i, n, match",
    [
        (0, 0, "n_batches"),
        (0, -2, "n_batches"),
        (-1, 4, "batch_index"),
        (4, 4, "batch_index"),
    ],
)
def test_fractional_epoch_rejects_bad_positions(i, n, match):
    with pytest.raises(ValueError, match=match):
        fractional_epoch(0, i, n)


def test_fractional_epoch_accepts_the_edges():
    assert fractional_epoch(0, 0, 1) == 1.0
    assert fractional_epoch(1, 9, 10) == 2.0


# ---------------------------------------------------------------- lr_at

BASE, FLOOR = 1e-3, 1e-6


def test_lr_at_hand_values_first_cycle():
    assert lr_at(0, BASE, FLOOR, 20, 2) == pytest.approx(BASE, rel=1e-12)
    # half way through the first cycle: cos(pi/2) = 0, the mid point of base and floor
    assert lr_at(10, BASE, FLOOR, 20, 2) == pytest.approx((BASE + FLOOR) / 2, rel=1e-12)
    # a quarter: (1 + cos(pi/4)) / 2
    assert lr_at(5, BASE, FLOOR, 20, 2) == pytest.approx(
        FLOOR + (BASE - FLOOR) * (1 + math.sqrt(0.5)) / 2, rel=1e-12
    )
    # just before the restart the LR is at the floor
    assert lr_at(19.999, BASE, FLOOR, 20, 2) == pytest.approx(FLOOR, abs=1e-10)


def test_lr_at_restarts_with_growing_cycles():
    # t0 = 20, t_mult = 2: cycles [0, 20), [20, 60), [60, 140), [140, 300)
    for restart in (0, 20, 60, 140):
        assert lr_at(restart, BASE, FLOOR, 20, 2) == pytest.approx(BASE, rel=1e-12)
    # the second cycle lasts 40 epochs: its mid point is epoch 40, not 30
    assert lr_at(40, BASE, FLOOR, 20, 2) == pytest.approx((BASE + FLOOR) / 2, rel=1e-12)
    assert lr_at(30, BASE, FLOOR, 20, 2) == pytest.approx(
        FLOOR + (BASE - FLOOR) * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12
    )
    # third cycle (80 epochs), a quarter in
    assert lr_at(80, BASE, FLOOR, 20, 2) == pytest.approx(
        FLOOR + (BASE - FLOOR) * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12
    )


def test_lr_at_t_mult_one_is_periodic():
    for t in (0.0, 0.3, 2.5, 4.9):
        assert lr_at(t + 5, 0.1, 0.0, 5, 1) == pytest.approx(lr_at(t, 0.1, 0.0, 5, 1), rel=1e-9, abs=1e-15)
    assert lr_at(2.5, 0.1, 0.0, 5, 1) == pytest.approx(0.05, rel=1e-12)
    assert lr_at(7.5, 0.1, 0.0, 5, 1) == pytest.approx(0.05, rel=1e-12)
    assert lr_at(10, 0.1, 0.0, 5, 1) == pytest.approx(0.1, rel=1e-12)


def test_lr_at_never_leaves_the_band():
    for k in range(3000):
        lr = lr_at(k / 10, BASE, FLOOR, 3, 3)
        assert FLOOR - 1e-15 <= lr <= BASE + 1e-15


def test_lr_at_matches_torch_scheduler_stepped_per_batch():
    # torch's CosineAnnealingWarmRestarts stepped at fractional epochs, as train_one_epoch steps it
    for t0, t_mult in ((3, 2), (4, 1), (2, 3)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=t0, T_mult=t_mult, eta_min=0.01)
        n = 7  # batches per epoch: positions k / 7 never hit a restart except on whole epochs
        for epoch in range(30):
            for i in range(n):
                t = fractional_epoch(epoch, i, n)
                sched.step(t)
                assert opt.param_groups[0]["lr"] == pytest.approx(
                    lr_at(t, 0.5, 0.01, t0, t_mult), rel=1e-9, abs=1e-12
                ), (t0, t_mult, t)


def test_lr_at_accepts_the_smallest_cycles():
    # t0 = 1 and t_mult = 1: a restart every epoch
    assert lr_at(0.5, 0.2, 0.0, 1, 1) == pytest.approx(0.1, rel=1e-12)
    assert lr_at(3.0, 0.2, 0.0, 1, 1) == pytest.approx(0.2, rel=1e-12)
    assert lr_at(0, 0.2, 0.0, 1, 1) == pytest.approx(0.2, rel=1e-12)


@pytest.mark.parametrize(
    "args, match",
    [
        ((-0.5, BASE, FLOOR, 20, 2), "t must be"),
        ((1.0, BASE, FLOOR, 0, 2), "t0"),
        ((1.0, BASE, FLOOR, 20, 0), "t_mult"),
    ],
)
def test_lr_at_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        lr_at(*args)


# ---------------------------------------------------------------- train_one_epoch steps with it


class MeanLinear(torch.nn.Module):
    """The smallest model with the (x, lengths) -> logits interface."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x, lengths):
        return self.lin(x.mean(1))


class RecordingScheduler:
    def __init__(self):
        self.steps = []

    def step(self, t):
        self.steps.append(t)


def test_train_one_epoch_steps_schedule_at_fractional_epochs():
    torch.manual_seed(0)
    model = MeanLinear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = RecordingScheduler()
    batch = collate([(torch.randn(5, 4), 0, 0), (torch.randn(3, 4), 1, 1)])
    cfg = TrainConfig(epochs=10)
    train_one_epoch(
        model,
        [batch] * 3,
        torch.nn.CrossEntropyLoss(),
        opt,
        sched,
        4,
        device=torch.device("cpu"),
        epochs=cfg.epochs,
        grad_clip=cfg.grad_clip,
    )
    assert sched.steps == pytest.approx([4 + 1 / 3, 4 + 2 / 3, 5.0], abs=1e-12)
    assert sched.steps[-1] == 5.0


# ---------------------------------------------------------------- cycles, stopping, small sets


def test_cycle_ends_hand_values():
    # the spec's schedule: cycles of 20, 40, 80, 160 epochs end at 20, 60, 140, 300
    assert cycle_ends(20, 2, 150) == [20, 60, 140]
    assert cycle_ends(20, 2, 19) == []
    assert cycle_ends(20, 2, 60) == [20, 60]
    assert cycle_ends(3, 1, 10) == [3, 6, 9]
    with pytest.raises(ValueError):
        cycle_ends(0, 2, 10)


@pytest.mark.parametrize(
    "epoch, best, patience, stop",
    [
        (45, 3, 1, False),  # mid-cycle (cycle 2 runs 21-60): never stop there, however old the best is
        (20, 3, 1, False),  # end of the first cycle: it brought the best, nothing to compare
        (60, 20, 1, True),  # end of cycle 2: best at 20 = end of cycle 1, so cycle 2 brought nothing
        (60, 21, 1, False),  # cycle 2 improved (epoch 21)
        (140, 60, 1, True),  # cycle 3 (61-140) brought nothing
        (140, 60, 2, False),  # two cycles of patience: the best (60) is within cycles 2-3
        (140, 20, 2, True),  # ... but at 20 it is older than both
        (60, 1, 0, False),  # patience 0: never
    ],
)
def test_stop_at_cycle_end_rule(epoch, best, patience, stop):
    assert stop_at_cycle_end(epoch, best, 20, 2, patience) is stop


@pytest.mark.parametrize(
    "n, batch, min_steps, expected",
    [
        (30, 48, 10, 480),  # ArrowHead-sized: 10 full batches of 48 per epoch, the set 16 times over
        (479, 48, 10, 480),
        (480, 48, 10, 480),  # 480 = 10 x 48: one pass, the spec's epoch
        (3000, 48, 10, 3000),
        (30, 48, 0, 30),  # 0: always one pass
    ],
)
def test_epoch_draws_grow_small_sets_only(n, batch, min_steps, expected):
    assert epoch_draws(n, batch, min_steps) == expected
