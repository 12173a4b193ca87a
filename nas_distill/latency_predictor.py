"""Predict an architecture metric (latency first of all) from the architecture alone, numpy only.

A space too large to measure every student still has a latency for every candidate: a ridge regression
fitted on the students measured so far. Features: the monomials, up to degree 3, of the space's numeric
keys scaled to [0, 1] (for a transformer: depth x width^2 is the attention / MLP FLOPs and parameters of
the encoder, depth x width x MLP-width the MLP's, depth alone the per-layer overhead that dominates small
models on a CPU), and the same monomials times an indicator per value of each non-numeric key (an
activation changes the cost of every layer), pulled towards the shared block by a penalty chosen like
the ridge penalty. The fit minimises squared *relative* error (each row divided by its measured value),
since the goal is a percentage error on students whose latencies differ by 10x or more, with Huber
weights (a timing taken while the machine was busy is an outlier, not a trend). The penalties are chosen
by exact leave-one-out error (closed form), and those leave-one-out errors are the predictor's reported
error: each measured student predicted by a fit that did not see it.
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np

#: Fewest measured students a fit needs.
MIN_SAMPLES = 8
#: Features are capped near this count by lowering the monomial degree (many keys).
MAX_FEATURES = 400
#: Most recent measurements a fit uses (the leave-one-out solve is cubic in this count).
MAX_SAMPLES = 1000
_PENALTIES = 10.0 ** np.arange(-12.0, 1.0, 0.5)  # times the largest eigenvalue of the Gram matrix
_HUBER = 1.345  # the usual Huber threshold, in robust standard deviations of the relative residuals
_ROBUST_ROUNDS = 4
_MIN_SCALE = 0.01
_DIFFERENCE_SCALES = (0.0, 0.03, 0.1, 0.3, 1.0)


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


class MetricPredictor:
    """Ridge regression of one metric on architecture features, chosen and scored by leave-one-out.

    ``fit(archs, values)`` then ``predict(archs)``; after a fit, ``loo_relative_errors`` holds the
    signed leave-one-out errors ``(predicted - measured) / measured`` of the measured students and
    :meth:`summary` the figures ``status`` prints.
    """

    def __init__(self, search_space: Mapping[str, Sequence[Any]], degree: int = 3):
        self.keys = sorted(search_space)
        self.numeric = [k for k in self.keys if _numeric(search_space[k])]
        self.scale = {k: max(abs(float(v)) for v in search_space[k]) or 1.0 for k in self.numeric}
        # Every value gets its own block, the first one too: ridge then keeps what all values share in the
        # common block (it costs less norm there) and leaves each value's block its difference only, so a
        # value with few measured students borrows the others' shape.
        self.levels = {k: list(search_space[k]) for k in self.keys if k not in self.numeric}
        self.exponents = self._exponents(degree)
        self._powers = np.array(self.exponents, dtype=float).reshape(len(self.exponents), len(self.numeric))
        self._scales = np.array([self.scale[k] for k in self.numeric], dtype=float)
        self.coef: np.ndarray | None = None
        self.floor = 0.0
        self.loo_relative_errors = np.zeros(0)
        self.n_samples = 0

    def _exponents(self, degree: int) -> list[tuple[int, ...]]:
        k = len(self.numeric)
        groups = 1 + sum(len(levels) for levels in self.levels.values())
        while degree > 1 and math.comb(k + degree, degree) * groups > MAX_FEATURES:
            degree -= 1
        return [e for d in range(degree + 1) for e in _compositions(k, d)]

    # ------------------------------------------------------------------ features
    def features(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """One row per arch: the monomials of the scaled numeric keys, then the same monomials times
        the indicator of each value of each non-numeric key (an activation or a layer type changes the
        cost of every layer: a factor, not an offset)."""
        n = len(archs)
        x = np.array([[float(a[k]) for k in self.numeric] for a in archs], dtype=float).reshape(n, -1)
        # every monomial at once: (n, 1, k) ** (m, k) -> product over k
        monomials = np.prod((x / self._scales)[:, None, :] ** self._powers[None, :, :], axis=2)
        blocks = [monomials]
        for key, levels in self.levels.items():
            for level in levels:
                indicator = np.fromiter((_same(a[key], level) for a in archs), dtype=float, count=n)
                blocks.append(monomials * indicator[:, None])
        return np.concatenate(blocks, axis=1)

    # ------------------------------------------------------------------ fit / predict
    def fit(self, archs: Sequence[Mapping[str, Any]], values: Sequence[float]) -> "MetricPredictor":
        """Fit on measured ``values`` (> 0) of ``archs``; ``ValueError`` with fewer than
        :data:`MIN_SAMPLES` usable ones."""
        pairs = [(a, float(v)) for a, v in zip(archs, values) if math.isfinite(float(v)) and float(v) > 0]
        pairs = pairs[-MAX_SAMPLES:]
        if len(pairs) < MIN_SAMPLES:
            raise ValueError(f"a fit needs {MIN_SAMPLES} measured students with a positive value, "
                             f"got {len(pairs)}")
        y = np.array([v for _, v in pairs])
        rows = self.features([a for a, _ in pairs]) / y[:, None]  # relative error: rows over their value
        # One scale per monomial, the same in every value's block: a value's difference must cost as much
        # penalty per unit as the shared part, or ridge would not prefer sharing.
        base = np.linalg.norm(rows[:, :len(self.exponents)], axis=0)
        base[base == 0] = 1.0
        norms = np.tile(base, rows.shape[1] // len(self.exponents))
        rows = rows / norms
        # How much a value's block may differ from the shared one (a smaller column scale is a larger
        # penalty): chosen by leave-one-out, as the penalty is. Few measured students per value need a
        # strong pull towards sharing; its constant column (an offset per value) is never scaled down.
        scale_options = [1.0]
        if self.levels:
            varying = np.ones(rows.shape[1], dtype=bool)
            varying[:len(self.exponents)] = False
            varying[::len(self.exponents)] = False  # each block's constant column
            scale_options = [np.where(varying, g, 1.0) for g in _DIFFERENCE_SCALES]
        ones = np.ones(len(y))
        best = min(scale_options, key=lambda g: _ridge_loo(rows * g, ones, ones)[2])
        rows = rows * best
        factor = best / norms  # original feature -> design column
        # Huber weights by iteratively reweighted least squares: a latency taken while the machine was
        # busy is a large positive outlier, and a square loss would bend the whole fit towards it.
        weights = np.ones(len(y))
        for _ in range(_ROBUST_ROUNDS):
            root = np.sqrt(weights)
            coef, loo, _ = _ridge_loo(rows * root[:, None], root, weights)
            residual = rows @ coef - 1.0
            # relative residuals under ~1% are never outliers (and a near-exact fit must not chase zeros)
            scale = max(1.4826 * float(np.median(np.abs(residual))), _MIN_SCALE)
            weights = np.minimum(1.0, _HUBER * scale / np.maximum(np.abs(residual), 1e-12))
        self.coef = coef * factor
        self.loo_relative_errors = loo / root  # predicted / measured - 1, each from a fit without it
        self.floor = 0.5 * float(y.min())
        self.n_samples = len(y)
        return self

    @property
    def fitted(self) -> bool:
        return self.coef is not None

    def predict(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.predict_features(self.features(archs))

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """:meth:`predict` from rows of :meth:`features` (of any predictor of the same space)."""
        if self.coef is None:
            raise RuntimeError("predict() before fit()")
        # A polynomial may dip below zero far from the data; no student is faster than half the fastest.
        return np.maximum(features @ self.coef, self.floor)

    def summary(self) -> dict[str, Any]:
        """``{n, mean_abs_pct, median_abs_pct, max_abs_pct, within_10pct}`` of the leave-one-out errors."""
        errors = np.abs(self.loo_relative_errors) * 100.0
        if not len(errors):
            return {"n": 0}
        return {
            "n": int(self.n_samples),
            "mean_abs_pct": round(float(errors.mean()), 2),
            "median_abs_pct": round(float(np.median(errors)), 2),
            "max_abs_pct": round(float(errors.max()), 2),
            "within_10pct": round(float(np.mean(errors <= 10.0)), 3),
        }


def _ridge_loo(design: np.ndarray, target: np.ndarray,
               weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge of ``target`` on ``design`` with the penalty of least weighted mean absolute leave-one-out
    residual: ``(coefficients, leave-one-out residuals, that weighted mean)``.

    Dual (kernel) form: n x n, whatever the feature count; one eigendecomposition serves every penalty,
    and the leave-one-out residual of ridge is r_i / (1 - h_ii)."""
    eigval, eigvec = np.linalg.eigh(design @ design.T)
    eigval = np.clip(eigval, 0.0, None)
    projected = eigvec.T @ target
    best = None
    for penalty in _PENALTIES * max(float(eigval[-1]), 1e-12):
        shrink = eigval / (eigval + penalty)
        fitted = eigvec @ (shrink * projected)
        leverage = (eigvec ** 2) @ shrink
        loo = (fitted - target) / np.clip(1.0 - leverage, 1e-9, None)
        score = float(np.sum(weights * np.abs(loo)))
        if best is None or score < best[0]:
            best = (score, penalty, loo)
    score, penalty, loo = best
    return design.T @ (eigvec @ (projected / (eigval + penalty))), loo, score


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    """``(predicted - measured) / measured``, elementwise."""
    measured = np.asarray(measured, dtype=float)
    return (np.asarray(predicted, dtype=float) - measured) / measured


def _compositions(k: int, total: int) -> list[tuple[int, ...]]:
    """Every exponent tuple of ``k`` non-negative ints summing to ``total``."""
    if k == 0:
        return [()] if total == 0 else []
    out = []
    for combo in itertools.combinations_with_replacement(range(k), total):
        e = [0] * k
        for i in combo:
            e[i] += 1
        out.append(tuple(e))
    return out


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)
