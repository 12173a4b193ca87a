"""A Gaussian process over architectures: Matern 5/2 on ordinal positions and categorical mismatches.

Inputs are per-key values. An ordinal key (every value a number) enters as its value scaled to [0, 1]
(log scale for positive values), so neighbouring sizes are near each other; a categorical key (strings,
booleans, None, mixed) enters only as "same value or not" (a Hamming distance), since its order means
nothing. The squared distance of two architectures is ``sum_d w_d delta_d^2`` with one inverse squared
length scale ``w_d`` per key (ARD), and the kernel is ``s * matern52(distance) + noise * I`` on standardised
targets, plus a known per-point variance on the diagonal where a target is itself uncertain (a value
predicted from a partial measurement; :mod:`.low_fidelity`): those points weigh less, the fitted ``noise``
stays the noise of a plain measurement.

A degree-2 polynomial kernel on the centred ordinal inputs, ``poly * phi(x) . phi(x')`` with ``phi(x)`` =
(1, every ``x_d - 0.5``, every product of two of them), is added: accuracy mostly grows with size, and
its trade-offs between keys (width against depth, heads against width, FFN ratio) act like products of
log sizes. With the polynomial the model extrapolates such trends to students it has not tried, where a
stationary kernel alone falls back to the mean, and 20 points pin down the shape of the trade-offs
better than length scales alone do.

Hyperparameters (``log w``, ``log s``, ``log poly``, ``log noise``) are fitted by maximum a posteriori estimation:
the log marginal likelihood plus weak log-normal priors, maximised by L-BFGS-B with the analytic gradient,
from the previous optimum and from the prior's mode (the better one wins). The priors keep a fit on a few
points from collapsing onto length scales that interpolate noise: length scales centred on the width of
the unit cube and somewhat longer (a smooth surface is the better guess from few points), signal and
polynomial variance on the standardised targets' variance (the polynomial's tightly: fitted freely from
a few points it predicted held-out students worse), noise on 1% of it.

numpy and scipy only, so a TensorFlow process can use it without importing torch.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import cho_solve, solve_triangular
from scipy.optimize import minimize

__all__ = ["ArchGP", "encode_space"]

_FEW_POINTS = 30
_RESTART_EVERY = 10
# Elements of the (rows, n_train, dim) difference array per prediction block (~32 MB of floats).
_PREDICT_ELEMENTS = 1 << 22
_MIN_NOISE = 1e-6
# Log-normal priors: (mean, standard deviation) of log w, log s, log poly, log noise.
_PRIOR_LOG_W = (-1.0, 1.0)
_PRIOR_LOG_S = (0.0, 1.0)
_PRIOR_LOG_POLY = (0.0, 0.3)
_PRIOR_LOG_NOISE = (math.log(1e-2), 2.0)
_BOUNDS_LOG_W = (-8.0, 6.0)
_BOUNDS_LOG_S = (-5.0, 4.0)
_BOUNDS_LOG_POLY = (-12.0, 4.0)
_BOUNDS_LOG_NOISE = (math.log(1e-7), 1.0)


def encode_space(values_per_key) -> tuple[list[np.ndarray], np.ndarray]:
    """Per key: the GP input of each value position, and whether the key is categorical.

    Ordinal keys (every value a number, not a bool): the value scaled to [0, 1], on a log scale when every
    value is positive (sizes, depths and head counts act multiplicatively: 64 -> 128 is as far as 512 ->
    1024). Categorical keys: the position itself, compared for equality only. Single-valued keys: 0.
    """
    levels, categorical = [], []
    for values in values_per_key:
        ordinal = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        categorical.append(not ordinal and len(values) > 1)
        if len(values) == 1:
            levels.append(np.zeros(1))
        elif not ordinal:
            levels.append(np.arange(len(values), dtype=float))
        else:
            numbers = np.asarray(values, dtype=float)
            if (numbers > 0).all():
                numbers = np.log(numbers)
            span = numbers.max() - numbers.min()
            levels.append((numbers - numbers.min()) / span if span > 0 else np.zeros(len(values)))
    return levels, np.asarray(categorical, dtype=bool)


def _matern52(squared: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matern 5/2 of the squared distance, and its derivative with respect to the squared distance."""
    root = np.sqrt(5.0 * squared)
    decay = np.exp(-root)
    value = (1.0 + root + (5.0 / 3.0) * squared) * decay
    derivative = (-5.0 / 6.0) * (1.0 + root) * decay
    return value, derivative


class ArchGP:
    """One objective's GP over encoded architectures.

    Args:
        categorical: per input column, whether it compares by equality (Hamming) instead of difference.
    """

    def __init__(self, categorical: np.ndarray):
        self.categorical = np.asarray(categorical, dtype=bool)
        self.params = _prior_mode(len(self.categorical))
        self._x: np.ndarray | None = None
        self._fits = 0

    # ------------------------------------------------------------------ distances
    def _pairs(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-column squared differences ``(len(a), len(b), dim)`` (categorical: mismatch 0 / 1), and the
        polynomial kernel's ``phi(a) . phi(b)`` ``(len(a), len(b))``."""
        diff = a[:, None, :] - b[None, :, :]
        sq = diff * diff
        if self.categorical.any():
            sq[..., self.categorical] = (sq[..., self.categorical] > 0).astype(float)
        ordinal = ~self.categorical
        return sq, _poly_features(a[:, ordinal]) @ _poly_features(b[:, ordinal]).T

    # ------------------------------------------------------------------ fitting
    def fit(self, x: np.ndarray, y: np.ndarray, noise: np.ndarray | None = None,
            fit_on: np.ndarray | None = None) -> "ArchGP":
        """MAP fit on inputs ``x (n, dim)`` and targets ``y (n,)``; keeps the previous optimum as a start.

        ``noise``: a known variance per target, in the targets' units, on top of the fitted noise (0 for
        a plain measurement); None: none. ``fit_on``: the indices of the points the hyperparameters are
        fitted on (None: all); the posterior conditions on every point. Each step of the fit costs
        O(n^3), conditioning once costs about one step: a caller with many uncertain points fits on the
        reliable ones.
        """
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        self._mean = float(y.mean())
        self._scale = float(y.std()) or 1.0
        z = (y - self._mean) / self._scale
        extra = None if noise is None else np.asarray(noise, dtype=float) / self._scale**2
        pairs = self._pairs(x, x)
        fit_pairs, fit_z, fit_extra = pairs, z, extra
        if fit_on is not None:
            rows = np.asarray(fit_on, dtype=np.int64)
            fit_pairs = (pairs[0][np.ix_(rows, rows)], pairs[1][np.ix_(rows, rows)])
            fit_z, fit_extra = z[rows], None if extra is None else extra[rows]
        dim = x.shape[1]
        bounds = [_BOUNDS_LOG_W] * dim + [_BOUNDS_LOG_S, _BOUNDS_LOG_POLY, _BOUNDS_LOG_NOISE]
        prior_mode = _prior_mode(dim)
        warm = self._x is not None and len(self.params) == len(prior_mode)
        # The previous optimum moves little as points arrive; the prior's mode is tried too while data are
        # few (the posterior may have several modes then) and every _RESTART_EVERY fits after that.
        starts = [self.params] if warm else []
        if not warm or len(fit_z) < _FEW_POINTS or self._fits % _RESTART_EVERY == 0:
            starts.append(prior_mode)
        self._fits += 1
        best = None
        for start in starts:
            result = minimize(_neg_log_posterior, start, args=(fit_pairs, fit_z, fit_extra), jac=True,
                              method="L-BFGS-B", bounds=bounds, options={"maxiter": 200})
            if best is None or result.fun < best.fun:
                best = result
        self.params = best.x
        self._x = x
        self._chol, self._alpha = _factorise(self.params, pairs, z, extra)
        return self

    # ------------------------------------------------------------------ prediction
    def predict(self, x_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent function at ``x_new (m, dim)``."""
        x_new = np.asarray(x_new, dtype=float)
        step = max(1, _PREDICT_ELEMENTS // max(1, len(self._x) * x_new.shape[1]))
        if len(x_new) > step:  # bounded temporaries: (rows, n_train, dim) per block
            parts = [self.predict(x_new[start:start + step]) for start in range(0, len(x_new), step)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        w, s, poly, _ = _unpack(self.params)
        sq, products = self._pairs(x_new, self._x)
        k_star = s * _matern52(sq @ w)[0] + poly * products
        mean = k_star @ self._alpha
        v = solve_triangular(self._chol, k_star.T, lower=True, check_finite=False)
        features = _poly_features(x_new[:, ~self.categorical])
        prior_var = s + poly * np.einsum("ij,ij->i", features, features)
        var = np.maximum(prior_var - np.einsum("ij,ij->j", v, v), 1e-12)
        return self._mean + self._scale * mean, self._scale * np.sqrt(var)


def _poly_features(x: np.ndarray) -> np.ndarray:
    """``phi(x)``: 1, each centred input, and each product of two centred inputs (squares included)."""
    centred = x - 0.5
    rows, cols = np.triu_indices(centred.shape[1])
    return np.column_stack([np.ones(len(x)), centred, centred[:, rows] * centred[:, cols]])


def _prior_mode(dim: int) -> np.ndarray:
    return np.array([_PRIOR_LOG_W[0]] * dim + [_PRIOR_LOG_S[0], _PRIOR_LOG_POLY[0], _PRIOR_LOG_NOISE[0]])


def _unpack(params: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """Inverse squared length scales, Matern variance, polynomial variance, noise variance."""
    return (np.exp(params[:-3]), float(np.exp(params[-3])), float(np.exp(params[-2])),
            _MIN_NOISE + float(np.exp(params[-1])))


def _kernel(params: np.ndarray, pairs: tuple[np.ndarray, np.ndarray],
            extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Covariance matrix with noise (the fitted one, plus ``extra`` per point), the Matern values and
    their derivatives."""
    sq, products = pairs
    w, s, poly, noise = _unpack(params)
    value, derivative = _matern52(sq @ w)
    cov = s * value + poly * products
    cov[np.diag_indices_from(cov)] += noise
    if extra is not None:
        cov[np.diag_indices_from(cov)] += extra
    return cov, value, derivative


def _factorise(params: np.ndarray, pairs, z: np.ndarray,
               extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    cov = _kernel(params, pairs, extra)[0]
    chol = _cholesky(cov)
    return chol, cho_solve((chol, True), z, check_finite=False)


def _cholesky(cov: np.ndarray) -> np.ndarray:
    jitter = 0.0
    for _ in range(6):
        try:
            return np.linalg.cholesky(cov + jitter * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            jitter = 1e-8 if jitter == 0.0 else jitter * 100
    raise np.linalg.LinAlgError("covariance matrix is not positive definite even with jitter")


def _log_normal_prior(x: np.ndarray, mean: float, sd: float) -> tuple[float, np.ndarray]:
    """Log density (up to a constant) of a normal prior on ``x`` and its gradient."""
    return float(-0.5 * (((x - mean) / sd) ** 2).sum()), -(x - mean) / sd**2


def _neg_log_posterior(params: np.ndarray, pairs, z: np.ndarray,
                       extra: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Minus (log marginal likelihood + log prior) and its gradient in the log parameters (``extra``, the
    known per-point variance, is a constant: it adds no gradient of its own)."""
    sq, products = pairs
    w, s, poly, noise = _unpack(params)
    cov, value, derivative = _kernel(params, pairs, extra)
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return 1e10, np.zeros_like(params)
    alpha = cho_solve((chol, True), z, check_finite=False)
    n = len(z)
    log_lik = -0.5 * z @ alpha - np.log(np.diag(chol)).sum() - 0.5 * n * math.log(2 * math.pi)
    inverse = cho_solve((chol, True), np.eye(n), check_finite=False)
    # d log_lik / d theta = 0.5 tr((alpha alpha^T - K^-1) dK/dtheta)
    inner = np.outer(alpha, alpha) - inverse
    grad = np.empty_like(params)
    grad[:-3] = 0.5 * np.einsum("ij,ijd->d", inner * (s * derivative), sq) * w
    grad[-3] = 0.5 * (inner * (s * value)).sum()
    grad[-2] = 0.5 * (inner * (poly * products)).sum()
    grad[-1] = 0.5 * np.trace(inner) * (noise - _MIN_NOISE)
    prior = 0.0
    for part, (mean, sd) in ((slice(0, -3), _PRIOR_LOG_W), (slice(-3, -2), _PRIOR_LOG_S),
                             (slice(-2, -1), _PRIOR_LOG_POLY), (slice(-1, None), _PRIOR_LOG_NOISE)):
        log_p, grad_p = _log_normal_prior(params[part], mean, sd)
        prior += log_p
        grad[part] += grad_p
    return -(log_lik + prior), -grad
