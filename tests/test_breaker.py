"""The circuit breaker: a search whose trials keep failing stops the whole study, says why, exits non-zero.

Real Optuna studies on SQLite; the CLI test runs real worker processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from _support.common import task_config, write_config
from nas_distill import breaker
from nas_distill import study as sm

DIST = {"a": CategoricalDistribution(list(range(50)))}


def _study(tmp_path, name="b"):
    return sm.open_study(f"sqlite:///{tmp_path / 'b.db'}", name, metrics=["acc"], higher_is_better=[True])


def _add(study, outcomes):
    """Finish one trial per outcome, in order, each with an arch of its own: 'ok', or an error type (FAIL
    with that error_type)."""
    for outcome in outcomes:
        arch = {"a": len(study.get_trials(deepcopy=False))}
        if outcome == "ok":
            trial = optuna.trial.create_trial(params=arch, distributions=DIST, value=1.0)
        else:
            trial = optuna.trial.create_trial(params=arch, distributions=DIST, state=TrialState.FAIL,
                                              user_attrs={"error_type": outcome, "error": f"{outcome} in {arch}"})
        study.add_trial(trial)


def _verdict(study, k=3):
    return breaker.verdict(study.get_trials(deepcopy=False), k, int(study.user_attrs.get(breaker.SINCE_ATTR) or 0))


@pytest.mark.parametrize("outcomes, trips", [
    (["ValueError", "RuntimeError", "KeyError"], "the first 3 trials all failed"),
    (["ValueError", "RuntimeError"], None),  # fewer than K
    (["ok", "ValueError", "RuntimeError", "KeyError"], None),  # mixed types after a success
    (["ok", "RuntimeError", "RuntimeError", "RuntimeError"], "3 trials in a row failed with RuntimeError"),
    (["ok", "RuntimeError", "RuntimeError", "ok", "RuntimeError"], None),  # the streak was broken
    # failures that say nothing about the setup are not counted
    (["WorkerLost", "Interrupted", "InvalidArchitecture", "ValueError", "ValueError"], None),
    (["ok", "InvalidArchitecture", "InvalidArchitecture", "InvalidArchitecture"], None),
])
def test_verdict(tmp_path, outcomes, trips):
    study = _study(tmp_path)
    _add(study, outcomes)
    reason = _verdict(study)
    if trips is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(trips)


def test_k_is_the_configured_count_and_a_new_run_forgets_the_old_failures(tmp_path):
    study = _study(tmp_path)
    _add(study, ["ok", "OSError", "OSError"])
    assert _verdict(study, k=3) is None and _verdict(study, k=2).startswith("2 trials in a row")
    assert breaker.check(study, 2, "w9") is not None
    assert breaker.stopped(study).startswith("2 trials in a row failed with OSError")
    assert study.user_attrs[breaker.STOPPED_ATTR]["worker"] == "w9"
    breaker.rearm(study)  # a new `run`: earlier failures no longer count
    assert breaker.stopped(study) is None and _verdict(study, k=2) is None
    _add(study, ["OSError"])
    assert _verdict(study, k=2) is None
    _add(study, ["OSError"])
    assert _verdict(study, k=2).startswith("the first 2 trials all failed")


FAILING_TASK = '''
import time

def make_task(config):
    def train(model):
        time.sleep(0.2)

    def evaluate(model):
        raise OSError("the results disk is full")

    return {"model_builder": dict, "train_func": train, "eval_func": evaluate}
'''


@pytest.mark.slow
def test_a_search_whose_trials_all_fail_stops_every_worker_after_k(tmp_path, monkeypatch):
    (tmp_path / "nd_failing_task.py").write_text(FAILING_TASK)
    run_dir = tmp_path / "run"
    data = task_config(run_dir, study_name="fails", max_trials=20, task="nd_failing_task:make_task",
                       space={"a": list(range(1, 9)), "b": list(range(1, 9))}, algorithm="random")
    data["auto_distillation"]["study"]["stop_after_failures"] = 3
    cfg = write_config(tmp_path / "cfg.yaml", data)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "nas_distill.cli", "run", cfg, "--workers", "2"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 3, (res.stdout[-3000:], res.stderr[-3000:])

    study = optuna.load_study(study_name="fails", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert not [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)]
    assert all(t.user_attrs["error_type"] == "OSError" for t in failed)
    # Stopped after K, not after the budget: K failures, plus at most the one trial the other worker
    # was running when the breaker tripped.
    assert 3 <= len(failed) <= 4, [t.number for t in failed]
    stopped = study.user_attrs[breaker.STOPPED_ATTR]["reason"]
    assert stopped.startswith("the first 3 trials all failed (OSError x3)") and "disk is full" in stopped
    # Both workers stopped because of it, and said so; the run's summary says it too.
    out = res.stdout
    assert sum(1 for line in out.splitlines() if " ERROR worker done:" in line and "circuit breaker" in line) == 2
    assert sum(1 for line in out.splitlines() if " WARNING trial " in line and " failed after " in line) == len(failed)
    assert "search stopped after" in out and "0 of 20 trials complete" in out and "(exit 3)" in out

    status = subprocess.run([sys.executable, "-m", "nas_distill.cli", "status", cfg, "--json"],
                            capture_output=True, text=True, timeout=120, env=env)
    data = json.loads(status.stdout)
    assert data["stopped"] == stopped and data["budget_met"] is False and data["complete"] == 0
    text = subprocess.run([sys.executable, "-m", "nas_distill.cli", "status", cfg], capture_output=True,
                          text=True, timeout=120, env=env).stdout
    assert f"stopped by the circuit breaker: {stopped}" in " ".join(text.split())  # wrapped to the width
