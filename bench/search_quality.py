"""Search quality of the searchers on a tabulated BERT-like student space: which sampler is ``bo``.

What it measures
    Each searcher proposes up to 100 architectures of a surrogate space (below) and is fed their metrics,
    through the real code path (``make_searcher(...)``, ``suggestion()`` / ``feedback()``). Every
    (searcher, seed) runs 100 trials once; the prefixes of 25 and 50 trials give the smaller budgets.
    The score of a run at budget B is:

    * one objective (accuracy): the normalised best value, ``(best found - worst in table) /
      (best in table - worst in table)``;
    * two objectives (accuracy max, latency min): the hypervolume ratio ``HV(front of the B trials) /
      HV(true front of the table)`` in the plane (accuracy, log10 latency), reference point (worst
      accuracy, worst latency) of the table. Log latency because the students span 100x in latency: on
      a linear scale the slowest models' corner dwarfs the region where the trade-off is made.

    The table prints the median over seeds (1.000 = the optimum / the whole true front). A budget counts
    trials, duplicates included (a model-based sampler may repeat an architecture).

The surrogate space (``bert5``, 4 x 6 x 4 x 4 x 3 = 1152 points)
    hidden_size [192, 384, 576, 768], num_hidden_layers [2, 4, 6, 8, 10, 12], num_attention_heads
    [2, 4, 8, 12], intermediate_size [512, 1024, 2048, 3072], hidden_dropout_prob [0.0, 0.1, 0.2].

    accuracy = 0.55 + 0.32 (1 - exp(-2.5 s)), s = log(C / 0.5M) / log(200) clipped to [0, 1], C = the
    non-embedding parameter count L (4 h^2 + 2 h i); minus interaction penalties: depth/width balance
    0.02 log2(h / L / 64)^2, head size 0.015 log2(h / heads / 64)^2, FFN ratio 0.012 log2(i / 4h)^2,
    dropout 0.5 (p - 0.2 s)^2 (big models want more dropout); plus fixed pseudo-noise N(0, 0.004) per
    point (numpy seed 12345), i.e. a saturating function of capacity with interactions, like GLUE scores
    of distilled BERTs.

    latency_ms = FLOPs / 50 GFLOP/s + L (0.08 + 0.01 heads) + 0.3, FLOPs = 2 S L (4 h^2 + 2 h i) +
    4 L S^2 h at sequence length S = 128 (a CPU at batch 1).

Searchers: the ``bo`` default, ``random``, ``grid``, each candidate Optuna sampler (TPE independent /
multivariate, GP, NSGA-II with population 50 and 10), and ``gp-ucb-sum``: the old system's method, a
GP-UCB on the choice indices (Matern 5/2, kappa 2.576, 5 random starts) fed the unweighted sum of the
sign-adjusted metrics (accuracy - latency_ms). OptunaHub's AutoSampler cannot run here: it downloads its
code from GitHub at run time, and this environment reaches only PyPI; its row says so.

Usage::

    python bench/search_quality.py             # 10 seeds, budgets 25/50/100, ~6 min on 2 cores
    python bench/search_quality.py --quick     # 2 seeds, fewer samplers: a smoke run (~1 min)
    python bench/search_quality.py --seeds 15 --samplers random,tpe-indep,tpe-mv,gp,nsga2,nsga2-p10

The ``bo`` row runs ``make_searcher('bo', ...)``; the candidate row of the same sampler (``gp`` today)
reuses its runs instead of repeating them (same sampler, same seeds: the same trials). The last lines
rank the Bayesian candidates by the mean of their four medians at 25 and 50 trials (one and two
objectives): the winner is what ``DEFAULT_BO_SAMPLER`` in ``nas_distill/search/searchers.py`` must be.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUDGETS = (25, 50, 100)
SPACE = {
    "hidden_size": [192, 384, 576, 768],
    "num_hidden_layers": [2, 4, 6, 8, 10, 12],
    "num_attention_heads": [2, 4, 8, 12],
    "intermediate_size": [512, 1024, 2048, 3072],
    "hidden_dropout_prob": [0.0, 0.1, 0.2],
}
CANDIDATES = ("tpe-indep", "tpe-mv", "gp", "nsga2", "nsga2-p10")
QUICK_CANDIDATES = ("tpe-mv", "gp")


# ---------------------------------------------------------------------------- the surrogate table
def surrogate(point: dict) -> tuple[float, float]:
    """(accuracy, latency_ms) of one architecture, without the pseudo-noise."""
    h, L = point["hidden_size"], point["num_hidden_layers"]
    heads, i, p = point["num_attention_heads"], point["intermediate_size"], point["hidden_dropout_prob"]
    capacity = L * (4 * h * h + 2 * h * i)
    s = min(1.0, max(0.0, math.log(capacity / 0.5e6) / math.log(200)))
    acc = 0.55 + 0.32 * (1 - math.exp(-2.5 * s))
    acc -= 0.02 * math.log2(h / L / 64) ** 2
    acc -= 0.015 * math.log2(h / heads / 64) ** 2
    acc -= 0.012 * math.log2(i / (4 * h)) ** 2
    acc -= 0.5 * (p - 0.2 * s) ** 2
    seq = 128
    flops = 2 * seq * L * (4 * h * h + 2 * h * i) + 4 * L * seq * seq * h
    latency = flops / 50e9 * 1e3 + L * (0.08 + 0.01 * heads) + 0.3
    return acc, latency


def build_table():
    """The whole space: points in SearchSpace order, metrics (n, 2) as (accuracy, latency_ms)."""
    from nas_distill.search.space import SearchSpace

    space = SearchSpace(SPACE)
    metrics = np.array([surrogate(space.point(k)) for k in range(len(space))])
    metrics[:, 0] += np.random.default_rng(12345).normal(0.0, 0.004, len(space))
    return space, metrics


# ---------------------------------------------------------------------------- scoring
def _hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    try:
        from nas_distill.search.pareto import hypervolume
    except ImportError:  # pragma: no cover - the package one is preferred
        return _hypervolume_2d(points, reference)
    return hypervolume(points, reference)


def _hypervolume_2d(points: np.ndarray, reference: np.ndarray) -> float:
    gains = points[(points > reference).all(axis=1)] - reference
    if len(gains) == 0:
        return 0.0
    gains = gains[np.argsort(-gains[:, 0])]
    volume, best_y = 0.0, 0.0
    for x, y in gains:
        if y > best_y:
            volume += x * (y - best_y)
            best_y = y
    return float(volume)


class Scorer:
    def __init__(self, metrics: np.ndarray):
        self.acc_min, self.acc_max = metrics[:, 0].min(), metrics[:, 0].max()
        self.hb = np.column_stack([metrics[:, 0], -np.log10(metrics[:, 1])])  # higher is better
        self.reference = self.hb.min(axis=0)
        self.true_hv = _hypervolume(self.hb, self.reference)

    def score(self, indices: list[int], n_objectives: int) -> float:
        if n_objectives == 1:
            best = self.hb[indices, 0].max()
            return float((best - self.acc_min) / (self.acc_max - self.acc_min))
        return _hypervolume(self.hb[indices], self.reference) / self.true_hv


# ---------------------------------------------------------------------------- searchers
def optuna_sampler(name: str, seed: int):
    import optuna

    if name == "tpe-indep":
        return optuna.samplers.TPESampler(seed=seed, multivariate=False)
    if name == "tpe-mv":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "nsga2-p10":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    raise ValueError(f"unknown sampler {name!r}")


def run_searcher(name: str, seed: int, n_objectives: int, n_trials: int) -> list[int]:
    """Indices of the points the searcher proposed, in order (through suggestion / feedback)."""
    import optuna

    from nas_distill.search.searchers import make_searcher

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    space, metrics = _TABLE
    directions = ["maximize", "minimize"][:n_objectives]
    if name in ("bo", "grid", "random"):
        searcher = make_searcher(name, SPACE, seed=seed, directions=directions)
    else:
        searcher = make_searcher(optuna_sampler(name, seed), SPACE, seed=seed, directions=directions)
    chosen = []
    for _ in range(n_trials):
        k = space.index_of(searcher.suggestion())
        acc, lat = metrics[k]
        searcher.feedback([acc, -lat][:n_objectives])  # higher-is-better, as the seed API wants
        chosen.append(k)
    return chosen


def run_gp_ucb_sum(seed: int, n_objectives: int, n_trials: int) -> list[int]:
    """The old system: GP-UCB over choice indices on the unweighted sum of sign-adjusted metrics."""
    space, metrics = _TABLE
    radices = np.array(space.radices, dtype=float)
    X = np.array([space.indices(k) for k in range(len(space))], dtype=float) / np.maximum(radices - 1, 1)
    y_all = metrics[:, 0] if n_objectives == 1 else metrics[:, 0] - metrics[:, 1]
    rng = np.random.default_rng(seed)
    chosen = list(rng.choice(len(space), size=5, replace=False))
    while len(chosen) < n_trials:
        Xo, yo = X[chosen], y_all[chosen]
        mean, scale = yo.mean(), yo.std() or 1.0
        z = (yo - mean) / scale
        best = None
        for ls in (0.1, 0.2, 0.4, 0.8, 1.6):  # type-II maximum likelihood over a small grid
            K = _matern52(Xo, Xo, ls) + 1e-4 * np.eye(len(Xo))
            Lc = np.linalg.cholesky(K)
            alpha = np.linalg.solve(Lc.T, np.linalg.solve(Lc, z))
            loglik = -0.5 * z @ alpha - np.log(np.diag(Lc)).sum()
            if best is None or loglik > best[0]:
                best = (loglik, ls, Lc, alpha)
        _, ls, Lc, alpha = best
        Ks = _matern52(X, Xo, ls)
        mu = Ks @ alpha
        v = np.linalg.solve(Lc, Ks.T)
        sd = np.sqrt(np.maximum(1.0 - (v * v).sum(axis=0), 1e-12))
        ucb = mu + 2.576 * sd
        ucb[chosen] = -np.inf  # never repeat
        chosen.append(int(np.argmax(ucb)))
    return [int(k) for k in chosen]


def _matern52(A: np.ndarray, B: np.ndarray, ls: float) -> np.ndarray:
    d = np.sqrt(((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)) / ls
    return (1 + math.sqrt(5) * d + 5.0 / 3.0 * d * d) * np.exp(-math.sqrt(5) * d)


_TABLE = None


def _init_worker():
    global _TABLE
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _TABLE = build_table()


def _job(args):
    name, seed, n_obj, n_trials = args
    start = time.perf_counter()
    if name == "gp-ucb-sum":
        chosen = run_gp_ucb_sum(seed, n_obj, n_trials)
    else:
        chosen = run_searcher(name, seed, n_obj, n_trials)
    return name, seed, n_obj, chosen, time.perf_counter() - start


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, fewer samplers (a smoke run)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 10; 2 with --quick)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--samplers", default=None, help="comma-separated subset of rows to run")
    args = parser.parse_args(argv)
    n_seeds = args.seeds or (2 if args.quick else 10)
    names = ["bo", "random", "grid", *(QUICK_CANDIDATES if args.quick else CANDIDATES), "gp-ucb-sum"]
    if args.samplers:
        names = [n.strip() for n in args.samplers.split(",") if n.strip()]
    n_trials = max(BUDGETS)

    from nas_distill.search.searchers import DEFAULT_BO_SAMPLER

    _init_worker()
    space, metrics = _TABLE
    scorer = Scorer(metrics)
    print(f"space bert5: {len(space)} points, keys {list(space.keys)}; true front "
          f"{len(_front(scorer.hb))} points; {n_seeds} seeds; budgets {BUDGETS}")
    # The candidate that 'bo' resolves to is not run twice: it reuses the 'bo' runs.
    same_as_bo = {"gp": "gp", "tpe": "tpe-mv", "nsga2": "nsga2"}.get(DEFAULT_BO_SAMPLER)
    reuse = same_as_bo if ("bo" in names and same_as_bo in names) else None
    jobs = [(n, s, o, n_trials) for o in (1, 2) for n in names if n != reuse for s in range(n_seeds)]
    # Slow samplers first, so the pool ends evenly.
    jobs.sort(key=lambda j: 0 if j[0] in ("gp", "bo") else 1)
    started = time.perf_counter()
    results = {}
    timings = {}
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init_worker) as pool:
        for name, seed, n_obj, chosen, seconds in pool.imap_unordered(_job, jobs):
            results[(name, seed, n_obj)] = chosen
            timings[name] = timings.get(name, 0.0) + seconds
    if reuse:
        for (name, seed, n_obj), chosen in list(results.items()):
            if name == "bo":
                results[(reuse, seed, n_obj)] = chosen

    label = {"bo": f"bo (default: {DEFAULT_BO_SAMPLER})"}
    if reuse:
        label[reuse] = f"{reuse} (runs of bo)"
    for n_obj, title in ((1, "one objective (accuracy): median normalised best value"),
                         (2, "two objectives (accuracy max, latency min): median hypervolume ratio")):
        print(f"\n{title}")
        header = f"| {'searcher':<24} | " + " | ".join(f"{b:>5}" for b in BUDGETS) + " | uniq@100 |"
        print(header)
        print("|" + "-" * 26 + "|" + "|".join("-" * 7 for _ in BUDGETS) + "|----------|")
        for name in names:
            row = []
            for budget in BUDGETS:
                scores = [scorer.score(results[(name, s, n_obj)][:budget], n_obj) for s in range(n_seeds)]
                row.append(float(np.median(scores)))
            uniq = np.median([len(set(results[(name, s, n_obj)])) for s in range(n_seeds)])
            print(f"| {label.get(name, name):<24} | " + " | ".join(f"{r:5.3f}" for r in row)
                  + f" | {uniq:8.0f} |")
        print(f"| {'autosampler (optunahub)':<24} | " + " | ".join(f"{'n/a':>5}" for _ in BUDGETS)
              + " |      n/a |")
    # The default for 'bo': the Bayesian candidate with the best mean of the medians at 25 and 50 trials,
    # one and two objectives (four cells).
    cells = {}
    for name in names:
        if name in CANDIDATES:
            cells[name] = np.mean([np.median([scorer.score(results[(name, s, o)][:b], o) for s in range(n_seeds)])
                                   for o in (1, 2) for b in (25, 50)])
    if cells:
        ranking = sorted(cells, key=cells.get, reverse=True)
        print("\ncandidates by mean of the four cells at 25 / 50 trials: "
              + ", ".join(f"{n} {cells[n]:.3f}" for n in ranking) + f"  -> winner: {ranking[0]}"
              + ("" if n_seeds >= 10 else f" ({n_seeds} seeds: too few to choose the default; use >= 10)"))
    print("\nautosampler: not run; OptunaHub's AutoSampler fetches its code from GitHub at run time and "
          "this machine reaches only PyPI.")
    print("seconds per sampler (all seeds, both objective settings): "
          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(timings.items())))
    print(f"total wall time {time.perf_counter() - started:.0f} s with {args.jobs} processes")
    return 0


def _front(hb: np.ndarray) -> np.ndarray:
    from nas_distill.search.pareto import find_pareto_front

    return find_pareto_front(hb)


if __name__ == "__main__":
    sys.exit(main())
