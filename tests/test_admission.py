"""The answer from the store: which earlier trial of the same architecture an asked trial defers to.

Real frozen Optuna trials (``optuna.trial.create_trial``); the expected answer of each case is written
out by hand from the rule: a COMPLETE trial first (the lowest number), else a lower-numbered RUNNING one,
else one that FAILed for a reason of the arch's own (not a lost worker, an interrupt, a setup error).
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from nas_distill.admission import known_trial, same_arch

DISTRIBUTIONS = {"a": CategoricalDistribution([1, 2, 3]), "b": CategoricalDistribution([1, 2])}
ARCH = {"a": 1, "b": 2}


def trial(number, state, arch=ARCH, error_type=None):
    kwargs = {"value": 1.0} if state == TrialState.COMPLETE else {}
    t = optuna.trial.create_trial(params=dict(arch), distributions=DISTRIBUTIONS, state=state,
                                  user_attrs={"error_type": error_type} if error_type else {}, **kwargs)
    t.number = number
    return t


@pytest.mark.parametrize("trials, asked, expected", [
    # nothing of the same arch: train it
    ([trial(0, TrialState.COMPLETE, {"a": 2, "b": 2})], 1, None),
    # the lowest-numbered COMPLETE one wins over a RUNNING and a FAIL of the same arch
    ([trial(0, TrialState.FAIL, error_type="InvalidArchitecture"), trial(1, TrialState.RUNNING),
      trial(3, TrialState.COMPLETE), trial(2, TrialState.COMPLETE)], 5, 2),
    # a lower-numbered RUNNING trial trains it now; a higher-numbered one defers to us
    ([trial(4, TrialState.RUNNING), trial(1, TrialState.RUNNING)], 3, 1),
    ([trial(4, TrialState.RUNNING)], 3, None),
    # a failure of the arch's own answers; a lost worker, an interrupt or a setup error do not
    ([trial(0, TrialState.FAIL, error_type="WorkerLost"), trial(1, TrialState.FAIL, error_type="Interrupted"),
      trial(2, TrialState.FAIL, error_type="ConfigError")], 3, None),
    ([trial(0, TrialState.FAIL, error_type="Environment"), trial(1, TrialState.FAIL, error_type="ValueError")],
     3, 1),
    # the asked trial itself is never its own answer
    ([trial(3, TrialState.COMPLETE)], 3, None),
])
def test_known_trial_follows_the_precedence(trials, asked, expected):
    known = known_trial(trials, ARCH, asked)
    assert (known.number if known is not None else None) == expected


def test_same_arch_compares_values_and_their_types():
    assert same_arch({"a": 1, "b": 2, "extra": 0}, {"a": 1, "b": 2})
    assert not same_arch({"a": 1}, {"a": 1, "b": 2})  # a key missing
    assert not same_arch({"a": 1.0, "b": 2}, {"a": 1, "b": 2})  # 1.0 == 1, but another value of the space
    assert not same_arch({"a": True, "b": 2}, {"a": 1, "b": 2})
