"""find_pareto_front and hypervolume against brute-force definitions and Optuna's own answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nas_distill.search import pareto
from nas_distill.search.pareto import find_pareto_front, hypervolume

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------------------- reference answers
def brute_front(points: np.ndarray) -> np.ndarray:
    """The definition, O(n^2): i is on the front unless some j is >= everywhere and > somewhere."""
    points = np.asarray(points)
    keep = []
    for i in range(len(points)):
        dominated = any(
            np.all(points[j] >= points[i]) and np.any(points[j] > points[i]) for j in range(len(points))
        )
        if not dominated:
            keep.append(i)
    return np.array(keep, dtype=int)


def optuna_front(points: np.ndarray, higher: list[bool]) -> np.ndarray:
    """Row numbers of ``study.best_trials`` for a study holding ``points`` as its trials' values.

    ``points`` are raw values in the study's directions; each trial records its row number.
    """
    directions = ["maximize" if h else "minimize" for h in higher]
    study = optuna.create_study(directions=directions)
    study.add_trials(
        [
            optuna.trial.create_trial(values=[float(v) for v in row], user_attrs={"row": i})
            for i, row in enumerate(points)
        ]
    )
    return np.array(sorted(t.user_attrs["row"] for t in study.best_trials), dtype=int)


def brute_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact volume of the union of boxes [reference, p] by inclusion-exclusion (small n only)."""
    points = np.asarray(points, dtype=float)
    points = points[(points > reference).all(axis=1)]
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(range(len(points)), k):
            corner = points[list(subset)].min(axis=0)
            total += (-1) ** (k + 1) * float(np.prod(corner - reference))
    return total


def grid_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact for integer-valued points: count the unit cells dominated by some point."""
    points = np.asarray(points, dtype=int)
    points = points[(points > reference).all(axis=1)]
    if len(points) == 0:
        return 0.0
    ranges = [range(int(r), int(points[:, d].max())) for d, r in enumerate(reference)]
    count = 0
    for cell in itertools.product(*ranges):
        upper = np.array(cell) + 1  # the cell [cell, cell + 1] is covered iff upper <= some point
        if np.any((points >= upper).all(axis=1)):
            count += 1
    return float(count)


small_int_matrices = st.integers(1, 4).flatmap(
    lambda m: hnp.arrays(np.int64, st.tuples(st.integers(0, 40), st.just(m)), elements=st.integers(0, 3))
)


# ------------------------------------------------------------------------------- find_pareto_front
@settings(max_examples=300, deadline=None)
@given(small_int_matrices)
def test_front_equals_brute_force_definition(points):
    assert np.array_equal(find_pareto_front(points), brute_front(points))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 4).flatmap(
        lambda m: st.tuples(
            hnp.arrays(np.int64, st.tuples(st.integers(1, 30), st.just(m)), elements=st.integers(0, 3)),
            st.lists(st.booleans(), min_size=m, max_size=m),
        )
    )
)
def test_front_matches_optuna_best_trials_with_ties(case):
    """Small integers force ties; identical vectors must all be kept, as study.best_trials does."""
    raw, higher = case
    # find_pareto_front is "higher is better": flip the minimised columns.
    signs = np.where(higher, 1, -1)
    assert np.array_equal(find_pareto_front(raw * signs), optuna_front(raw, higher))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 6).flatmap(
        lambda m: hnp.arrays(
            np.float64,
            st.tuples(st.integers(0, 300), st.just(m)),
            elements=st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.inf, -math.inf])),
        )
    )
)
def test_front_matches_optuna_internal_on_floats(points):
    from optuna.study._multi_objective import _is_pareto_front

    expected = np.flatnonzero(_is_pareto_front(-points, assume_unique_lexsorted=False)) if len(points) else []
    assert np.array_equal(find_pareto_front(points), np.asarray(expected, dtype=int))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda m: hnp.arrays(
            np.float64, st.tuples(st.integers(1, 60), st.just(m)),
            elements=st.floats(-10, 10, allow_subnormal=False), unique=False,
        )
    )
)
def test_front_on_floats_equals_brute_force(points):
    """Mostly distinct first columns: exercises the argsort fast path as well as the lexsort path."""
    assert np.array_equal(find_pareto_front(points), brute_front(points))


def test_fast_path_and_tie_path_agree():
    rng = np.random.default_rng(7)
    points = rng.random((2000, 3))
    tied = points.copy()
    tied[::2, 0] = tied[1::2, 0]  # same first column in pairs: forces the lexsort path
    for data in (points, tied, np.round(points, 1)):
        assert np.array_equal(find_pareto_front(data), brute_front_fast(data))
    assert find_pareto_front([[0.0, 1.0], [-0.0, 1.0], [-1.0, 2.0]]).tolist() == [0, 1, 2]


def brute_front_fast(points: np.ndarray) -> np.ndarray:
    """The O(n^2) definition, vectorised per row (for a few thousand points)."""
    keep = []
    for i, row in enumerate(points):
        ge = (points >= row).all(axis=1)
        gt = (points > row).any(axis=1)
        if not np.any(ge & gt):
            keep.append(i)
    return np.array(keep, dtype=int)


def test_skyline_blocks_larger_than_data_and_many_blocks(monkeypatch):
    rng = np.random.default_rng(3)
    points = rng.integers(0, 6, (700, 4))
    expected = brute_front(points[:200])
    for start, most in [(1, 1), (2, 8), (16, 1024), (1000, 1000)]:
        monkeypatch.setattr(pareto, "_BLOCK_START", start)
        monkeypatch.setattr(pareto, "_BLOCK_MAX", most)
        assert np.array_equal(find_pareto_front(points[:200]), expected)
    monkeypatch.setattr(pareto, "_CHUNK_ELEMENTS", 7)  # force many comparison chunks
    assert np.array_equal(find_pareto_front(points[:200]), expected)


def test_all_points_on_front_3d():
    rng = np.random.default_rng(0)
    points = rng.random((500, 3))
    points /= points.sum(axis=1, keepdims=True)
    assert np.array_equal(find_pareto_front(points), np.arange(500))


def test_empty_input_gives_empty_int_array():
    for empty in ([], np.empty((0, 3)), np.empty((0,))):
        out = find_pareto_front(empty)
        assert out.shape == (0,) and np.issubdtype(out.dtype, np.integer)


def test_one_metric_keeps_every_maximum():
    assert find_pareto_front([[1], [3], [2], [3]]).tolist() == [1, 3]


def test_lists_ints_and_bools_work():
    assert find_pareto_front([[1, 2], [2, 1], [0, 0], [2, 1]]).tolist() == [0, 1, 3]
    assert find_pareto_front(np.array([[1, 2], [2, 1], [0, 0]], dtype=np.int8)).tolist() == [0, 1]
    assert find_pareto_front([[True, False], [False, True], [False, False]]).tolist() == [0, 1]


def test_extreme_integers_do_not_overflow():
    big = np.iinfo(np.int64)
    points = np.array([[big.min, big.max], [big.max, big.min], [big.min, big.min]])
    assert find_pareto_front(points).tolist() == [0, 1]


def test_infinities_are_ordinary_values():
    points = [[math.inf, 0.0], [1.0, 1.0], [-math.inf, 5.0], [-math.inf, 4.0], [1.0, -math.inf]]
    assert find_pareto_front(points).tolist() == [0, 1, 2]


def test_identical_points_all_kept_or_all_dropped():
    points = [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0], [2, 0, 0]]
    assert find_pareto_front(points).tolist() == [0, 1, 4]


@pytest.mark.parametrize(
    "bad, words",
    [
        ([[1.0, math.nan], [0.0, 1.0]], "NaN"),
        ([[1, 2], [3]], "ragged"),
        ([1, 2, 3], "2-D"),
        ([[[1, 2]]], "2-D"),
        (np.zeros((3, 0)), "at least one metric"),
        ([["a", "b"]], "real numbers"),
        ([[1 + 2j, 0]], "real numbers"),
        ([[1, None]], "NaN"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(bad, words):
    with pytest.raises(ValueError, match=words):
        find_pareto_front(bad)


# ------------------------------------------------------------------------------- hypervolume
def test_hypervolume_simple_cases():
    assert hypervolume([[1, 2], [2, 1]], [0, 0]) == 3.0
    assert hypervolume([[2, 2, 2]], [1, 1, 1]) == 1.0
    assert hypervolume([[1, 2, 3], [3, 2, 1]], [0, 0, 0]) == 10.0
    assert hypervolume([[5.0]], [1.0]) == 4.0
    assert hypervolume(np.empty((0, 2)), [0, 0]) == 0.0


def test_points_not_strictly_better_than_reference_add_nothing():
    assert hypervolume([[1, 0], [0, 1], [-1, 5]], [0, 0]) == 0.0
    assert hypervolume([[2, 2], [3, 0]], [0, 0]) == 4.0
    assert hypervolume([[2, 2, 2], [5, 5, 1]], [1, 1, 1]) == 1.0


def test_hypervolume_infinite_point_and_bad_reference():
    assert hypervolume([[math.inf, 1.0]], [0, 0]) == math.inf
    with pytest.raises(ValueError, match="reference"):
        hypervolume([[1, 1]], [0, math.nan])
    with pytest.raises(ValueError, match="match reference"):
        hypervolume([[1, 1, 1]], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        hypervolume([[1, math.nan]], [0, 0])


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(np.int64, st.tuples(st.integers(0, 12), st.just(2)), elements=st.integers(-2, 8)),
    st.tuples(st.integers(-3, 2), st.integers(-3, 2)),
)
def test_hypervolume_2d_equals_grid_count(points, reference):
    reference = np.array(reference)
    assert hypervolume(points, reference) == pytest.approx(grid_hypervolume(points, reference))


@settings(max_examples=80, deadline=None)
@given(hnp.arrays(np.int64, st.tuples(st.integers(0, 9), st.just(3)), elements=st.integers(-1, 5)))
def test_hypervolume_3d_equals_grid_count(points):
    reference = np.array([0, -1, 0])
    assert hypervolume(points, reference) == pytest.approx(grid_hypervolume(points, reference))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(3, 4).flatmap(
        lambda m: hnp.arrays(
            np.float64, st.tuples(st.integers(1, 7), st.just(m)), elements=st.floats(0.0, 1.0)
        )
    )
)
def test_hypervolume_nd_equals_inclusion_exclusion_and_slicing_fallback(points):
    reference = np.zeros(points.shape[1])
    expected = brute_hypervolume(points, reference)
    assert hypervolume(points, reference) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    gains = points[(points > 0).all(axis=1)]
    if len(gains):
        assert pareto._hv_slicing(gains) == pytest.approx(expected, rel=1e-9, abs=1e-12)
