"""``bo`` learns from trials the pruner stopped: their last partial values plus the gain finished trials
showed from that rung to the end, weighed by that gain's scatter.

Studies are built by hand (real Optuna studies, trials added with the pipeline's ``rungs`` /
``early_stop`` user attrs); the expected observations are computed here from the raw attrs, and the
GP's posterior with per-point noise is checked against the closed form solved by hand.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from nas_distill.errors import SearchSpaceExhausted
from nas_distill.search import gp
from nas_distill.search.bo_sampler import SpaceBOSampler
from nas_distill.search.space import SearchSpace

SPACE = {"width": [64, 128, 256, 512], "depth": [1, 2, 3, 4], "act": ["relu", "gelu"]}  # 32 points
DISTRIBUTIONS = {key: CategoricalDistribution(values) for key, values in SPACE.items()}
# Rung positions 0 and 1 (1/9 and 1/3 of 90 steps); the loss falls by about these amounts after each.
RUNG_STEPS = (10, 30)
RUNG_OFFSETS = (0.6, 0.2)


def _loss(arch):
    return 1.0 - 0.15 * math.log2(arch["width"] / 64) - 0.08 * arch["depth"] - 0.05 * (arch["act"] == "gelu")


def _latency(arch):
    return arch["width"] * arch["depth"] / 64.0


def _known(arch):  # higher is better, as feedback() takes it
    return {1: -_latency(arch)}


def _rungs(values_per_rung):
    return [{"step": step, "of": 90, "values": values, "known": {}}
            for step, values in zip(RUNG_STEPS, values_per_rung)]


def _stop(partial):
    """The pruner's record of a trial stopped at its last rung."""
    return {"by": "pareto-asha", "step": RUNG_STEPS[len(partial) - 1], "of": 90, "reason": "dominated"}


def _study(names=("loss", "latency")):
    study = optuna.create_study(directions=["minimize", "minimize"])
    if names is not None:
        study.set_metric_names(list(names))
    return study


def _add(study, arch, state, values=None, attrs=None):
    study.add_trial(create_trial(params=arch, distributions=DISTRIBUTIONS, values=values, state=state,
                                 user_attrs=attrs or {}))


# Finished students, each with its own wobble around the typical fall of the loss after each rung.
FINISHED = [
    ({"width": 64, "depth": 1, "act": "relu"}, (0.03, -0.02)),
    ({"width": 128, "depth": 2, "act": "gelu"}, (-0.05, 0.01)),
    ({"width": 256, "depth": 1, "act": "relu"}, (0.02, 0.03)),
    ({"width": 512, "depth": 4, "act": "gelu"}, (-0.01, -0.04)),
    ({"width": 64, "depth": 3, "act": "gelu"}, (0.06, 0.02)),
    ({"width": 256, "depth": 3, "act": "relu"}, (-0.04, 0.00)),
]
# (arch, its rung losses): stopped at the first rung and at the second; their partial losses are far
# above what their size suggests, so using them must move the model.
STOPPED = [
    ({"width": 512, "depth": 2, "act": "relu"}, [{"loss": 2.4}]),
    ({"width": 128, "depth": 4, "act": "relu"}, [{"loss": 2.9}, {"loss": 2.5}]),
]


def _pipeline_study(names=("loss", "latency")):
    """Six finished trials with both rungs, two stopped by the pruner (one per rung)."""
    study = _study(names)
    for arch, wobble in FINISHED:
        final = _loss(arch)
        partial = [{"loss": final + offset + w} for offset, w in zip(RUNG_OFFSETS, wobble)]
        _add(study, arch, TrialState.COMPLETE, [final, _latency(arch)], {"rungs": _rungs(partial)})
    for arch, partial in STOPPED:
        _add(study, arch, TrialState.PRUNED, None, {"rungs": _rungs(partial), "early_stop": _stop(partial)})
    return study


def _expected_final_loss(study, partial, position):
    """The stopped trial's final loss as the finished trials predict it: the partial loss plus their mean
    change from that rung to the end; and the variance of one more trial's change."""
    changes = [t.values[0] - t.user_attrs["rungs"][position]["values"]["loss"]
               for t in study.get_trials(states=(TrialState.COMPLETE,)) if len(t.user_attrs["rungs"]) > position]
    n = len(changes)
    return partial + sum(changes) / n, np.var(changes, ddof=1) * (1 + 1 / n)


# ---------------------------------------------------------------------- the observations
def test_a_stopped_trial_counts_as_its_partial_value_plus_the_learned_gain_in_the_models_sign():
    study = _pipeline_study()
    observations = SpaceBOSampler(SPACE, seed=0, known_objectives=_known).stopped_observations(study)
    by_number = {o.number: o for o in observations}
    stopped = study.get_trials(states=(TrialState.PRUNED,))
    assert sorted(by_number) == [t.number for t in stopped]
    complete_variances = []
    for trial in stopped:
        rungs = trial.user_attrs["rungs"]
        final, variance = _expected_final_loss(study, rungs[-1]["values"]["loss"], len(rungs) - 1)
        seen = by_number[trial.number]
        assert seen.objective == 0  # latency is not in the rung values: nothing for it
        # The study minimises the loss; the model works higher-is-better: minus the predicted loss.
        assert seen.value == pytest.approx(-final, abs=1e-12)
        assert seen.variance == pytest.approx(variance, rel=1e-12)
        complete_variances.append(seen.variance)
    # A finished trial's value is taken as measured; a stopped one's carries the gain's scatter on top.
    assert min(complete_variances) > 0


def test_a_rung_fewer_than_two_finished_trials_passed_gives_no_observation():
    study = _study()
    for number, (arch, _) in enumerate(FINISHED):
        # only the first finished trial passed the second rung
        partial = [{"loss": _loss(arch) + 0.6}] + ([{"loss": _loss(arch) + 0.2}] if number == 0 else [])
        _add(study, arch, TrialState.COMPLETE, [_loss(arch), _latency(arch)], {"rungs": _rungs(partial)})
    for arch, partial in STOPPED:
        _add(study, arch, TrialState.PRUNED, None, {"rungs": _rungs(partial), "early_stop": _stop(partial)})
    observations = SpaceBOSampler(SPACE, seed=0).stopped_observations(study)
    stopped_first = study.get_trials(states=(TrialState.PRUNED,))[0]
    assert [o.number for o in observations] == [stopped_first.number]
    assert observations[0].value == pytest.approx(-(2.4 - 0.6), abs=1e-12)


def test_without_metric_names_or_with_the_option_off_nothing_is_used():
    assert SpaceBOSampler(SPACE, seed=0).stopped_observations(_pipeline_study(names=None)) == []
    off = SpaceBOSampler(SPACE, seed=0, use_stopped_trials=False)
    assert off.stopped_observations(_pipeline_study()) == []


# ---------------------------------------------------------------------- the model uses them
def test_the_posterior_at_a_stopped_point_moves_toward_its_observation():
    study = _pipeline_study()
    on = SpaceBOSampler(SPACE, seed=0, known_objectives=_known)
    off = SpaceBOSampler(SPACE, seed=0, known_objectives=_known, use_stopped_trials=False)
    by_number = {o.number: o for o in on.stopped_observations(study)}
    for trial in study.get_trials(states=(TrialState.PRUNED,)):
        arch = dict(trial.params)
        target = by_number[trial.number].value
        with_it, without = on.posterior(study, [arch])[0][0, 0], off.posterior(study, [arch])[0][0, 0]
        # From the finished trials alone the model expects a good loss here; the stopped trial says worse.
        assert target < without
        assert abs(with_it - target) < 0.5 * abs(without - target)


def test_gp_with_per_point_noise_matches_the_closed_form_and_its_gradient():
    from scipy.optimize import approx_fprime

    rng = np.random.default_rng(4)
    x = np.column_stack([rng.integers(0, 4, 20) / 3.0, rng.integers(0, 4, 20) / 3.0, rng.integers(0, 2, 20)])
    y = np.sin(3 * x[:, 0]) + x[:, 1] ** 2 + 0.2 * x[:, 2]
    extra = np.where(np.arange(20) % 3 == 0, 0.05, 0.0)
    model = gp.ArchGP(np.array([False, False, True])).fit(x, y, extra)
    # The posterior mean solved by hand: K + fitted noise from the kernel alone, the known noise added here.
    mean_y, scale = y.mean(), y.std()
    pairs = model._pairs(x, x)
    cov = gp._kernel(model.params, pairs)[0] + np.diag(extra / scale**2)
    x_new = np.array([[0.5, 0.2, 1.0], [1.0, 1.0, 0.0]])
    sq, products = model._pairs(x_new, x)
    w, s, poly, _ = gp._unpack(model.params)
    k_star = s * gp._matern52(sq @ w)[0] + poly * products
    expected = mean_y + scale * k_star @ np.linalg.solve(cov, (y - mean_y) / scale)
    np.testing.assert_allclose(model.predict(x_new)[0], expected, rtol=1e-8, atol=1e-10)
    z = (y - mean_y) / scale
    z_extra = extra / scale**2
    for params in rng.normal(0.0, 0.7, (3, 6)):
        analytic = gp._neg_log_posterior(params, pairs, z, z_extra)[1]
        numeric = approx_fprime(params, lambda p: gp._neg_log_posterior(p, pairs, z, z_extra)[0], 1e-6)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- what stays as it was
def test_a_stopped_arch_is_never_proposed_again():
    study = _pipeline_study()
    stopped = {SearchSpace(SPACE).index_of(t.params) for t in study.get_trials(states=(TrialState.PRUNED,))}
    sampler = SpaceBOSampler(SPACE, seed=1, known_objectives=_known, n_startup_trials=2)
    study.sampler = sampler
    proposed = []
    while True:
        try:
            trial = study.ask()
            arch = {k: trial.suggest_categorical(k, v) for k, v in SPACE.items()}
        except SearchSpaceExhausted:
            break
        proposed.append(SearchSpace(SPACE).index_of(arch))
        study.tell(trial, [_loss(arch), _latency(arch)])
    held = {SearchSpace(SPACE).index_of(t.params) for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(proposed) == 32 - len(FINISHED) - len(STOPPED) == len(set(proposed))
    assert not stopped & set(proposed)
    assert held | stopped == set(range(32))


def test_trials_without_rung_records_are_modelled_exactly_as_with_the_option_off():
    def build():
        study = _study()
        for number, (arch, _) in enumerate(FINISHED):
            attrs = {"rungs": _rungs([{"loss": _loss(arch) + 0.6}])} if number % 2 else {}
            _add(study, arch, TrialState.COMPLETE, [_loss(arch), _latency(arch)], attrs)
        # given up before training (no rungs), and one carrying rungs the pruner did not stop
        _add(study, STOPPED[0][0], TrialState.PRUNED, None, {"pruned_reason": "budget reached"})
        _add(study, STOPPED[1][0], TrialState.PRUNED, None, {"rungs": _rungs([{"loss": 0.1}])})
        return study

    on = SpaceBOSampler(SPACE, seed=3, known_objectives=_known)
    off = SpaceBOSampler(SPACE, seed=3, known_objectives=_known, use_stopped_trials=False)
    study_on, study_off = build(), build()
    assert on.stopped_observations(study_on) == []
    scores_on, scores_off = on.score_candidates(study_on, number=8), off.score_candidates(study_off, number=8)
    assert scores_on.candidates == scores_off.candidates
    np.testing.assert_array_equal(scores_on.gain, scores_off.gain)
    np.testing.assert_array_equal(scores_on.mean, scores_off.mean)
    study_on.sampler, study_off.sampler = on, off
    asked = [{k: t.suggest_categorical(k, v) for k, v in SPACE.items()} for t in (study_on.ask(), study_off.ask())]
    assert asked[0] == asked[1]


def test_gp_fitted_on_some_points_is_a_map_optimum_of_those_and_conditions_on_all():
    rng = np.random.default_rng(4)
    x = np.column_stack([rng.integers(0, 4, 40) / 3.0, rng.integers(0, 4, 40) / 3.0, rng.integers(0, 2, 40)])
    y = np.sin(3 * x[:, 0]) + x[:, 1] ** 2 + 0.2 * x[:, 2]
    y[20:] += 0.3 * rng.standard_normal(20)  # the uncertain half
    extra = np.where(np.arange(40) >= 20, 0.05, 0.0)
    rows = np.arange(20)
    model = gp.ArchGP(np.array([False, False, True])).fit(x, y, extra, fit_on=rows)
    z, z_extra = (y - y.mean()) / y.std(), extra / y.std() ** 2
    pairs = model._pairs(x, x)
    some = (pairs[0][np.ix_(rows, rows)], pairs[1][np.ix_(rows, rows)])
    # A stationary point of the posterior on the chosen rows, not of the one on all rows.
    on_some = np.abs(gp._neg_log_posterior(model.params, some, z[rows], z_extra[rows])[1]).max()
    on_all = np.abs(gp._neg_log_posterior(model.params, pairs, z, z_extra)[1]).max()
    assert on_some < 1e-2 < on_all
    # and the posterior conditions on every row: the closed form over all 40 points
    cov = gp._kernel(model.params, pairs)[0] + np.diag(z_extra)
    sq, products = model._pairs(x[25:30], x)
    w, s, poly, _ = gp._unpack(model.params)
    k_star = s * gp._matern52(sq @ w)[0] + poly * products
    expected = y.mean() + y.std() * k_star @ np.linalg.solve(cov, z)
    np.testing.assert_allclose(model.predict(x[25:30])[0], expected, rtol=1e-8, atol=1e-10)


def test_many_stopped_trials_the_fit_takes_the_finished_and_the_least_uncertain_stopped_ones():
    from nas_distill.search.bo_sampler import _MAP_POINTS, _map_points

    variances = np.random.default_rng(0).uniform(0.01, 1.0, _MAP_POINTS)
    assert _map_points(_MAP_POINTS // 2, variances[: _MAP_POINTS // 2]) is None  # few enough: all
    n_complete = _MAP_POINTS - 30
    rows = _map_points(n_complete, variances)
    threshold = np.sort(variances)[29]
    expected = list(range(n_complete)) + [n_complete + i for i in range(len(variances)) if variances[i] <= threshold]
    assert rows.tolist() == expected
    # more finished trials than the cap: all of them still, and no stopped one
    assert _map_points(_MAP_POINTS + 5, variances).tolist() == list(range(_MAP_POINTS + 5))


def test_stopped_trials_the_model_can_use_count_toward_the_start_up_trials():
    study = _study()
    for arch, wobble in FINISHED[:3]:
        final = _loss(arch)
        partial = [{"loss": final + offset + w} for offset, w in zip(RUNG_OFFSETS, wobble)]
        _add(study, arch, TrialState.COMPLETE, [final, _latency(arch)], {"rungs": _rungs(partial)})
    for arch, partial in STOPPED:
        _add(study, arch, TrialState.PRUNED, None, {"rungs": _rungs(partial), "early_stop": _stop(partial)})
    # 3 finished + 2 stopped observations reach the 5 start-up observations; 3 finished alone do not.
    on = SpaceBOSampler(SPACE, seed=0, known_objectives=_known, n_startup_trials=5)
    off = SpaceBOSampler(SPACE, seed=0, known_objectives=_known, n_startup_trials=5, use_stopped_trials=False)
    assert len(on.stopped_observations(study)) == 2
    assert on.score_candidates(study).gain is not None
    assert off.score_candidates(study).gain is None



def test_start_up_trials_the_pruner_stopped_still_spread_the_start_up_over_the_known_latency():
    """Before two trials finish, a stopped trial gives the model nothing (no gain to learn), but it was
    started: the next start-up trial must come from the next slice of the known latency, not the same one.
    Five start-up trials, each stopped, span the latency range: the fastest and the slowest fifth."""
    study = _study()
    study.sampler = SpaceBOSampler(SPACE, seed=3, known_objectives=_known, n_startup_trials=5)
    latencies = []
    for started in range(5):
        assert study.sampler.score_candidates(study).startup_position == started
        trial = study.ask()
        arch = {k: trial.suggest_categorical(k, v) for k, v in SPACE.items()}
        latencies.append(_latency(arch))
        partial = [{"loss": 2.0}]
        trial.set_user_attr("rungs", _rungs(partial))
        trial.set_user_attr("early_stop", _stop(partial))
        study.tell(trial, state=TrialState.PRUNED)
    everywhere = sorted(_latency(SearchSpace(SPACE).point(i)) for i in range(32))
    assert min(latencies) <= everywhere[len(everywhere) // 5]
    assert max(latencies) >= everywhere[-len(everywhere) // 5]

# ---------------------------------------------------------------------- the pipeline's own records
@pytest.mark.slow
def test_a_pipeline_search_with_the_pruner_feeds_bo_its_stopped_students(pruned_search):
    """A real search (the session's: digits MLP students, torch engine, pareto-asha, bo): the records the
    pipeline writes are the ones bo reads; every stopped student becomes an observation, computed here from
    the stored attrs."""
    pytest.importorskip("torch")
    from _support.pruning_task import SPACE as PIPELINE_SPACE

    study = pruned_search.study
    assert isinstance(study.sampler, SpaceBOSampler)
    stopped = [t for t in study.trials if t.state == TrialState.PRUNED and "early_stop" in t.user_attrs]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert stopped and len(complete) >= 2
    by_number = {o.number: o for o in study.sampler.stopped_observations(study)}
    assert sorted(by_number) == [t.number for t in stopped]
    for trial in stopped:
        position = len(trial.user_attrs["rungs"]) - 1
        gains = [t.values[0] - t.user_attrs["rungs"][position]["values"]["accuracy"] for t in complete]
        partial = trial.user_attrs["rungs"][position]["values"]["accuracy"]
        assert by_number[trial.number].value == pytest.approx(partial + np.mean(gains), abs=1e-12)
        assert by_number[trial.number].objective == 0  # accuracy; params is known before training
    held = {SearchSpace(PIPELINE_SPACE).index_of(t.params) for t in study.trials if t.state == TrialState.COMPLETE}
    assert not held & {SearchSpace(PIPELINE_SPACE).index_of(t.params) for t in stopped}
