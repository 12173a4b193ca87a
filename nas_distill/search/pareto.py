"""Pareto front and hypervolume of metric vectors where every metric is "higher is better".

Why our own code instead of Optuna's: the seed API (``find_pareto_front``) takes a plain array, and the
orchestrator and the reports call it on arrays built from the study; it must agree with Optuna's
``study.best_trials`` (ties all kept) while being at least as fast.

Algorithm of :func:`find_pareto_front`:

1. Sort the rows lexicographically in *descending* order and collapse identical rows. After this, a
   row can only be dominated by a row before it. When the first metric has no ties (usual for floats)
   one ``np.argsort`` of that column is the whole sort; otherwise ``np.lexsort`` of every column.
2. One metric: the rows equal to the maximum. Two metrics: one vectorised sweep (a row is on the front
   iff its second metric beats the running maximum of the rows before it). Three or more: a blocked
   skyline. The first ``B`` remaining rows are compared with each other (``B x B`` broadcast); those not
   dominated inside the block are on the front (anything that could dominate them is earlier, so either
   in the block or already removed together with a row it dominates); then every later row dominated
   by one of the new front rows is dropped in one vectorised pass. The block starts at 16 rows (the
   first front rows prune most of random data) and doubles up to 1024 (few Python iterations when
   most rows are on the front). Comparisons are column-wise ANDs, never 3-D temporaries.
3. Map the unique rows back to the input rows, so identical rows are all kept.

Values: ``+inf`` / ``-inf`` are ordinary (best / worst) values; ``NaN`` has no order and raises
``ValueError`` (Optuna never stores a NaN objective of a COMPLETE trial either).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["find_pareto_front", "hypervolume"]

# Elements per (rows x front rows) comparison chunk of the skyline: ~16 MB of bools.
_CHUNK_ELEMENTS = 1 << 24
# The skyline's block grows from _BLOCK_START to _BLOCK_MAX rows: small first blocks find the strong
# front rows cheaply, larger later blocks cut the number of Python iterations on front-heavy data.
_BLOCK_START = 16
_BLOCK_MAX = 1024


def _as_metric_matrix(metrics: Any, name: str = "metrics") -> np.ndarray:
    """Validate and convert to a 2-D real array; raise ``ValueError`` naming the problem."""
    try:
        array = np.asarray(metrics)
    except ValueError as exc:  # ragged nested lists (numpy >= 1.24)
        raise ValueError(
            f"{name}: expected an (n_points, n_metrics) array, got ragged rows ({exc})"
        ) from None
    if array.dtype == object:
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}: expected an (n_points, n_metrics) array of numbers, got ragged rows "
                f"or non-numeric values"
            ) from None
    if (array.ndim == 1 and array.size == 0) or (array.ndim == 2 and array.shape[0] == 0):
        n_metrics = array.shape[1] if array.ndim == 2 else 0
        return np.empty((0, n_metrics), dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D (n_points, n_metrics) array, got {array.ndim}-D with shape "
            f"{array.shape}" + ("; use reshape(-1, 1) for a single metric" if array.ndim == 1 else "")
        )
    if array.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one metric, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.int8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: expected real numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        nan_rows = np.flatnonzero(np.isnan(array).any(axis=1))
        if nan_rows.size:
            raise ValueError(
                f"{name}: NaN has no order; rows {nan_rows[:5].tolist()}"
                f"{'...' if nan_rows.size > 5 else ''} contain NaN"
            )
    return array


def _unique_desc(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows in descending lexicographic order, and for each input row its unique row's index."""
    n, m = array.shape
    # Fast path: when the first column has no ties (the usual case for float metrics), ordering by it
    # alone is already the lexicographic order and every row is unique. np.argsort (SIMD quicksort) is
    # an order of magnitude faster than np.lexsort's stable passes.
    order = np.argsort(array[:, 0])[::-1]
    first = array[order, 0]
    if not np.any(first[1:] == first[:-1]):
        inverse = np.empty(n, dtype=np.intp)
        inverse[order] = np.arange(n)
        return array[order], inverse
    # np.lexsort sorts by its LAST key first; the sort is stable, ascending. Ascending sort of the
    # negated columns gives descending order (for ints, negation of the minimum would overflow, so use
    # a reversed ascending sort instead: equal rows are collapsed anyway, so stability does not matter).
    order = np.lexsort(array.T[::-1])[::-1]
    sorted_rows = array[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    if n > 1:
        np.any(sorted_rows[1:] != sorted_rows[:-1], axis=1, out=new_group[1:])
    group_of_sorted = np.cumsum(new_group) - 1
    inverse = np.empty(n, dtype=np.intp)
    inverse[order] = group_of_sorted
    return sorted_rows[new_group], inverse


def _front_1d(unique_desc: np.ndarray) -> np.ndarray:
    on_front = np.zeros(len(unique_desc), dtype=bool)
    on_front[0] = True
    return on_front


def _front_2d(unique_desc: np.ndarray) -> np.ndarray:
    second = unique_desc[:, 1]
    running_max = np.maximum.accumulate(second)
    on_front = np.empty(len(unique_desc), dtype=bool)
    on_front[0] = True
    on_front[1:] = second[1:] > running_max[:-1]
    return on_front


def _weakly_dominated(rows: np.ndarray, front: np.ndarray) -> np.ndarray:
    """``out[i, j]``: ``front[j] >= rows[i]`` in every column (column-wise AND, no 3-D temporary)."""
    out = front[None, :, 0] >= rows[:, 0, None]
    for col in range(1, rows.shape[1]):
        out &= front[None, :, col] >= rows[:, col, None]
    return out


def _dominated_by_any(rows: np.ndarray, front: np.ndarray) -> np.ndarray:
    """For each row, whether some front row is >= it in every column (chunked)."""
    out = np.zeros(len(rows), dtype=bool)
    if len(rows) == 0 or len(front) == 0:
        return out
    step = max(1, _CHUNK_ELEMENTS // len(front))
    for start in range(0, len(rows), step):
        out[start : start + step] = _weakly_dominated(rows[start : start + step], front).any(axis=1)
    return out


def _front_nd(unique_desc: np.ndarray) -> np.ndarray:
    n = len(unique_desc)
    on_front = np.zeros(n, dtype=bool)
    # The first column is sorted descending: every row already has a first value >= any later row's,
    # and identical rows were collapsed, so "row j >= row i in columns 1:" with j before i means
    # "j dominates i". Dropping column 0 saves a comparison per pair (Optuna does the same).
    values = np.ascontiguousarray(unique_desc[:, 1:])
    remaining = np.arange(n)
    block_size = _BLOCK_START
    while remaining.size:
        block_idx = remaining[:block_size]
        block = values[block_idx]
        # Only an earlier row (j < i) can dominate row i: keep the strict lower triangle.
        inside = np.tril(_weakly_dominated(block, block), k=-1).any(axis=1)
        new_front = block_idx[~inside]
        on_front[new_front] = True
        rest = remaining[block_size:]
        if rest.size:
            rest = rest[~_dominated_by_any(values[rest], values[new_front])]
        remaining = rest
        block_size = min(2 * block_size, _BLOCK_MAX)
    return on_front


def find_pareto_front(metrics: Any) -> np.ndarray:
    """Indices of the non-dominated points, assuming every metric is "higher is better".

    A point is dominated when another point is at least as good in every metric and better in one.
    Points with identical metric vectors are either all on the front or all off it (the same answer
    as Optuna's ``study.best_trials`` on the same values).

    Args:
        metrics: an ``(n_points, n_metrics)`` array-like of real numbers (lists and int arrays work).
            ``n_points`` may be 0. ``+inf`` / ``-inf`` are ordinary values; NaN is rejected.

    Returns:
        An ``(n_pareto_points,)`` integer array of row indices, in ascending order.

    Raises:
        ValueError: the input is not 2-D, is ragged, has no metric columns, is not numeric, or has NaN.
    """
    array = _as_metric_matrix(metrics)
    n, m = array.shape
    if n == 0:
        return np.empty(0, dtype=np.intp)
    unique_desc, inverse = _unique_desc(array)
    if m == 1 or len(unique_desc) == 1:
        on_front = _front_1d(unique_desc)
    elif m == 2:
        on_front = _front_2d(unique_desc)
    else:
        on_front = _front_nd(unique_desc)
    return np.flatnonzero(on_front[inverse])


# ------------------------------------------------------------------------------------------ hypervolume
def _hv_2d(gains: np.ndarray) -> float:
    """Area of the union of boxes [0, g] for positive gains (n, 2): one sweep on x descending."""
    order = np.lexsort((-gains[:, 1], -gains[:, 0]))
    x = gains[order, 0]
    running_y = np.maximum.accumulate(gains[order, 1])
    increments = np.diff(running_y, prepend=0.0)
    return float(np.dot(x, increments))


def _hv_slicing(gains: np.ndarray) -> float:
    """Exact hypervolume of boxes [0, g] in any dimension by slicing on the last axis (HSO).

    Used when Optuna is not importable. Exponential in the dimension, fine for small fronts.
    """
    if gains.shape[1] == 1:
        return float(gains[:, 0].max())
    if gains.shape[1] == 2:
        return _hv_2d(gains)
    gains = gains[find_pareto_front(gains)]
    order = np.argsort(-gains[:, -1], kind="stable")
    gains = gains[order]
    total = 0.0
    for i in range(len(gains)):
        top = gains[i, -1]
        bottom = gains[i + 1, -1] if i + 1 < len(gains) else 0.0
        if top > bottom:
            total += (top - bottom) * _hv_slicing(gains[: i + 1, :-1])
    return total


def hypervolume(points: Any, reference: Any) -> float:
    """Volume dominated by ``points`` and bounded below by ``reference`` (every metric higher is better).

    Points that are not strictly better than ``reference`` in every metric add nothing. Exact in any
    dimension: a sweep in 2-D, Optuna's WFG (``optuna._hypervolume.compute_hypervolume`` with signs
    flipped) in 3-D and up, or a slicing (HSO) fallback when Optuna is not importable.

    Args:
        points: ``(n_points, n_metrics)`` array-like; ``n_points`` may be 0 (the volume is 0.0).
        reference: ``(n_metrics,)`` finite reference point.

    Returns:
        The hypervolume as a float (``inf`` if a counted point has an infinite metric).

    Raises:
        ValueError: bad shapes, NaN, or a non-finite reference.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"reference: expected a 1-D array of n_metrics values, got shape {ref.shape}")
    if not np.all(np.isfinite(ref)):
        raise ValueError(f"reference: expected finite values, got {ref.tolist()}")
    array = _as_metric_matrix(points, name="points").astype(np.float64)
    if array.shape[0] == 0:
        return 0.0
    if array.shape[1] != ref.size:
        raise ValueError(
            f"points: expected {ref.size} metrics to match reference, got shape {array.shape}"
        )
    gains = array - ref
    gains = gains[(gains > 0).all(axis=1)]
    if len(gains) == 0:
        return 0.0
    if np.isinf(gains).any():
        return float("inf")
    m = gains.shape[1]
    if m == 1:
        return float(gains.max())
    if m == 2:
        return _hv_2d(gains)
    gains = np.unique(gains[find_pareto_front(gains)], axis=0)
    try:
        from ..store.optuna_internals import compute_hypervolume
    except ImportError:  # pragma: no cover - optuna is a dependency; kept for the search/ contract
        return _hv_slicing(gains)
    return float(compute_hypervolume(-gains, np.zeros(m), assume_pareto=True))
