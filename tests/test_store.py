"""The storage handle (:mod:`nas_distill.store`): one object for the study, its storage, retries,
heartbeats and stale trials; the guard on Optuna's private names; the generated retrying proxy; the
dashboard on a journal study."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from _support.common import REPO_ROOT, free_port, get_json, wait_for_server_json
from nas_distill.store import open_study, store_of
from nas_distill.store import optuna_internals as internals
from nas_distill.store.heartbeat import HEARTBEAT_ATTR
from nas_distill.store.retry import RetryingStorage, StorageRetry, policy_of

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"a": optuna.distributions.CategoricalDistribution([1, 2, 3])}


def _open(url: str, name: str = "s", **kwargs):
    return open_study(url, name, metrics=["acc"], higher_is_better=[True], **kwargs)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_heartbeat_context_manager_beats_and_the_sweep_spares_it_until_it_stops(tmp_path, kind):
    """``with handle.heartbeat(trial)``: the first beat and the attrs land before the body runs, beats
    keep coming inside, and once the block is left (a dead worker) the sweep fails the trial after the
    grace period and enqueues its retry."""
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:///{tmp_path / 's.log'}"
    handle = _open(url, heartbeat_interval=0.25, grace_period=1.5)
    assert handle.study.study_name == "s" and (handle.retry is not None) == (kind == "sqlite")
    trial = handle.study.ask(DIST)
    with handle.heartbeat(trial, attrs={"arch": {"a": trial.params["a"]}}) as beat:
        frozen = handle.trial(internals.trial_id(trial))
        assert frozen.user_attrs["arch"] == {"a": trial.params["a"]}
        if kind == "journal":
            first = frozen.system_attrs[HEARTBEAT_ATTR]
            assert abs(first - time.time()) < 5
        time.sleep(2.0)  # past the grace period: only the beats inside keep the trial alive
        assert handle.fail_stale_trials() == []
        if kind == "journal":
            assert handle.trial(internals.trial_id(trial)).system_attrs[HEARTBEAT_ATTR] > first
    assert beat.interval == pytest.approx(0.25)
    time.sleep(2.0)
    assert handle.fail_stale_trials() == [trial.number]
    trials = handle.all_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["error_type"] == "WorkerLost"
    assert trials[1].params == trial.params and trials[1].user_attrs == {"retry_of": trial.number}


def test_store_of_a_study_is_the_same_handle_as_open_study_gives(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    handle = _open(url)
    again = store_of(handle.study)
    assert store_of(handle) is handle
    assert (again.storage, again.study_id, again.retry, again.rdb) == \
           (handle.storage, handle.study_id, handle.retry, handle.rdb)
    assert (handle.heartbeat_interval, handle.grace_period) == (10, 30)
    assert handle.study_id == handle.storage.get_study_id_from_name("s")  # the public way, one query more


def test_a_missing_private_name_is_an_error_naming_the_optuna_version():
    with pytest.raises(internals.OptunaInternalsError) as err:
        internals.resolve("optuna.storages._rdb.storage:_no_such_function")
    text = str(err.value)
    assert f"optuna {optuna.__version__} has no optuna.storages._rdb.storage._no_such_function" in text
    assert internals.TESTED_VERSIONS in text
    with pytest.raises(internals.OptunaInternalsError, match=r"optuna\.no_such_module"):
        internals.resolve("optuna.no_such_module")
    with pytest.raises(internals.OptunaInternalsError, match=rf"optuna {optuna.__version__} has no .*_study_id"):
        internals.study_id(object())
    assert internals.resolve("optuna.storages._rdb.storage:_create_scoped_session") is \
        internals.create_scoped_session


def test_the_retrying_proxy_forwards_every_storage_method():
    """Every public method of Optuna's BaseStorage is the proxy's own (derived, not inherited), so a
    backend's implementation runs; the class is concrete."""
    public = {name for name in dir(optuna.storages.BaseStorage) if not name.startswith("_")
              and callable(getattr(optuna.storages.BaseStorage, name))}
    assert public and public <= set(vars(RetryingStorage)) | {"set_trial_state_values", "record_heartbeat"}
    assert not RetryingStorage.__abstractmethods__
    assert internals.STALE_TRIAL_IDS in vars(RetryingStorage)


def test_the_proxy_retries_a_busy_call_and_reraises_other_errors(tmp_path):
    """A storage call that fails twice with SQLite's "database is locked" returns the third answer; a
    call that fails with an error about the request is raised at once, unretried."""
    import sqlite3

    import sqlalchemy.exc

    class Flaky:
        def __init__(self, failures):
            self.failures, self.calls = list(failures), 0

        def get_trial(self, trial_id):
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return ("trial", trial_id)

    locked = sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))
    backend = Flaky([locked, locked])
    proxy = RetryingStorage(backend, StorageRetry("test", max_seconds=30))
    assert proxy.get_trial(7) == ("trial", 7) and backend.calls == 3
    assert policy_of(proxy) is proxy._retry
    wrong = Flaky([sqlalchemy.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE"))])
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        RetryingStorage(wrong, StorageRetry("test", max_seconds=30)).get_trial(1)
    assert wrong.calls == 1
    gone = Flaky([locked] * 50)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        RetryingStorage(gone, StorageRetry("test", max_seconds=0.2)).get_trial(1)
    assert 2 <= gone.calls < 50  # gave up within its window


def test_dashboard_opener_opens_a_journal_url(tmp_path):
    from nas_distill.reporting.dashboard import open_storage

    url = f"journal:///{tmp_path / 'j.log'}"
    handle = _open(url, "journal-study")
    handle.study.tell(handle.study.ask(DIST), [0.5])
    storage = open_storage(url)
    assert optuna.get_all_study_names(storage) == ["journal-study"]
    assert [t.values for t in optuna.load_study(study_name="journal-study", storage=storage).trials] == [[0.5]]


@pytest.mark.slow
def test_dashboard_command_serves_a_journal_study(tmp_path):
    """``nas-distill dashboard --storage journal:///...``: the real optuna-dashboard server lists the
    study and serves each trial's values as written."""
    url = f"journal:///{tmp_path / 'study.log'}"
    handle = _open(url, "jstudy")
    rng = random.Random(0)
    written = {}
    for _ in range(4):
        trial = handle.study.ask(DIST)
        written[trial.number] = rng.random()
        handle.study.tell(trial, [written[trial.number]])
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas_distill.cli", "dashboard", "--storage", url, "--port", str(port),
         "--run-dir", str(tmp_path)],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server_json(proc, log, base + "/api/studies", 45)
        (summary,) = get_json(base + "/api/studies")["study_summaries"]
        assert summary["study_name"] == "jstudy"
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        served = {t["number"]: t["values"][0] for t in detail["trials"]}
        assert served == pytest.approx(written)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _open_at_barrier(url: str, barrier) -> None:
    barrier.wait(timeout=60)
    _open(url)  # an error here makes the exit code non-zero


def test_processes_opening_a_fresh_sqlite_file_together_all_get_the_study(tmp_path):
    """Each process runs Optuna's CREATE TABLE on the empty file; the losers of that race open again."""
    import multiprocessing as mp

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    processes = [ctx.Process(target=_open_at_barrier, args=(url, barrier)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in processes] == [0] * 4
    assert optuna.study.get_all_study_names(url) == ["s"]


def test_only_a_schema_race_is_retried_when_opening():
    import sqlalchemy.exc

    from nas_distill.store.open import _schema_race

    def error(cls, message):
        return cls("CREATE TABLE studies", {}, Exception(message))

    assert _schema_race(error(sqlalchemy.exc.OperationalError, "table studies already exists"))
    assert _schema_race(error(sqlalchemy.exc.IntegrityError, 'duplicate key value violates unique constraint'))
    assert not _schema_race(error(sqlalchemy.exc.OperationalError, "unable to open database file"))
    assert not _schema_race(OSError("table studies already exists"))
