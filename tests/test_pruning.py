"""The pruner in the pipeline (search.pruner: pareto-asha): rung records, stops by the rule, a stopped arch
never trained again, workers that agree, the setups where it cannot act.

Real parts: MLP students of scikit-learn's digits flash-distilled by the built-in torch engine
(tests/_support/pruning_task.py), real Optuna studies in SQLite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState

from _support.common import REPO_ROOT
from _support.pruning_task import SHARED_SEARCH, TRAIN_STEPS, build, make_ad, net_params
from nas_distill import ConfigError, admission
from nas_distill.distill.torch.evaluate import evaluate
from nas_distill.rungs import RungMonitor
from nas_distill.search.pruner import RungResult, decide
from nas_distill.store import store_of
from nas_distill.vocabulary import EARLY_STOP_ATTR, RUNGS_ATTR

ETA = 3
# The default rungs, 1/9 and 1/3 of the regular-distillation steps (all of them here).
RUNG_STEPS = [round(TRAIN_STEPS / 9), round(TRAIN_STEPS / 3)]


def rung_result(trial, step, finished=True):
    """A trial's record at ``step`` as the rule takes it, built here from the stored attr: accuracy
    maximized (negated), params minimized; with ``finished``, a finished trial's final accuracy (its first
    value) too."""
    record = next(r for r in trial.user_attrs[RUNGS_ATTR] if r["step"] == step)
    final = (-trial.values[0],) if finished and trial.state == TrialState.COMPLETE else None
    return RungResult(trial.number, (-record["values"]["accuracy"],), (record["known"]["params"],), final)


def stopped_with(stop, by_number):
    """The records a stop names, the ones it names as finished then with their final values."""
    return [rung_result(by_number[n], stop["step"], finished=n in stop["finished"]) for n in stop["compared_with"]]


def decisions_agree_with_the_rule(trials):
    """Every stop recomputed from the records it names, and every rung a trial passed recomputed from the
    records of the trials numbered before it (one worker trains one trial at a time, so those are
    exactly the records it saw). Returns (stops, passes) checked."""
    stops = passes = 0
    by_number = {t.number: t for t in trials}
    for t in trials:
        records = t.user_attrs.get(RUNGS_ATTR) or []
        stop = t.user_attrs.get(EARLY_STOP_ATTR)
        for record in records:
            step = record["step"]
            if stop and stop["step"] == step:
                others = stopped_with(stop, by_number)
                assert not decide(rung_result(t, step), others, ETA).keep, (t.number, stop)
                stops += 1
            else:
                others = [rung_result(o, step) for o in trials if o.number < t.number
                          and any(r["step"] == step for r in o.user_attrs.get(RUNGS_ATTR) or [])]
                assert decide(rung_result(t, step), others, ETA).keep, (t.number, step)
                passes += 1
    return stops, passes


@pytest.fixture(scope="module")
def searched(pruned_search, tmp_path_factory):
    """The session's search with the pruner on (pruning_task.SHARED_SEARCH), reopened on a copy of its run
    folder (a test here searches on in it)."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("pruning") / "run"
    shutil.copytree(pruned_search.run_dir, run_dir)
    return make_ad(run_dir, **SHARED_SEARCH)


def test_a_search_stores_rung_records_and_stops_students_by_the_rule(searched):
    trials = searched.study.trials
    stopped = [t for t in trials if t.state == TrialState.PRUNED and EARLY_STOP_ATTR in t.user_attrs]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert stopped and complete, [(t.number, t.state.name) for t in trials]
    for t in complete:
        assert [r["step"] for r in t.user_attrs[RUNGS_ATTR]] == RUNG_STEPS
    for t in stopped:
        stop = t.user_attrs[EARLY_STOP_ATTR]
        assert t.values is None
        assert stop["by"] == "pareto-asha" and stop["of"] == TRAIN_STEPS
        # evaluated at every rung up to the one it was stopped at, not beyond
        assert [r["step"] for r in t.user_attrs[RUNGS_ATTR]] == RUNG_STEPS[:RUNG_STEPS.index(stop["step"]) + 1]
    for t in complete + stopped:
        for record in t.user_attrs[RUNGS_ATTR]:
            assert record["of"] == TRAIN_STEPS
            assert record["known"] == {"params": net_params(t.params)}
            assert 0.0 <= record["values"]["accuracy"] <= 1.0
    stops, passes = decisions_agree_with_the_rule(trials)
    assert stops == len(stopped) and passes > 0


def test_a_stopped_arch_is_never_trained_again(searched):
    stopped = next(t for t in searched.study.trials if EARLY_STOP_ATTR in t.user_attrs)
    known = admission.known_trial(searched.study.trials, dict(stopped.params), number=10**6)
    assert known.number == stopped.number
    attrs = admission.answer_attrs(known, dict(stopped.params), ["accuracy", "params"], {})
    assert attrs["duplicate_of"] == stopped.number and "stopped early" in attrs["note"]
    # Through the loop: the arch asked again is answered from the store, not trained.
    before = len(searched.study.trials)
    searched.study.enqueue_trial(dict(stopped.params))
    searched.max_trials = searched.max_trials + 1
    searched.search()
    again = searched.study.trials[before]
    assert again.params == stopped.params
    assert again.state == TrialState.PRUNED and again.user_attrs["duplicate_of"] == stopped.number
    assert RUNGS_ATTR not in again.user_attrs


def test_rung_values_are_the_evaluation_of_the_rung_slice(tmp_path):
    """The monitor stores what the evaluator gives on the first rung_examples examples, and reads it
    back from the study."""
    torch.set_num_threads(1)
    ad = make_ad(tmp_path / "run")
    ad.create_distillers()
    arch = {"hidden": 16, "depth": 1}
    model = build(arch)
    trial = ad.study.ask()
    monitor = RungMonitor(ad, store_of(ad.study), trial, arch, model, RUNG_STEPS)
    monitor(RUNG_STEPS[0] - 1, TRAIN_STEPS)  # not a rung: nothing happens
    assert RUNGS_ATTR not in ad.study.trials[trial.number].user_attrs
    monitor(RUNG_STEPS[0], TRAIN_STEPS)  # the first trial at its rung: too few to compare, it goes on
    head = [ad.eval_dataset[i] for i in range(200)]
    expected = evaluate(model, head, ["accuracy"])["accuracy"]
    stored = ad.study.trials[trial.number].user_attrs[RUNGS_ATTR]
    assert stored == [{"step": RUNG_STEPS[0], "of": TRAIN_STEPS, "values": {"accuracy": expected},
                       "known": {"params": float(net_params(arch))}}]
    assert model.training  # put back in training mode


def test_a_dominated_slow_student_is_stopped_and_a_fast_one_at_the_same_accuracy_is_not(tmp_path):
    """A hand-made study: six finished students at step 10, three small (few params) and three large ones
    that learn faster, their final accuracies in the order of their rung values (the rung predicts). At
    the same partial accuracy, a large student is stopped and a small one goes on."""
    ad = make_ad(tmp_path / "run")
    study = ad.study
    for accuracy, params in [(0.80, 5000), (0.78, 5000), (0.76, 5000), (0.50, 300), (0.48, 300), (0.47, 300)]:
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, values=[accuracy + 0.15, params], params={}, distributions={},
            user_attrs={RUNGS_ATTR: [{"step": 10, "of": TRAIN_STEPS, "values": {"accuracy": accuracy},
                                      "known": {"params": params}}]}))
    trial = study.ask()
    monitor = RungMonitor(ad, store_of(study), trial, {"hidden": 4, "depth": 1}, None, [10])
    slow, compared = monitor.decide(10, TRAIN_STEPS, {"accuracy": 0.55}, {"params": 5000})
    fast, _ = monitor.decide(10, TRAIN_STEPS, {"accuracy": 0.55}, {"params": 300})
    assert not slow.keep and "dominate" in slow.reason
    assert fast.keep
    assert len(compared) == 6
    # Records of another step budget are not compared.
    other_budget, compared = monitor.decide(10, 2 * TRAIN_STEPS, {"accuracy": 0.55}, {"params": 5000})
    assert other_budget.keep and compared == []


def test_pruning_where_it_cannot_act_is_a_config_error_before_any_trial(tmp_path):
    ad = make_ad(tmp_path / "run")
    ad.train_func = lambda model: None
    with pytest.raises(ConfigError, match="search.pruner"):
        ad.search()
    assert ad.study.trials == []


@pytest.mark.slow
def test_two_workers_pruning_one_study_agree_with_the_rule(tmp_path):
    """Two worker processes search one SQLite study: every stop either of them made is what the rule
    gives on the records it names, no arch is trained twice, and both workers trained."""
    run_dir = tmp_path / "run"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    script = str(REPO_ROOT / "tests" / "_support" / "pruning_task.py")
    children = [subprocess.Popen([sys.executable, script, str(run_dir), storage, f"w{i}"], stderr=subprocess.PIPE,
                                 text=True) for i in range(2)]
    for child in children:
        _, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="pruning", storage=storage).trials
    trained = [t for t in trials if RUNGS_ATTR in t.user_attrs]
    stopped = [t for t in trained if EARLY_STOP_ATTR in t.user_attrs]
    assert stopped, [(t.number, t.state.name) for t in trials]
    assert len({tuple(sorted(t.params.items())) for t in trained}) == len(trained)
    assert {t.user_attrs["worker"]["worker"] for t in trained} == {"w0", "w1"}
    by_number = {t.number: t for t in trials}
    for t in stopped:
        stop = t.user_attrs[EARLY_STOP_ATTR]
        assert not decide(rung_result(t, stop["step"]), stopped_with(stop, by_number), ETA).keep
