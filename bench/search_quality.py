"""Search quality of ``bo`` against Optuna's samplers: hypervolume ratio at 25 / 50 / 100 trials.

What it measures
    Each searcher proposes up to 100 architectures of a tabulated space and is fed their metrics through
    the real code path (``make_searcher(...)``, ``suggestion()`` / ``feedback()``, directions
    ``['maximize', 'minimize']``). Every (searcher, space, seed) runs 100 trials once; the prefixes of 25
    and 50 trials give the smaller budgets. The score of a run at budget B is the hypervolume ratio
    ``HV(front of the B trials) / HV(true front of the table)`` in the plane (accuracy, log10 latency),
    reference point (worst accuracy, worst latency) of the table. Log latency because the students span
    10-100x in latency: on a linear scale the slowest models' corner dwarfs the region where the trade-off
    is made. Every searcher is fed exactly what it is scored on: accuracy and log10 latency. The table
    prints the median over seeds (1.000 = the whole true front) and the seconds per suggestion (mean over
    the run's 100 suggestions, and over the last 10, i.e. at about 100 trials).

Spaces
    ``bert5``: a surrogate of a BERT-like student space, 4 x 6 x 4 x 4 x 3 = 1152 points: hidden_size
    [192, 384, 576, 768], num_hidden_layers [2, 4, 6, 8, 10, 12], num_attention_heads [2, 4, 8, 12],
    intermediate_size [512, 1024, 2048, 3072], hidden_dropout_prob [0.0, 0.1, 0.2].
    accuracy = 0.55 + 0.32 (1 - exp(-2.5 s)), s = log(C / 0.5M) / log(200) clipped to [0, 1], C = the
    non-embedding parameter count L (4 h^2 + 2 h i); minus interaction penalties: depth/width balance
    0.02 log2(h / L / 64)^2, head size 0.015 log2(h / heads / 64)^2, FFN ratio 0.012 log2(i / 4h)^2,
    dropout 0.5 (p - 0.2 s)^2; plus fixed pseudo-noise N(0, 0.004) per point (numpy seed 12345).
    latency_ms = FLOPs / 50 GFLOP/s + L (0.08 + 0.01 heads) + 0.3, FLOPs = 2 S L (4 h^2 + 2 h i) +
    4 L S^2 h at sequence length S = 128.

    ``digits``: 108 real ViT students of the demo task (hidden size 32 / 64 / 96 x 4 depths x 3 head counts
    x 3 MLP widths), each flash-distilled from the demo's teacher and measured once by
    ``bench/measure_digits_students.py`` (its docstring says how); the table is
    ``bench/data/digits_students.csv``: validation accuracy and latency in ms at batch 1.

Rows
    ``bo+known``: ``make_searcher('bo', known_objectives=...)`` told each candidate's latency (the
    pipeline measures it on the untrained student); ``bo``: the same sampler without it; ``gp``
    (Optuna's GPSampler), ``tpe`` (multivariate TPESampler), ``nsga2`` (NSGAIISampler), ``random`` (our
    claim-based random search), ``botorch`` (optuna-integration's BoTorchSampler with qLogNEHVI; needs
    ``pip install 'nas-distill[bench]'``, the row says so when it is missing). BoTorch takes 10-40 s per
    suggestion on the 2 shared cores here (it optimises the acquisition over a one-hot relaxation of the
    categorical space), so its row runs ``--botorch-seeds`` (default 1) x ``--botorch-trials`` (default
    25) and prints n/a for the budgets it does not reach.

Usage::

    python bench/search_quality.py                       # 5 seeds, both spaces, every row
    python bench/search_quality.py --seeds 2 --rows bo+known,bo,random --spaces bert5
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUDGETS = (25, 50, 100)
ROWS = ("bo+known", "bo", "gp", "tpe", "nsga2", "random", "botorch")
SPACES = ("bert5", "digits")
BERT5 = {
    "hidden_size": [192, 384, 576, 768],
    "num_hidden_layers": [2, 4, 6, 8, 10, 12],
    "num_attention_heads": [2, 4, 8, 12],
    "intermediate_size": [512, 1024, 2048, 3072],
    "hidden_dropout_prob": [0.0, 0.1, 0.2],
}
DIGITS_TABLE = Path(__file__).parent / "data" / "digits_students.csv"


# ---------------------------------------------------------------------------- the tables
def surrogate(point: dict) -> tuple[float, float]:
    """(accuracy, latency_ms) of one bert5 architecture, without the pseudo-noise."""
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


def build_table(name: str):
    """``(space dict, SearchSpace, metrics (n, 2) as (accuracy, latency_ms) in SearchSpace order)``."""
    from nas_distill.search.space import SearchSpace

    if name == "bert5":
        space = SearchSpace(BERT5)
        metrics = np.array([surrogate(space.point(k)) for k in range(len(space))])
        metrics[:, 0] += np.random.default_rng(12345).normal(0.0, 0.004, len(space))
        return BERT5, space, metrics
    with open(DIGITS_TABLE) as handle:
        rows = list(csv.DictReader(handle))
    keys = [k for k in rows[0] if k not in ("accuracy", "latency_ms", "params")]
    values = {k: sorted({int(row[k]) for row in rows}) for k in keys}
    space = SearchSpace(values)
    metrics = np.full((len(space), 2), np.nan)
    for row in rows:
        metrics[space.index_of({k: int(row[k]) for k in keys})] = (float(row["accuracy"]), float(row["latency_ms"]))
    if np.isnan(metrics).any():
        raise ValueError(f"{DIGITS_TABLE}: {int(np.isnan(metrics[:, 0]).sum())} students of the space are missing")
    return values, space, metrics


class Scorer:
    def __init__(self, metrics: np.ndarray):
        from nas_distill.search.pareto import hypervolume

        self._hypervolume = hypervolume
        self.hb = np.column_stack([metrics[:, 0], -np.log10(metrics[:, 1])])  # higher is better
        self.reference = self.hb.min(axis=0)
        self.true_hv = hypervolume(self.hb, self.reference)

    def score(self, indices: list[int]) -> float:
        return self._hypervolume(self.hb[indices], self.reference) / self.true_hv


# ---------------------------------------------------------------------------- searchers
def botorch_missing() -> str | None:
    """Why the botorch row cannot run here, or None."""
    try:
        import botorch  # noqa: F401
        import optuna_integration  # noqa: F401
    except ImportError as exc:
        return f"not installed ({exc.name}): pip install 'nas-distill[bench]'"
    return None


def make_row_searcher(row: str, space_dict: dict, seed: int, known):
    import optuna

    from nas_distill.search.searchers import make_searcher

    directions = ["maximize", "minimize"]
    if row in ("bo+known", "bo", "random"):
        return make_searcher(row.split("+")[0], space_dict, seed=seed, directions=directions,
                             known_objectives=known if row == "bo+known" else None)
    if row == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed)
    elif row == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    elif row == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    elif row == "botorch":
        from optuna_integration import BoTorchSampler
        from optuna_integration.botorch import qnehvi_candidates_func

        sampler = BoTorchSampler(candidates_func=qnehvi_candidates_func, seed=seed)
    else:
        raise ValueError(f"unknown row {row!r}")
    return make_searcher(sampler, space_dict, seed=seed, directions=directions)


def run_row(row: str, space_name: str, seed: int, n_trials: int) -> tuple[list[int], list[float]]:
    """Indices of the points proposed, in order, and the seconds each suggestion took."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    space_dict, space, metrics = _TABLES[space_name]
    log_latency = np.log10(metrics[:, 1])

    def known(arch):  # the latency the pipeline measures before training, higher-is-better sign
        return {1: -float(log_latency[space.index_of(arch)])}

    searcher = make_row_searcher(row, space_dict, seed, known)
    chosen, seconds = [], []
    for _ in range(n_trials):
        start = time.perf_counter()
        arch = searcher.suggestion()
        seconds.append(time.perf_counter() - start)
        k = space.index_of(arch)
        searcher.feedback([float(metrics[k, 0]), -float(log_latency[k])])
        chosen.append(k)
    return chosen, seconds


_TABLES: dict = {}


def _init_worker(space_names):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    for name in space_names:
        _TABLES[name] = build_table(name)


def _job(args):
    row, space_name, seed, n_trials = args
    chosen, seconds = run_row(row, space_name, seed, n_trials)
    return row, space_name, seed, chosen, seconds


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per row and space (default 5)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run")
    parser.add_argument("--spaces", default=",".join(SPACES), help="comma-separated spaces")
    parser.add_argument("--botorch-seeds", type=int, default=1, help="seeds of the botorch row (default 1)")
    parser.add_argument("--botorch-trials", type=int, default=25, help="trials of the botorch row (default 25)")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    skipped = {}
    if "botorch" in rows and (why := botorch_missing()):
        skipped["botorch"] = why
    n_trials = max(BUDGETS)
    started = time.perf_counter()
    _init_worker(spaces)
    seeds = {r: args.botorch_seeds if r == "botorch" else args.seeds for r in rows}
    trials = {r: args.botorch_trials if r == "botorch" else n_trials for r in rows}
    jobs = [(r, s, seed, trials[r]) for s in spaces for r in rows if r not in skipped for seed in range(seeds[r])]
    # Slow samplers first, so the pool ends evenly.
    jobs.sort(key=lambda j: {"botorch": 0, "gp": 1}.get(j[0], 2))
    results = {}
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init_worker, initargs=(spaces,)) as pool:
        for row, space_name, seed, chosen, seconds in pool.imap_unordered(_job, jobs):
            results[(row, space_name, seed)] = (chosen, seconds)
    for space_name in spaces:
        _, space, metrics = _TABLES[space_name]
        scorer = Scorer(metrics)
        front = len(_front(scorer.hb))
        print(f"\nspace {space_name}: {len(space)} points, keys {list(space.keys)}; true front {front} points; "
              f"{args.seeds} seeds; median hypervolume ratio (accuracy, log10 latency)")
        print(f"| {'searcher':<9} | " + " | ".join(f"{'@' + str(b):>5}" for b in BUDGETS)
              + " | s/suggestion | s @~100 |")
        print("|" + "-" * 11 + "|" + "|".join("-" * 7 for _ in BUDGETS) + "|--------------|---------|")
        for row in rows:
            if row in skipped:
                print(f"| {row:<9} | " + " | ".join(f"{'n/a':>5}" for _ in BUDGETS) + " |          n/a |     n/a |")
                continue
            runs = [results[(row, space_name, seed)] for seed in range(seeds[row])]
            cells = [f"{np.median([scorer.score(chosen[:b]) for chosen, _ in runs]):5.3f}" if b <= trials[row]
                     else f"{'n/a':>5}" for b in BUDGETS]
            mean_s = float(np.mean([np.mean(s) for _, s in runs]))
            late_s = float(np.mean([np.mean(s[-10:]) for _, s in runs]))
            own_budget = (seeds[row], trials[row]) != (args.seeds, n_trials)
            note = f" ({seeds[row]} seed, {trials[row]} trials)" if own_budget else ""
            print(f"| {row:<9} | " + " | ".join(cells) + f" | {mean_s:12.3f} | {late_s:7.3f} |{note}")
    for row, why in skipped.items():
        print(f"{row}: {why}")
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s with {args.jobs} processes")
    return 0


def _front(hb: np.ndarray) -> np.ndarray:
    from nas_distill.search.pareto import find_pareto_front

    return find_pareto_front(hb)


if __name__ == "__main__":
    sys.exit(main())
