"""Time ``find_pareto_front`` against Optuna's own Pareto computation on the same data.

Usage::

    python bench/pareto_speed.py [--repeats 7] [--seed 0] [--check]

For each case the same random matrix (every metric higher is better) goes to
``nas_distill.search.pareto.find_pareto_front`` and, negated (Optuna minimises), to Optuna's
``optuna.study._multi_objective._is_pareto_front`` (what ``study.best_trials`` uses) and
``_fast_non_domination_rank(...) == 0`` (what NSGA-II uses). The fronts must be identical; the table
prints the median time of each and the ratio ``optuna / ours`` (> 1 means we are faster).
``--check`` exits with status 1 if any ratio against ``_is_pareto_front`` is below 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.study._multi_objective import _fast_non_domination_rank, _is_pareto_front  # noqa: E402

from nas_distill.search.pareto import find_pareto_front  # noqa: E402


def _cases(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    simplex = rng.random((10**4, 3))
    simplex /= simplex.sum(axis=1, keepdims=True)  # every point on the front: the worst case
    return [
        ("uniform 1e5 x 2", rng.random((10**5, 2))),
        ("uniform 1e4 x 3", rng.random((10**4, 3))),
        ("ties (ints 0..9) 1e5 x 2", rng.integers(0, 10, (10**5, 2))),
        ("ties (ints 0..9) 1e4 x 3", rng.integers(0, 10, (10**4, 3))),
        ("uniform 1e5 x 3", rng.random((10**5, 3))),
        ("uniform 1e4 x 5", rng.random((10**4, 5))),
        ("all on front 1e4 x 3", simplex),
    ]


def _median_time(func, repeats: int) -> tuple[float, object]:
    result = func()  # warm-up, and the answer to compare
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="exit 1 if slower than _is_pareto_front")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    header = (
        f"{'case':<26} {'front':>6} {'ours ms':>9} {'_is_pareto_front ms':>20} {'ratio':>6} "
        f"{'_fast_nd_rank ms':>17} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    slower = []
    for name, data in _cases(rng):
        loss = -data.astype(np.float64)
        t_ours, ours = _median_time(lambda data=data: find_pareto_front(data), args.repeats)
        t_opt, on_front = _median_time(lambda loss=loss: _is_pareto_front(loss, assume_unique_lexsorted=False),
                                       args.repeats)
        t_rank, ranks = _median_time(lambda loss=loss: _fast_non_domination_rank(loss, n_below=1), args.repeats)
        expected = np.flatnonzero(on_front)
        if not (np.array_equal(ours, expected) and np.array_equal(ours, np.flatnonzero(ranks == 0))):
            print(f"{name}: FRONTS DIFFER", file=sys.stderr)
            return 2
        r1, r2 = t_opt / t_ours, t_rank / t_ours
        if r1 < 1:
            slower.append(name)
        print(
            f"{name:<26} {len(ours):>6} {t_ours * 1e3:>9.2f} {t_opt * 1e3:>20.2f} {r1:>5.1f}x "
            f"{t_rank * 1e3:>17.2f} {r2:>5.1f}x"
        )
    print("\nratio = Optuna time / find_pareto_front time (> 1: find_pareto_front is faster)")
    if args.check and slower:
        print(f"slower than Optuna on: {slower}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
