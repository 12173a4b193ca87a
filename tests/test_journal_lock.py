"""A journal lock left behind by a killed worker (inside the journal's critical section).

* Its holder was a process of this machine that no longer exists: the next write takes the lock over at
  once, instead of every worker waiting Optuna's 30 s.
* Its holder cannot be checked (another machine): the lock is broken after its grace period, and the
  stale sweep that waited it out does not fail the live trials whose heartbeats the stall held back.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from nas_distill import study as sm
from nas_distill.store import journal_lock

DIST = {"a": optuna.distributions.CategoricalDistribution([1, 2])}


def _open(path):
    return sm.open_study(sm.make_storage(f"journal:///{path}", heartbeat_interval=1, grace_period=2), "lock",
                         metrics=["acc"], higher_is_better=[True])


def test_a_dead_local_holder_is_taken_over_at_once(tmp_path):
    path = tmp_path / "j.log"
    study = _open(path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    lock_file = tmp_path / "j.log.lock"
    lock_file.write_text(f"{socket.gethostname()} {int(dead.stdout)}")
    started = time.monotonic()
    study.set_user_attr("after", "the stale lock")
    took = time.monotonic() - started
    print(f"write after a dead holder's lock: {took * 1000:.0f} ms")
    assert took < 1.0 and not lock_file.exists()
    assert _open(path).user_attrs["after"] == "the stale lock"


def test_a_stuck_lock_does_not_get_live_trials_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_lock, "GRACE_S", 3.0)
    path = tmp_path / "j.log"
    study = _open(path)
    trial = study.ask(DIST)
    sm.Heartbeat(study, trial._trial_id).beat()
    (tmp_path / "j.log.lock").write_text("another-host 12345")  # a holder nobody here can check
    started = time.monotonic()
    assert sm.fail_stale_trials(study) == []  # waited the stall out (3 s > grace 2 s): skipped
    assert time.monotonic() - started >= 3.0
    assert study.trials[trial.number].state == TrialState.RUNNING
    sm.Heartbeat(study, trial._trial_id).beat()  # the live worker beats again once the lock is free
    assert sm.fail_stale_trials(study) == []
    assert study.trials[trial.number].state == TrialState.RUNNING
