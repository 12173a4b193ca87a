"""The ``bo`` sampler: exact EHVI, known objectives, no repeated or equivalent architecture, bounded cost.

Independent references: Monte Carlo estimates of the expected improvement, and
``nas_distill.search.pareto.hypervolume`` (a separate exact hypervolume) for the improvement of known
points.
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from nas_distill.errors import SearchSpaceExhausted
from nas_distill.search.bo_sampler import SpaceBOSampler
from nas_distill.search.ehvi import expected_improvement_volume
from nas_distill.search.pareto import find_pareto_front, hypervolume
from nas_distill.search.searchers import BayesianOptimizationSearcher, make_searcher
from nas_distill.search.space import SearchSpace

SPACE = {"width": [16, 32, 64, 128], "depth": [1, 2, 3, 4], "act": ["relu", "gelu", "tanh"]}  # 48 points


def _accuracy(arch):
    return 0.5 + 0.1 * np.log2(arch["width"] / 16) / 3 + 0.05 * arch["depth"] / 4 + 0.02 * (arch["act"] == "gelu")


def _latency(arch):
    return arch["width"] * arch["depth"] / 16.0 + 0.3 * (arch["act"] == "tanh")


# ---------------------------------------------------------------------- exact EHVI
def _monte_carlo_ehvi(mean, sd, front, reference, rng, n_samples):
    """Mean and standard error of the hypervolume improvement over posterior samples."""
    base = hypervolume(front, reference)
    draws = mean + sd * rng.standard_normal((n_samples, len(mean)))
    gains = np.array([hypervolume(np.vstack([front, p]), reference) - base for p in draws])
    return gains.mean(), gains.std() / np.sqrt(n_samples)


@pytest.mark.parametrize("n_objectives, known", [(1, ()), (2, (1,)), (2, ()), (3, (0,)), (3, ())])
def test_ehvi_matches_a_monte_carlo_estimate(n_objectives, known):
    rng = np.random.default_rng(n_objectives * 10 + len(known))
    front = rng.uniform(0.0, 1.0, (7, n_objectives))
    reference = np.full(n_objectives, -0.1)
    mean = rng.uniform(0.3, 1.1, (5, n_objectives))
    sd = rng.uniform(0.05, 0.4, (5, n_objectives))
    sd[:, list(known)] = 0.0
    exact = expected_improvement_volume(mean, sd, front, reference)
    for i in range(len(mean)):
        estimate, error = _monte_carlo_ehvi(mean[i], sd[i], front, reference, rng, 3000 if n_objectives < 3 else 800)
        assert abs(exact[i] - estimate) <= 4.5 * error + 1e-4, (i, exact[i], estimate, error)


def test_improvement_of_known_points_is_the_exact_hypervolume_gain():
    rng = np.random.default_rng(3)
    for m in (2, 3):
        front = rng.uniform(0, 1, (9, m))
        points = rng.uniform(0, 1.2, (20, m))
        reference = np.zeros(m)
        exact = expected_improvement_volume(points, np.zeros_like(points), front, reference)
        base = hypervolume(front, reference)
        expected = [hypervolume(np.vstack([front, p]), reference) - base for p in points]
        np.testing.assert_allclose(exact, expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- known objectives and cost
def _study_with_trials(sampler, n_trials, directions=("maximize", "minimize")):
    """Trials proposed by ``sampler``, told raw values: accuracy, latency (the study's directions)."""
    study = optuna.create_study(directions=list(directions), sampler=sampler)
    space = SearchSpace(SPACE)
    for _ in range(n_trials):
        trial = study.ask()
        arch = {k: trial.suggest_categorical(k, list(v)) for k, v in zip(space.keys, space.values)}
        study.tell(trial, [_accuracy(arch), _latency(arch)])
    return study


def test_known_objectives_are_used_exactly_and_signs_converted():
    calls = []

    def known(arch):  # higher is better, as feedback() takes it: minus the latency
        calls.append(arch)
        return {1: -_latency(arch) * 1.5}  # deliberately not the measured value

    sampler = SpaceBOSampler(SPACE, seed=0, known_objectives=known)
    study = _study_with_trials(sampler, 7)
    scores = sampler.score_candidates(study)
    space = SearchSpace(SPACE)
    archs = [space.point(i) for i in scores.candidates]
    assert np.array_equal(scores.mean[:, 1], [-_latency(a) * 1.5 for a in archs])
    assert np.all(scores.sd[:, 1] == 0) and np.all(scores.sd[:, 0] > 0)
    # The front holds the trials' raw values turned higher-is-better: latency negated.
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    np.testing.assert_array_equal(np.sort(scores.front[:, 1]), np.sort([-t.values[1] for t in complete]))
    assert calls, "known_objectives was never asked"


def test_all_objectives_known_picks_the_best_exact_hypervolume_gain_per_cost():
    space = SearchSpace(SPACE)

    def known(arch):
        return {0: _accuracy(arch), 1: -_latency(arch)}

    def cost(arch):
        return 1.0 + arch["depth"]

    for use_cost in (False, True):
        sampler = SpaceBOSampler(SPACE, seed=1, known_objectives=known, cost=cost if use_cost else None)
        study = _study_with_trials(sampler, 6)
        scores = sampler.score_candidates(study)
        base = hypervolume(scores.front, scores.reference)
        expected = []
        for index in scores.candidates:
            arch = space.point(index)
            point = np.array([_accuracy(arch), -_latency(arch)])
            gain = hypervolume(np.vstack([scores.front, point]), scores.reference) - base
            expected.append(gain / cost(arch) if use_cost else gain)
        np.testing.assert_allclose(scores.gain, expected, rtol=1e-9, atol=1e-12)
        searcher = BayesianOptimizationSearcher(SPACE, seed=1, study=study, known_objectives=known,
                                                cost=cost if use_cost else None)
        arch = searcher.suggestion()
        best = max(expected)
        assert expected[scores.candidates.index(space.index_of(arch))] == pytest.approx(best, rel=1e-12)


def test_known_objectives_may_omit_indices_per_arch():
    def known(arch):  # latency known only for the narrow models
        return {1: -_latency(arch)} if arch["width"] <= 32 else {}

    sampler = SpaceBOSampler(SPACE, seed=2, known_objectives=known)
    study = _study_with_trials(sampler, 8)
    scores = sampler.score_candidates(study)
    narrow = np.array([SearchSpace(SPACE).point(i)["width"] <= 32 for i in scores.candidates])
    assert np.all(scores.sd[narrow, 1] == 0) and np.all(scores.sd[~narrow, 1] > 0)


def test_bad_known_objective_value_is_a_clear_error():
    sampler = SpaceBOSampler(SPACE, seed=0, known_objectives=lambda arch: {1: float("nan")})
    with pytest.raises(ValueError, match=r"known_objectives returned nan for \{"):
        _study_with_trials(sampler, 7)


# ---------------------------------------------------------------------- never twice
def _canonical(arch):
    # tanh and relu students are taken as one architecture here (16 x 2 = 32 canonical archs)
    return arch["width"], arch["depth"], arch["act"] == "gelu"


def test_never_repeats_nor_proposes_an_equivalent_arch_then_is_exhausted():
    searcher = make_searcher("bo", SPACE, seed=3, canonical_arch=_canonical,
                             known_objectives=lambda a: {1: -_latency(a)}, directions=["maximize", "minimize"])
    keys = []
    for _ in range(32):
        arch = searcher.suggestion()
        keys.append(_canonical(arch))
        searcher.feedback([_accuracy(arch), -_latency(arch)])
    assert len(set(keys)) == 32
    with pytest.raises(SearchSpaceExhausted):
        searcher.suggestion()


def test_runs_through_plain_study_optimize_without_repeats():
    sampler = SpaceBOSampler(SPACE, seed=4)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def objective(trial):
        arch = {k: trial.suggest_categorical(k, v) for k, v in SPACE.items()}
        return _accuracy(arch), _latency(arch)

    study.optimize(objective, n_trials=60)  # more than the 48 points: stops when the space is exhausted
    params = [tuple(sorted(t.params.items())) for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(params) == 48 and len(set(params)) == 48


def _worker(url, study_name, seed, n_trials):
    from nas_distill.study import make_storage

    storage = make_storage(url, heartbeat_interval=None, grace_period=None)
    searcher = make_searcher("bo", SPACE, seed=seed, storage=storage, study_name=study_name,
                             directions=["maximize", "minimize"], canonical_arch=_canonical)
    for _ in range(n_trials):
        arch = searcher.suggestion()
        searcher.feedback([_accuracy(arch), -_latency(arch)])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_four_workers_never_propose_a_held_or_equivalent_arch(kind, tmp_path, request):
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'bo.db'}" if kind == "sqlite" else f"journal:///{tmp_path / 'bo.log'}"
    study_name = f"bo-{kind}-{tmp_path.name}"
    from nas_distill.study import make_storage

    optuna.create_study(storage=make_storage(url, heartbeat_interval=None, grace_period=None),
                        study_name=study_name, directions=["maximize", "minimize"])
    n_workers, per_worker = 4, 7  # 28 of the 32 canonical architectures
    with mp.get_context("spawn").Pool(n_workers) as pool:
        pool.starmap(_worker, [(url, study_name, seed, per_worker) for seed in range(n_workers)])
    study = optuna.load_study(study_name=study_name, storage=make_storage(url, heartbeat_interval=None,
                                                                         grace_period=None))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == n_workers * per_worker
    keys = [_canonical(t.params) for t in complete]
    assert len(set(keys)) == len(keys), "two trials hold one architecture"


# ---------------------------------------------------------------------- cost per suggestion
def test_a_billion_point_space_is_sampled_not_enumerated():
    huge = {f"k{i}": list(range(10)) for i in range(9)}  # 10**9 points
    sampler = SpaceBOSampler(huge, seed=5, known_objectives=lambda a: {1: -float(sum(a.values()))},
                             n_candidates=300)
    searcher = BayesianOptimizationSearcher(huge, seed=5, sampler=sampler, directions=["maximize", "minimize"])
    seen = set()
    values = []
    for _ in range(8):
        # a fresh sample plus every one-key change of the front's points (9 keys x 9 other values)
        front_size = len(find_pareto_front(np.array(values))) if values else 0
        arch = searcher.suggestion()
        assert 0 < sampler.last_candidate_count <= 300 + front_size * 9 * 9
        seen.add(tuple(sorted(arch.items())))
        value = [float(arch["k0"] - arch["k1"]), -float(sum(arch.values()))]
        values.append(value)
        searcher.feedback(value)
    assert len(seen) == 8


def test_gp_map_gradient_matches_finite_differences():
    from scipy.optimize import approx_fprime

    from nas_distill.search import gp

    rng = np.random.default_rng(6)
    x = np.column_stack([rng.integers(0, 4, 25) / 3.0, rng.integers(0, 4, 25) / 3.0, rng.integers(0, 3, 25)])
    model = gp.ArchGP(np.array([False, False, True]))
    y = np.sin(3 * x[:, 0]) + x[:, 1] ** 2 + 0.3 * (x[:, 2] == 1) + 0.01 * rng.standard_normal(25)
    pairs = model._pairs(x, x)
    z = (y - y.mean()) / y.std()
    for params in rng.normal(0.0, 0.7, (3, 6)):
        analytic = gp._neg_log_posterior(params, pairs, z)[1]
        numeric = approx_fprime(params, lambda p: gp._neg_log_posterior(p, pairs, z)[0], 1e-6)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-4)
    # and the fitted model interpolates its (nearly noise-free) data
    mean, sd = model.fit(x, y).predict(x)
    assert np.max(np.abs(mean - y)) < 0.05 and np.all(sd < 0.2)


def test_gp_extrapolates_a_trade_off_between_two_keys():
    """A balance between two keys plus a trend (like width against depth) is learnt from one region of
    the grid and predicted where no point was tried: the polynomial kernel term carries the shape there,
    where a stationary kernel would fall back towards the mean."""
    from nas_distill.search import gp

    grid = np.array([(a / 6, b / 6) for a in range(7) for b in range(7)])

    def truth(x):
        return -((x[:, 0] - x[:, 1]) ** 2) + 0.5 * x[:, 0]

    tried = grid[grid[:, 0] <= 4 / 6]
    unseen = grid[grid[:, 0] > 4 / 6]
    tried = tried[np.random.default_rng(3).choice(len(tried), 20, replace=False)]
    mean, _ = gp.ArchGP(np.array([False, False])).fit(tried, truth(tried)).predict(unseen)
    # the values at the unseen points span 1.0; a miss of 0.02 would reorder neighbouring students
    assert np.max(np.abs(mean - truth(unseen))) < 0.02
