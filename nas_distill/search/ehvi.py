"""Exact expected hypervolume improvement (every objective higher is better) for independent objectives.

A candidate's objectives are independent: each is either known (a number) or a Gaussian (a GP posterior;
one GP per objective). The improvement a point ``p`` brings to a front is the volume of the part of the
box ``[reference, p]`` that the front does not dominate. That region is cut once into disjoint boxes
(:func:`nondominated_boxes`); the improvement is then ``sum_boxes prod_d (min(p_d, upper_d) - lower_d)^+``
and, the objectives being independent, its expectation is ``sum_boxes prod_d E[(min(p_d, upper_d) -
lower_d)^+]``, each factor in closed form. Exact, with no sampling noise, in any number of objectives:
with two objectives and one of them known, it is the piecewise linear improvement in the unknown one
integrated against its Gaussian; with one objective it is the expected improvement.

The boxes: a grid over the first ``m - 1`` objectives whose lines are the front's coordinates; in each
grid column the front dominates the last objective up to ``h`` (the best last value among the front
points that dominate the column's upper corner), so the column's non-dominated part is ``(h, inf)``. That
gives ``prod_{d < m} (k_d + 1)`` boxes for ``k_d`` distinct front values: the staircase's ``k + 1`` in two
objectives.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import ndtr

__all__ = ["expected_improvement_volume", "nondominated_boxes"]

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
# Candidates x boxes evaluated per chunk (bounds the temporaries to ~16 MB of floats).
_CHUNK_ELEMENTS = 1 << 21


def nondominated_boxes(front: np.ndarray, reference: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The region above ``reference`` that ``front`` does not dominate, as disjoint boxes.

    Returns ``(edges, cells, last_lower)``: ``edges[d]`` are the grid lines of objective ``d < m - 1``
    (``reference[d]``, the front's values above it, ``inf``); ``cells (n_boxes, m - 1)`` the grid interval
    of each box per objective; ``last_lower (n_boxes,)`` the box's lower bound in the last objective
    (its upper bound is ``inf``).
    """
    front = np.asarray(front, dtype=float).reshape(-1, len(reference))
    reference = np.asarray(reference, dtype=float)
    front = front[(front > reference).all(axis=1)]
    m = len(reference)
    edges = [np.concatenate([[reference[d]], np.unique(front[:, d]), [np.inf]]) for d in range(m - 1)]
    if m == 1:
        cells = np.zeros((1, 0), dtype=np.intp)
    else:
        cells = np.array(list(itertools.product(*[range(len(e) - 1) for e in edges])), dtype=np.intp)
    last_lower = np.full(len(cells), reference[-1])
    if len(front):
        uppers = np.column_stack([edges[d][cells[:, d] + 1] for d in range(m - 1)]) if m > 1 else cells
        step = max(1, _CHUNK_ELEMENTS // len(front))
        for start in range(0, len(cells), step):
            block = uppers[start:start + step]
            dominates = np.ones((len(block), len(front)), dtype=bool)
            for d in range(m - 1):
                dominates &= front[None, :, d] >= block[:, d, None]
            best_last = np.where(dominates, front[None, :, -1], -np.inf).max(axis=1)
            last_lower[start:start + len(block)] = np.maximum(best_last, reference[-1])
    return edges, cells, last_lower


def _expected_excess(mean: np.ndarray, sd: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """``E[(p - t)^+]`` for ``p ~ N(mean, sd^2)`` (``sd == 0``: a known value); ``t = inf`` gives 0."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        gap = mean - threshold
        known = np.maximum(gap, 0.0)
        safe_sd = np.where(sd > 0, sd, 1.0)
        z = gap / safe_sd
        gaussian = gap * ndtr(z) + safe_sd * _INV_SQRT_2PI * np.exp(-0.5 * z * z)
        out = np.where(sd > 0, gaussian, known)
    return np.where(np.isinf(threshold), 0.0, np.nan_to_num(out, nan=0.0))


def expected_improvement_volume(mean: np.ndarray, sd: np.ndarray, front: np.ndarray,
                                reference: np.ndarray) -> np.ndarray:
    """Exact expected hypervolume improvement of each candidate over ``front``.

    Args:
        mean: ``(n, m)`` per candidate and objective: the known value or the posterior mean.
        sd: ``(n, m)`` posterior standard deviations; 0 where the value is known.
        front: ``(k, m)`` the current points (dominated ones do no harm); may be empty.
        reference: ``(m,)`` the lower corner of the measured volume.

    Returns:
        ``(n,)`` expected improvements (>= 0).
    """
    mean = np.asarray(mean, dtype=float)
    sd = np.asarray(sd, dtype=float)
    reference = np.asarray(reference, dtype=float)
    edges, cells, last_lower = nondominated_boxes(front, reference)
    m = len(reference)
    # Per objective d < m - 1 and grid interval [lo, hi): E[(min(p, hi) - lo)^+] = E[(p-lo)^+] - E[(p-hi)^+].
    factors = []
    for d in range(m - 1):
        excess = _expected_excess(mean[:, d, None], sd[:, d, None], edges[d][None, :])
        factors.append(excess[:, :-1] - excess[:, 1:])
    out = np.zeros(len(mean))
    step = max(1, _CHUNK_ELEMENTS // max(len(mean), 1))
    for start in range(0, len(cells), step):
        block = slice(start, start + step)
        term = _expected_excess(mean[:, -1, None], sd[:, -1, None], last_lower[None, block])
        for d in range(m - 1):
            term = term * factors[d][:, cells[block, d]]
        out += term.sum(axis=1)
    return np.maximum(out, 0.0)
