"""A trial changes hands exactly once on every storage: one finisher, one claimer of a WAITING retry.

* 200 trials, each finished at the same moment by two processes (the owner's COMPLETE, a sweep's FAIL):
  exactly one of the two is told it won, and the trial holds the winner's state and values.
* 8 processes race for 3 WAITING retries with ``study.ask()`` (Optuna's own pop, what a worker does),
  20 rounds: each retry is claimed by exactly one process per round.

Each process opens the storage itself (:func:`nas_distill.store.make_storage`), as workers do; rounds are
started together on a ``multiprocessing.Barrier``.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from nas_distill import study as sm
from nas_distill.store import stale
from nas_distill.store.handle import store_of

CTX = multiprocessing.get_context("fork")
DIST = {"a": optuna.distributions.CategoricalDistribution([1, 2, 3])}


def _url(kind: str, tmp_path, postgres_url=None) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 's.db'}"
    if kind == "journal":
        return f"journal:///{tmp_path / 's.log'}"
    return postgres_url


def _open(url: str, name: str):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return sm.open_study(sm.make_storage(url, heartbeat_interval=5, grace_period=10), name,
                         metrics=["acc"], higher_is_better=[True])


# ------------------------------------------------------------------------------------ finishing
def _finisher(url, name, trial_ids, state_name, barrier, results):
    study = _open(url, name)
    storage, state = study._storage, TrialState[state_name]
    values = [1.0] if state == TrialState.COMPLETE else None
    won = []
    for trial_id in trial_ids:
        barrier.wait()
        try:
            if storage.set_trial_state_values(trial_id, state=state, values=values):
                won.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    results.put((state_name, won))


def _race_finishes(url: str, name: str, n: int) -> tuple[Counter, dict, dict]:
    study = _open(url, name)
    trial_ids = [study.ask(DIST)._trial_id for _ in range(n)]
    barrier, results = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_finisher, args=(url, name, trial_ids, s, barrier, results))
             for s in ("COMPLETE", "FAIL")]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    wins = Counter(t for won in outcome.values() for t in won)
    stored = {t._trial_id: t.state for t in _open(url, name).get_trials(deepcopy=False)}
    return wins, outcome, stored


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_processes_finishing_one_trial_exactly_one_wins(tmp_path, kind):
    n = 200
    wins, outcome, stored = _race_finishes(_url(kind, tmp_path), "finish", n)
    both = sum(1 for c in wins.values() if c > 1)
    print(f"{kind}: {n} concurrent finishes, {both} with two winners, "
          f"COMPLETE won {len(outcome['COMPLETE'])}, FAIL won {len(outcome['FAIL'])}")
    assert len(wins) == n and both == 0  # every trial: exactly one winner
    for state_name, won in outcome.items():
        assert all(stored[t] == TrialState[state_name] for t in won)  # the winner's state stayed


@pytest.mark.slow
@pytest.mark.postgres
def test_two_processes_finishing_one_trial_exactly_one_wins_postgres(postgres_url, fresh_pg_study_name):
    wins, outcome, stored = _race_finishes(postgres_url, fresh_pg_study_name, 50)
    assert len(wins) == 50 and max(wins.values()) == 1
    for state_name, won in outcome.items():
        assert all(stored[t] == TrialState[state_name] for t in won)


def test_sweep_losing_to_the_owner_leaves_no_trace(tmp_path):
    """The owner finished first: the sweep's FAIL loses and writes no WorkerLost reason on the trial."""
    study = _open(_url("sqlite", tmp_path), "trace")
    trial = study.ask(DIST)
    study.tell(trial, [1.0])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        sm.finish_trial(study, trial._trial_id, TrialState.FAIL, attrs={"error_type": "WorkerLost"})
    frozen = study.trials[trial.number]
    assert frozen.state == TrialState.COMPLETE and "error_type" not in frozen.user_attrs


# ------------------------------------------------------------------------------------ claiming
def _claimer(url, name, rounds, start, done, results):
    study = _open(url, name)
    claims = []
    for _ in range(rounds):
        start.wait()
        trial = study.ask(DIST)
        claims.append(trial._trial_id)
        done.wait()
    results.put(claims)


def _race_claims(url: str, name: str, workers: int, retries: int, rounds: int) -> list[Counter]:
    study = _open(url, name)
    start, done, results = CTX.Barrier(workers + 1), CTX.Barrier(workers + 1), CTX.Queue()
    procs = [CTX.Process(target=_claimer, args=(url, name, rounds, start, done, results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    waiting_ids = []
    for _ in range(rounds):
        before = {t._trial_id for t in study.get_trials(deepcopy=False)}
        for i in range(retries):
            study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params={"a": i + 1},
                                                      distributions=DIST))
        waiting_ids.append({t._trial_id for t in study.get_trials(deepcopy=False)} - before)
        start.wait()
        done.wait()
    claims = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    per_round = []
    for r, ids in enumerate(waiting_ids):
        taken = Counter(c[r] for c in claims if c[r] in ids)
        per_round.append(Counter({i: taken.get(i, 0) for i in ids}))
    return per_round


def _assert_each_retry_claimed_once(kind: str, per_round: list[Counter]) -> None:
    twice = sum(1 for counts in per_round for c in counts.values() if c > 1)
    never = sum(1 for counts in per_round for c in counts.values() if c == 0)
    print(f"{kind}: {len(per_round)} rounds, retries claimed twice or more: {twice}, never: {never}")
    assert twice == 0 and never == 0, per_round


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_eight_workers_racing_for_three_retries_claim_each_once(tmp_path, kind):
    per_round = _race_claims(_url(kind, tmp_path), "claim", workers=8, retries=3, rounds=20)
    _assert_each_retry_claimed_once(kind, per_round)


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.postgres
def test_eight_workers_racing_for_three_retries_claim_each_once_postgres(postgres_url, fresh_pg_study_name):
    per_round = _race_claims(postgres_url, fresh_pg_study_name, workers=8, retries=3, rounds=20)
    _assert_each_retry_claimed_once("postgresql", per_round)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_sweep_never_fails_a_trial_whose_owner_beat_after_its_read(tmp_path, kind, request):
    """A heartbeat late past the grace period (a long step, a paused process): the sweep reads the trial
    as stale, then the owner beats and finishes. The sweep's FAIL must lose, the owner's COMPLETE win."""
    import time

    if kind == "postgres":
        url, name = request.getfixturevalue("postgres_url"), request.getfixturevalue("fresh_pg_study_name")
    else:
        url, name = _url("sqlite", tmp_path), "late"
    study = sm.open_study(sm.make_storage(url, heartbeat_interval=1, grace_period=1), name, metrics=["acc"],
                          higher_is_better=[True])
    owner, dead = study.ask(DIST), study.ask(DIST)
    for trial in (owner, dead):
        sm.Heartbeat(study, trial._trial_id).beat()
    time.sleep(2.2)
    handle = store_of(study)
    beats = stale.stale_trial_beats(handle.storage, handle.study_id, 1.0)  # what a sweep reads: both late
    assert set(beats) == {owner._trial_id, dead._trial_id}
    sm.Heartbeat(study, owner._trial_id).beat()  # the owner was alive after all
    reason = {"error_type": "WorkerLost"}
    assert sm.finish_trial(study, owner._trial_id, TrialState.FAIL, attrs=reason,
                           last_beat=beats[owner._trial_id]) is False
    assert sm.finish_trial(study, dead._trial_id, TrialState.FAIL, attrs=reason,
                           last_beat=beats[dead._trial_id]) is True
    study.tell(owner, [1.0])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[owner.number].state == TrialState.COMPLETE and "error_type" not in trials[owner.number].user_attrs
    assert trials[dead.number].state == TrialState.FAIL and trials[dead.number].user_attrs["error_type"] == "WorkerLost"
