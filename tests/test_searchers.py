"""Searchers and the claiming samplers: seed API, uniqueness across searchers and processes, objectives."""

from __future__ import annotations

import multiprocessing as mp
import tracemalloc

import numpy as np
import optuna
import pytest
from optuna.samplers import GPSampler, NSGAIISampler, TPESampler
from optuna.trial import TrialState

from nas_distill.errors import SearchSpaceExhausted
from nas_distill.search import samplers as samplers_module
from nas_distill.search.bo_sampler import SpaceBOSampler
from nas_distill.search.samplers import CLAIM_KEY, SpaceGridSampler, SpaceRandomSampler
from nas_distill.search.searchers import (
    BayesianOptimizationSearcher,
    GridSearcher,
    RandomSearcher,
    Searcher,
    make_searcher,
)
from nas_distill.search.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.ERROR)

SPACE = {"hidden_size": [128, 256, 384], "num_hidden_layers": [2, 4], "num_attention_heads": [2, 4]}  # 12
HUGE = {f"k{i}": list(range(10)) for i in range(9)}  # 10**9 points


def _sqlite(tmp_path, name="study.db"):
    return f"sqlite:///{tmp_path / name}"


def _index(arch, space=SPACE):
    return SearchSpace(space).index_of(arch)


# ---------------------------------------------------------------------- every searcher: seed API
@pytest.mark.parametrize("cls", [GridSearcher, RandomSearcher, BayesianOptimizationSearcher, Searcher])
def test_suggestion_is_an_arch_dict_of_the_space(cls):
    searcher = cls(SPACE)
    for step in range(12):
        arch = searcher.suggestion()
        assert set(arch) == set(SPACE)
        assert all(arch[k] in SPACE[k] for k in SPACE)
        assert searcher.current_trial.params == arch  # trial params are exactly the arch
        searcher.feedback(float(arch["hidden_size"]) / 384 + 0.01 * step)
    best = searcher.study.best_trial.params
    assert set(best) == set(SPACE)


def test_seed_helpers_map_vectors_and_indices():
    searcher = GridSearcher(SPACE)
    # keys sorted: hidden_size, num_attention_heads, num_hidden_layers
    assert searcher.params_vec2params_dict([256, 4, 2]) == {
        "hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2}
    assert searcher.indices2params_vec([2, 0, 1]) == [384, 2, 4]
    with pytest.raises(ValueError, match="para_vec"):
        searcher.params_vec2params_dict([256, 4])
    with pytest.raises(IndexError):
        searcher.indices2params_vec([3, 0, 0])


# ---------------------------------------------------------------------- grid
def test_grid_follows_the_pool_order_then_is_exhausted():
    searcher = GridSearcher(SPACE)
    got = []
    for _ in range(12):
        got.append(_index(searcher.suggestion()))
        searcher.feedback(0.5)
    assert got == list(range(12))
    assert searcher.is_exhausted()
    with pytest.raises(SearchSpaceExhausted):
        searcher.suggestion()
    # The refused ask left no RUNNING trial behind.
    assert not searcher.study.get_trials(states=(TrialState.RUNNING,))


def test_two_grid_searchers_share_one_sqlite_study(tmp_path):
    url = _sqlite(tmp_path)
    a = GridSearcher(SPACE, storage=url, study_name="shared")
    b = GridSearcher(SPACE, storage=url, study_name="shared")
    seen = []
    for step in range(12):
        searcher = a if step % 3 else b  # uneven interleaving, pending trials overlap
        seen.append(_index(searcher.suggestion()))
        searcher.feedback(0.1 * step)
    assert sorted(seen) == list(range(12))
    assert a.is_exhausted() and b.is_exhausted()
    for searcher in (a, b):
        with pytest.raises(SearchSpaceExhausted):
            searcher.suggestion()
    assert len(optuna.load_study(study_name="shared", storage=url).get_trials(states=(TrialState.COMPLETE,))) == 12


def test_running_trials_hold_their_points():
    study = optuna.create_study()
    a = GridSearcher(SPACE, study=study)
    b = GridSearcher(SPACE, study=study)
    first = a.suggestion()  # not answered yet: still RUNNING
    second = b.suggestion()
    assert _index(first) == 0 and _index(second) == 1


def test_failed_trial_frees_its_point():
    searcher = GridSearcher(SPACE)
    first = searcher.suggestion()
    searcher.tell(searcher.current_trial, state=TrialState.FAIL)
    assert searcher.suggestion() == first  # retried, and before anything new
    searcher.feedback(1.0)
    assert _index(searcher.suggestion()) == 1


def test_pruned_trial_counts_as_visited():
    searcher = GridSearcher(SPACE)
    first = searcher.suggestion()
    searcher.tell(searcher.current_trial, state=TrialState.PRUNED)
    assert searcher.suggestion() != first


def test_enqueued_arch_is_served_first_and_never_repeated():
    searcher = GridSearcher(SPACE)
    wanted = SearchSpace(SPACE).point(5)
    searcher.study.enqueue_trial(wanted)
    got = []
    for _ in range(12):
        got.append(_index(searcher.suggestion()))
        searcher.feedback(0.0)
    assert got[0] == 5
    assert sorted(got) == list(range(12))


def test_conflict_seen_at_verification_makes_the_claimant_yield(monkeypatch):
    """Trial A holds point 0 by claim only; B's first read misses it (the race), B must yield."""
    study = optuna.create_study()
    holder = study.ask()
    study._storage.set_trial_system_attr(holder._trial_id, CLAIM_KEY, 0)

    real = samplers_module.held_indices
    calls = []

    def stale_first_read(study_, space, exclude_number=None):
        calls.append(exclude_number)
        return set() if len(calls) == 1 else real(study_, space, exclude_number)

    monkeypatch.setattr(samplers_module, "held_indices", stale_first_read)
    searcher = GridSearcher(SPACE, study=study)
    arch = searcher.suggestion()
    assert _index(arch) == 1
    assert len(calls) >= 4  # read, verify (conflict), read, verify
    assert study.trials[0].system_attrs[CLAIM_KEY] == 0  # the holder keeps its point


def test_grid_sampler_works_with_plain_optimize():
    sampler = SpaceGridSampler(SPACE)
    study = optuna.create_study(sampler=sampler)

    def objective(trial):
        arch = {k: trial.suggest_categorical(k, v) for k, v in SPACE.items()}
        return arch["hidden_size"] * arch["num_hidden_layers"]

    study.optimize(objective, n_trials=50)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 12
    assert sorted(_index(t.params) for t in done) == list(range(12))


def _grid_worker(url, study_name, seed):
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    searcher = GridSearcher(SPACE_MP, storage=storage, study_name=study_name)
    got = []
    rng = np.random.default_rng(seed)
    while True:
        try:
            arch = searcher.suggestion()
        except SearchSpaceExhausted:
            return got
        got.append(arch)
        if rng.random() < 0.5:
            import time

            time.sleep(0.005)
        searcher.feedback(float(seed))


SPACE_MP = {"a": [1, 2, 3, 4], "b": ["x", "y", "z"], "c": [0.1, 0.2]}  # 24 points


@pytest.mark.slow
def test_grid_covers_the_space_once_across_processes(tmp_path):
    url = _sqlite(tmp_path, "mp.db")
    optuna.create_study(storage=url, study_name="mp", direction="maximize")  # schema + study up front
    n_workers = 4
    with mp.get_context("spawn").Pool(n_workers) as pool:
        results = pool.starmap(_grid_worker, [(url, "mp", s) for s in range(n_workers)])
    indices = [SearchSpace(SPACE_MP).index_of(arch) for got in results for arch in got]
    assert sorted(indices) == list(range(24)), "every point exactly once"
    study = optuna.load_study(study_name="mp", storage=url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 24
    assert not study.get_trials(states=(TrialState.RUNNING,))


# ---------------------------------------------------------------------- random
def _sequence(searcher, n):
    out = []
    for _ in range(n):
        out.append(_index(searcher.suggestion()))
        searcher.feedback(0.0)
    return out


def test_random_is_reproducible_and_without_replacement():
    same_a = _sequence(RandomSearcher(SPACE, seed=3), 12)
    same_b = _sequence(RandomSearcher(SPACE, seed=3), 12)
    other = _sequence(RandomSearcher(SPACE, seed=4), 12)
    assert same_a == same_b
    assert other != same_a
    assert sorted(same_a) == list(range(12)) and sorted(other) == list(range(12))
    assert same_a != list(range(12))  # not the grid order


def test_random_default_seed_is_42_and_exhausts():
    searcher = RandomSearcher(SPACE)
    assert searcher.seed == 42
    _sequence(searcher, 12)
    assert searcher.is_exhausted()
    with pytest.raises(SearchSpaceExhausted):
        searcher.suggestion()


def test_random_sampler_failed_point_is_drawable_again():
    searcher = RandomSearcher(SPACE, seed=0)
    _sequence(searcher, 11)
    last = searcher.suggestion()
    searcher.tell(searcher.current_trial, state=TrialState.FAIL)
    assert searcher.suggestion() == last  # the only free point


@pytest.mark.parametrize("cls", [GridSearcher, RandomSearcher])
def test_huge_space_costs_no_memory_per_point(cls):
    def peak(space):
        searcher = cls(space)
        searcher.suggestion()
        searcher.feedback(0.0)  # warm up imports and the study
        tracemalloc.start()
        for _ in range(50):
            searcher.suggestion()
            searcher.feedback(0.0)
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak_bytes

    small = peak({f"k{i}": list(range(2)) for i in range(9)})  # 512 points
    huge = peak(HUGE)
    assert huge < 4_000_000
    assert huge < 2 * small + 500_000


def test_huge_space_random_draws_are_distinct_and_in_space():
    searcher = RandomSearcher(HUGE, seed=1)
    seen = set()
    for _ in range(31):
        seen.add(_index(searcher.suggestion(), HUGE))
        searcher.feedback(0.0)
    assert len(seen) == 31
    assert not searcher.is_exhausted()


# ---------------------------------------------------------------------- objectives
def test_sequence_feedback_makes_a_multi_objective_study():
    searcher = RandomSearcher(SPACE, seed=0)
    metrics = []
    for _ in range(12):
        arch = searcher.suggestion()
        # conflicting: bigger is more accurate and slower
        value = [arch["hidden_size"] / 384 + 0.01 * arch["num_hidden_layers"],
                 -arch["hidden_size"] * arch["num_attention_heads"] / 768]
        metrics.append(value)
        searcher.feedback(value)
    study = searcher.study
    assert len(study.directions) == 2
    assert all(d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions)
    # Pareto-based: best_trials are exactly the non-dominated rows (never a sum).
    m = np.array(metrics)
    front = {i for i in range(len(m)) if not any((m[j] >= m[i]).all() and (m[j] > m[i]).any() for j in range(len(m)))}
    assert {t.number for t in study.best_trials} == front
    assert len(front) > 1


def test_rebuilt_study_keeps_the_first_trial_and_its_claim():
    searcher = GridSearcher(SPACE)
    first = searcher.suggestion()
    searcher.feedback([0.8, -3.0])
    study = searcher.study
    assert len(study.directions) == 2
    assert study.trials[0].params == first and study.trials[0].values == [0.8, -3.0]
    assert _index(searcher.suggestion()) == 1
    with pytest.raises(ValueError, match="2 value"):
        searcher.feedback(0.5)  # directions are fixed now


def test_minimize_direction_stores_raw_values():
    searcher = BayesianOptimizationSearcher(SPACE, directions=["maximize", "minimize"])
    searcher.suggestion()
    searcher.feedback([0.91, -12.5])  # higher-is-better: minus the latency
    assert searcher.study.trials[0].values == [0.91, 12.5]
    searcher.suggestion()
    searcher.tell_raw([0.88, 7.0])  # already in the study's directions
    assert searcher.study.trials[1].values == [0.88, 7.0]
    with pytest.raises(ValueError, match="expected 2 value"):
        searcher.suggestion()
        searcher.feedback(0.3)


def test_orchestrator_ask_tell_path(tmp_path):
    url = _sqlite(tmp_path)
    searcher = make_searcher("grid", SPACE, seed=0, storage=url, study_name="orch",
                             directions=["maximize", "minimize"])
    trial = searcher.ask()
    assert set(trial.params) == set(SPACE)
    searcher.tell(trial, [0.7, 3.0])
    loaded = optuna.load_study(study_name="orch", storage=url)
    assert loaded.trials[0].values == [0.7, 3.0]
    assert loaded.trials[0].params == trial.params
    # A worker joining with other directions is refused with a clear message.
    with pytest.raises(ValueError, match="directions"):
        _ = GridSearcher(SPACE, storage=url, study_name="orch", directions=["maximize"]).study


# ---------------------------------------------------------------------- BO and names
@pytest.mark.parametrize(
    "name, cls",
    [("tpe", TPESampler), ("nsga2", NSGAIISampler), ("gp", GPSampler)],
)
def test_bo_with_named_sampler(name, cls):
    searcher = BayesianOptimizationSearcher(SPACE, sampler=name)
    assert isinstance(searcher.sampler, cls)
    assert searcher.study.sampler is searcher.sampler
    for _ in range(11 if name == "gp" else 14):  # past the samplers' 10 startup trials
        arch = searcher.suggestion()
        assert arch in SearchSpace(SPACE)
        searcher.feedback([arch["hidden_size"] / 384, -arch["num_hidden_layers"] / 4])


def test_bo_with_sampler_instance_and_default():
    sampler = TPESampler(seed=1)
    searcher = BayesianOptimizationSearcher(SPACE, sampler=sampler)
    assert searcher.sampler is sampler
    assert searcher.seed == 42
    assert isinstance(BayesianOptimizationSearcher(SPACE).sampler, SpaceBOSampler)


def test_bo_needs_no_torch_but_gp_does(monkeypatch):
    from nas_distill.search import searchers as searchers_module

    monkeypatch.setattr(searchers_module, "_gp_available", lambda: False)
    assert isinstance(make_searcher("bo", SPACE, seed=0).sampler, SpaceBOSampler)
    with pytest.raises(ImportError, match="torch"):
        make_searcher("gp", SPACE, seed=0)


@pytest.mark.parametrize(
    "name, cls, sampler_cls",
    [
        ("grid", GridSearcher, SpaceGridSampler),
        ("GRID", GridSearcher, SpaceGridSampler),
        ("Random", RandomSearcher, SpaceRandomSampler),
        ("bo", BayesianOptimizationSearcher, SpaceBOSampler),
        ("tpe", BayesianOptimizationSearcher, TPESampler),
        ("TPE", BayesianOptimizationSearcher, TPESampler),
        ("gp", BayesianOptimizationSearcher, GPSampler),
        ("NSGA-II", BayesianOptimizationSearcher, NSGAIISampler),
        ("nsga2", BayesianOptimizationSearcher, NSGAIISampler),
    ],
)
def test_make_searcher_names(name, cls, sampler_cls):
    searcher = make_searcher(name, SPACE, seed=7)
    assert type(searcher) is cls
    assert isinstance(searcher.sampler, sampler_cls)
    assert searcher.seed == 7


def test_make_searcher_bo_and_instances():
    assert type(make_searcher("BO", SPACE, seed=0)) is BayesianOptimizationSearcher
    sampler = NSGAIISampler(seed=0)
    assert make_searcher(sampler, SPACE, seed=0).sampler is sampler
    assert make_searcher("bo", SPACE, seed=0, sampler=sampler).sampler is sampler


def test_make_searcher_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"algorithm must be one of .*'grid'.*got 'annealing'"):
        make_searcher("annealing", SPACE, seed=0)
    with pytest.raises(ValueError, match="sampler"):
        make_searcher("grid", SPACE, seed=0, sampler=TPESampler())


# ---------------------------------------------------------------------- validation
def test_argument_validation_names_parameter_and_value():
    with pytest.raises(ValueError, match=r"directions.*'maximize'"):
        GridSearcher(SPACE, directions="maximize")
    with pytest.raises(ValueError, match=r"directions.*'up'"):
        GridSearcher(SPACE, directions=["up"])
    with pytest.raises(ValueError, match=r"seed.*'a'"):
        RandomSearcher(SPACE, seed="a")
    with pytest.raises(ValueError, match="either study or storage"):
        GridSearcher(SPACE, study=optuna.create_study(), storage="sqlite://")
    with pytest.raises(ValueError, match="study_name"):
        GridSearcher(SPACE, study_name="x")
    with pytest.raises(ValueError, match="sampler"):
        BayesianOptimizationSearcher(SPACE, sampler=3)
    searcher = GridSearcher(SPACE)
    with pytest.raises(RuntimeError, match="suggestion"):
        searcher.feedback(1.0)
    searcher.suggestion()
    with pytest.raises(ValueError, match="metric"):
        searcher.feedback("good")
    with pytest.raises(ValueError, match="finite"):
        searcher.feedback(float("nan"))
    searcher.feedback(np.float32(0.5))  # numpy scalars are numbers
    assert searcher.study.trials[0].value == pytest.approx(0.5)


@pytest.mark.parametrize("cls", [GridSearcher, RandomSearcher, BayesianOptimizationSearcher])
def test_polling_a_full_space_creates_no_trial_per_poll(cls):
    """ask() reads the study up front only when the space may be full; a worker polling a space that
    another worker filled leaves at most one FAILED trial behind (the ask that found it full)."""
    study = optuna.create_study()
    filler, poller = cls(SPACE, study=study), cls(SPACE, study=study)
    poller.suggestion()
    poller.feedback(0.0)
    for _ in range(10):
        filler.suggestion()
        filler.feedback(0.0)
    running = filler.suggestion()  # the last point, still training
    before = len(study.trials)
    for _ in range(5):
        with pytest.raises(SearchSpaceExhausted):
            poller.suggestion()
    assert len(study.trials) <= before + 1
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 1  # only the one training
    # the point comes back when its trial fails
    filler.tell(filler.current_trial, state=TrialState.FAIL)
    assert poller.suggestion() == running


def test_claim_hands_its_verification_read_to_the_budget_check():
    searcher = GridSearcher(SPACE)
    searcher.suggestion()
    searcher.feedback(0.0)
    searcher.suggestion()
    number = searcher.current_trial.number
    sampler = searcher.sampler
    assert sampler.take_snapshot(number + 1) is None  # another trial's: never handed out
    searcher.tell(searcher.current_trial, state=TrialState.FAIL)
    searcher.suggestion()
    number = searcher.current_trial.number
    trials = sampler.take_snapshot(number)
    assert trials is not None and sampler.take_snapshot(number) is None  # handed out once
    states = {t.number: t.state for t in trials}
    # read after the trial existed with its claim: it and every earlier trial are there, FAILED included
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, number: TrialState.RUNNING}
    (mine,) = [t for t in trials if t.number == number]
    assert mine.system_attrs[CLAIM_KEY] == 1


def test_make_searcher_takes_model_hints_for_every_algorithm():
    def known(arch):
        return {1: -float(arch["num_hidden_layers"])}

    for name in ("grid", "random", "tpe", "bo"):
        searcher = make_searcher(name, SPACE, seed=0, known_objectives=known, canonical_arch=str,
                                 cost=lambda arch: 1.0)
        assert searcher.suggestion() in SearchSpace(SPACE)
    assert make_searcher("bo", SPACE, seed=0, known_objectives=known).model_hints["known_objectives"] is known
    with pytest.raises(ValueError, match=r"known_objectives must be a callable.*\{1: 2\.0\}"):
        make_searcher("bo", SPACE, seed=0, known_objectives={1: 2.0})
    with pytest.raises(ValueError, match=r"cost must be a callable.*3"):
        make_searcher("grid", SPACE, seed=0, cost=3)
