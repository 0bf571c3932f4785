"""vidcls.evaluation.temperature against independent expectations: values worked out by hand (softmaxes,
NLLs, ECE bin by bin), closed-form temperatures, and a brute-force fine-grid minimiser of the objective."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vidcls.engine.probs import _logsumexp
from vidcls.evaluation.temperature import (
    T_BOUNDS,
    _golden_min,
    as_4d,
    expected_calibration_error,
    fit_temperature,
    nll,
    served_probs,
    temperature_objective,
)

LOG3 = math.log(3.0)


def brute_force_temperature(logits, labels, bounds=T_BOUNDS, prior_sigma=0.5, points=20001) -> float:
    """The minimiser of ``temperature_objective`` over a fine grid of ``log T`` (spacing 3e-4 on T_BOUNDS)."""
    loss = temperature_objective(logits, labels, prior_sigma)
    grid = np.linspace(math.log(bounds[0]), math.log(bounds[1]), points)
    return math.exp(grid[int(np.argmin([loss(s) for s in grid]))])


def three_to_one(a: float):
    """Four 2-class videos with logits ``(a, 0)``, three labelled 0 and one 1: the NLL in T is
    -3/4 log sigmoid(a/T) - 1/4 log sigmoid(-a/T), smallest where sigmoid(a/T) = 3/4, i.e. T = a / log 3."""
    return np.array([[a, 0.0]] * 4), np.array([0, 0, 0, 1])


# ------------------------------------------------------------------------------------------ as_4d
def re_shape(shape) -> str:
    """``shape`` as a regular expression matching its tuple repr."""
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_as_4d_reads_n_c_as_one_member_and_one_view_in_float64():
    z = as_4d([[1, 2, 3], [4, 5, 6]])  # Python ints in
    assert z.shape == (2, 1, 1, 3) and z.dtype == np.float64
    assert z[1, 0, 0].tolist() == [4.0, 5.0, 6.0]


def test_as_4d_reads_n_m_c_as_one_view():
    x = np.arange(24.0).reshape(3, 2, 4)
    z = as_4d(x)
    assert z.shape == (3, 2, 1, 4)
    np.testing.assert_array_equal(z[:, :, 0, :], x)


def test_as_4d_keeps_n_m_v_c():
    x = np.arange(48.0).reshape(2, 3, 2, 4)
    np.testing.assert_array_equal(as_4d(x), x)


def test_as_4d_accepts_a_single_class():
    assert as_4d(np.zeros((5, 1))).shape == (5, 1, 1, 1)
    assert as_4d(np.zeros((5, 2, 3, 1))).shape == (5, 2, 3, 1)


@pytest.mark.parametrize("shape", [(4,), (1, 1, 1, 1, 2)])
def test_as_4d_refuses_other_ranks_naming_the_shape(shape):
    with pytest.raises(
        ValueError,
        match=rf"^logits must be \(N, C\), \(N, M, C\) or \(N, M, V, C\); "
        rf"got shape {re_shape(shape)}$",
    ):
        as_4d(np.zeros(shape))


@pytest.mark.parametrize("shape", [(3, 0), (3, 2, 0), (3, 2, 2, 0)])
def test_as_4d_refuses_zero_classes_naming_the_shape(shape):
    with pytest.raises(ValueError, match=rf"got shape {re_shape(shape)}$"):
        as_4d(np.zeros(shape))


# ----------------------------------------------------------------------------- softmax, logsumexp
def test_served_probs_default_temperature_is_one():
    # softmax(0, log 3) = (1/4, 3/4); softmax(log 2, 0, log 2) = (2/5, 1/5, 2/5) for the second row
    z = np.array([[0.0, LOG3, -np.inf], [math.log(2), 0.0, math.log(2)]])
    np.testing.assert_allclose(served_probs(z), [[0.25, 0.75, 0.0], [0.4, 0.2, 0.4]], rtol=1e-12)


def test_served_probs_divides_by_the_temperature():
    z = np.array([[0.0, 2 * LOG3]])  # / 2 -> (0, log 3)
    np.testing.assert_allclose(served_probs(z, 2.0), [[0.25, 0.75]], rtol=1e-12)


def test_served_probs_is_stable_per_row_when_rows_are_far_apart():
    # a row at 0 and a row at 2000: exp(-2000) underflows, so each row needs its own max
    z = np.array([[0.0, LOG3], [2000.0, 2000.0 + LOG3]])
    np.testing.assert_allclose(served_probs(z), [[0.25, 0.75], [0.25, 0.75]], rtol=1e-12)


def test_served_probs_averages_members_and_views():
    # member 0: (1/4, 3/4), member 1: (3/4, 1/4) -> mean (1/2, 1/2); the second video is far off in scale
    z = np.array([[[0.0, LOG3], [LOG3, 0.0]], [[1000.0, 1000.0 + LOG3], [1000.0 + LOG3, 1000.0]]])
    np.testing.assert_allclose(served_probs(z), [[0.5, 0.5], [0.5, 0.5]], rtol=1e-12)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_logsumexp_skips_minus_inf_entries():
    z = np.array([[0.0, -np.inf, LOG3], [-np.inf, -np.inf, -np.inf]])
    out = _logsumexp(z)
    assert out[0] == pytest.approx(math.log(4), rel=1e-12)
    assert out[1] == -np.inf


def test_logsumexp_of_large_values_does_not_overflow():
    out = _logsumexp(np.array([[1000.0, 1000.0], [1000.0, 1000.0 + LOG3]]))
    np.testing.assert_allclose(out, [1000 + math.log(2), 1000 + math.log(4)], rtol=1e-15)


def test_logsumexp_is_stable_per_row_when_rows_are_far_apart():
    out = _logsumexp(np.array([[0.0, 0.0], [2000.0, 2000.0]]))
    np.testing.assert_allclose(out, [math.log(2), 2000 + math.log(2)], rtol=1e-15)


def test_logsumexp_drops_only_the_reduced_axis():
    z = np.array([[[0.0, LOG3, 0.0]], [[5.0, 5.0, 5.0]]])  # (2, 1, 3): a size-1 axis that must stay
    out = _logsumexp(z, axis=-1)
    assert out.shape == (2, 1)
    np.testing.assert_allclose(out[:, 0], [math.log(5), 5 + LOG3], rtol=1e-12)


def test_logsumexp_along_the_first_axis():
    out = _logsumexp(np.array([[0.0, 7.0], [LOG3, 7.0]]), axis=0)
    np.testing.assert_allclose(out, [math.log(4), 7 + math.log(2)], rtol=1e-12)


# -------------------------------------------------------------------------------------------- nll
def test_nll_is_the_mean_minus_log_of_the_true_class():
    probs = [[0.5, 0.5], [0.25, 0.75]]
    assert nll(probs, [0, 1]) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-12)


def test_nll_clips_a_zero_probability_at_eps():
    probs = [[0.0, 1.0], [1.0, 0.0]]
    assert nll(probs, [0, 0]) == pytest.approx(-math.log(1e-12) / 2, rel=1e-12)
    assert nll(probs, [0, 0], eps=1e-6) == pytest.approx(-math.log(1e-6) / 2, rel=1e-12)


def test_nll_of_float32_probabilities_is_computed_in_float64():
    p32 = np.array([[0.3, 0.7], [0.9, 0.1], [0.123, 0.877]], dtype=np.float32)
    want = -np.mean(np.log(p32.astype(np.float64)[[0, 1, 2], [0, 0, 1]]))
    assert nll(p32, [0, 0, 1]) == pytest.approx(want, rel=1e-14)


def test_nll_casts_integer_valued_float_labels_to_class_indices():
    probs = [[0.5, 0.5], [0.25, 0.75]]
    assert nll(probs, np.array([0.0, 1.0])) == nll(probs, [0, 1])


# -------------------------------------------------------------------------------------------- ECE
# bins=4: (0, 1/4], (1/4, 1/2], (1/2, 3/4], (3/4, 1] (confidence 0 in the first); dyadic values, so
# every confidence sits exactly where written, three of them exactly on an edge.
ECE_PROBS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],  # conf 0     -> bin 0, argmax 0, label 0: right
        [0.25, 0.25, 0.25, 0.25],  # conf 1/4   -> bin 0 (upper edge), argmax 0, label 1: wrong
        [0.5, 0.5, 0.0, 0.0],  # conf 1/2   -> bin 1 (upper edge), argmax 0, label 1: wrong
        [0.625, 0.375, 0.0, 0.0],  # conf 5/8   -> bin 2, label 1: wrong
        [0.125, 0.875, 0.0, 0.0],  # conf 7/8   -> bin 3, label 1: right
        [0.0, 0.0, 1.0, 0.0],  # conf 1     -> bin 3 (upper edge), label 2: right
    ]
)
ECE_LABELS = [0, 1, 1, 1, 1, 2]


def test_ece_by_hand_with_edges_and_confidence_zero():
    # bin 0: |1/2 - 1/8| * 2/6; bin 1: |0 - 1/2| * 1/6; bin 2: |0 - 5/8| * 1/6; bin 3: |1 - 15/16| * 2/6
    want = (0.75 + 0.5 + 0.625 + 0.125) / 6
    assert expected_calibration_error(ECE_PROBS, ECE_LABELS, bins=4) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(1 / 3)


def test_ece_of_one_video_is_its_confidence_gap():
    assert expected_calibration_error([[0.7, 0.3]], [0]) == pytest.approx(0.3, rel=1e-12)
    assert expected_calibration_error([[0.7, 0.3]], [1]) == pytest.approx(0.7, rel=1e-12)


def test_ece_of_no_videos_is_nan():
    assert math.isnan(expected_calibration_error(np.zeros((0, 3)), []))


def test_ece_default_bins_are_fifteen():
    # 0.70 and 0.72 share (2/3, 11/15] under 15 bins (one right, one wrong): |1/2 - 0.71| = 0.21
    probs = [[0.70, 0.30], [0.28, 0.72]]
    assert expected_calibration_error(probs, [0, 0]) == pytest.approx(0.21, rel=1e-12)


def test_ece_puts_a_float32_confidence_just_above_an_edge_in_the_upper_bin():
    # float32(0.3) = 0.30000001192...: above 3/10, so with 0.35 in (0.3, 0.4]; float32 arithmetic would
    # round 0.30000001 * 10 to exactly 3 and put it one bin lower
    probs = np.array([[0.3, 0.1], [0.35, 0.1]], dtype=np.float32)
    assert float(probs[0, 0]) > 0.3
    mean_conf = (float(probs[0, 0]) + float(probs[1, 0])) / 2
    got = expected_calibration_error(probs, [1, 0], bins=10)
    assert got == pytest.approx(abs(0.5 - mean_conf), rel=1e-6)


# ----------------------------------------------------------------------------------- golden section
def test_golden_min_finds_the_vertex_of_a_quadratic():
    assert _golden_min(lambda x: (x - 0.3) ** 2 + 2, -1.0, 2.0) == pytest.approx(0.3, abs=1e-5)


def test_golden_min_stops_at_its_tolerance():
    calls = []

    def f(x):
        calls.append(x)
        return (x - 0.3) ** 2

    x = _golden_min(f, -1.0, 2.0, tol=1e-2)
    assert abs(x - 0.3) < 1e-2
    # the bracket shrinks by 0.618 per evaluation: 3 -> below 0.01 takes 12 steps (+2 to start)
    assert len(calls) == 14


def test_golden_min_of_a_monotone_function_is_at_the_bound():
    assert _golden_min(lambda x: x, 0.0, 1.0) == pytest.approx(0.0, abs=1e-5)
    assert _golden_min(lambda x: -x, 0.0, 1.0) == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------- fit_temperature
def test_fit_refuses_no_videos():
    with pytest.raises(
        ValueError, match=r"^fit_temperature needs one label per video; got 0 videos, 0 labels$"
    ):
        fit_temperature(np.zeros((0, 3)), [])


def test_fit_refuses_mismatched_labels_with_both_counts():
    with pytest.raises(
        ValueError, match=r"^fit_temperature needs one label per video; got 3 videos, 2 labels$"
    ):
        fit_temperature(np.zeros((3, 2)), [0, 1])


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0]])
def test_fit_refuses_labels_outside_the_classes(labels):
    with pytest.raises(ValueError, match=r"^labels must lie in 0\.\.2$"):
        fit_temperature(np.zeros((2, 3)), labels)


def test_fit_on_one_video_matches_the_brute_force_minimiser():
    z, y = np.array([[2.0, 0.0, 0.0]]), [0]
    t = fit_temperature(z, y)
    assert T_BOUNDS[0] <= t <= T_BOUNDS[1]
    assert t == pytest.approx(brute_force_temperature(z, y), rel=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_matches_the_brute_force_minimiser(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1 + 2 * seed, (50, 2, 3, 4))
    y = rng.integers(0, 4, 50)
    t = fit_temperature(z, y)
    assert T_BOUNDS[0] <= t <= T_BOUNDS[1]
    assert t == pytest.approx(brute_force_temperature(z, y), rel=1e-3)


@pytest.mark.parametrize("grid", [2, 3])
def test_fit_with_a_coarse_grid_still_finds_the_minimiser(grid):
    rng = np.random.default_rng(7)
    z = rng.normal(0, 4, (60, 3))
    y = rng.integers(0, 3, 60)
    want = brute_force_temperature(z, y)
    assert abs(math.log(want)) > 0.2  # not T = 1, which the fit also tries on its own
    assert fit_temperature(z, y, grid=grid) == pytest.approx(want, rel=1e-3)


def test_fit_by_likelihood_alone_matches_the_closed_form():
    z, y = three_to_one(1.0)
    assert fit_temperature(z, y, prior_sigma=None) == pytest.approx(1 / LOG3, rel=1e-4)


@pytest.mark.parametrize("bounds", [(0.9, 20.0), (0.05, 0.92)])
def test_fit_refines_a_minimiser_in_the_first_or_last_grid_interval(bounds):
    # T* = 1 / log 3 = 0.9102 lies between the first two (last two) grid points, nearer the bound:
    # refined there, not left on the grid point at the bound
    z, y = three_to_one(1.0)
    t = fit_temperature(z, y, bounds=bounds, prior_sigma=None)
    assert t == pytest.approx(1 / LOG3, rel=1e-4)
    assert bounds[0] < t < bounds[1]


@pytest.mark.parametrize("grid", [2, 4])
def test_fit_returns_exactly_one_on_a_split_calibrated_at_one_with_no_grid_point_there(grid):
    # logits (log 3, 0), labels 3:1: NLL and prior are both smallest at T = 1; the search lands a few
    # 1e-6 away, which loses to T = 1 itself
    z, y = three_to_one(LOG3)
    assert fit_temperature(z, y, grid=grid) == 1.0


def test_fit_falls_back_to_the_grid_point_when_refinement_does_not_beat_it():
    # bounds (1/2, 2), 3 points: the middle one is log T = 0, the exact minimiser; golden section on the
    # whole range lands beside it, so the grid point itself is kept
    z, y = three_to_one(LOG3)
    assert fit_temperature(z, y, bounds=(0.5, 2.0), grid=3) == 1.0


def test_t_equal_1_wins_an_exact_tie():
    """Margins so large that the NLL is exactly 0 at every T in the bounds: nothing beats T = 1, so the
    fit returns 1.0 (the uncalibrated model), not the first grid point it happened to search."""
    logits = np.zeros((8, 3))
    labels = np.arange(8) % 3
    logits[np.arange(8), labels] = 1000.0
    assert fit_temperature(logits, labels, prior_sigma=None) == 1.0
    assert fit_temperature(logits, labels) == 1.0  # the prior alone prefers T = 1 too
