"""Storage faults (issue #7, item 2): a PostgreSQL outage in the middle of a search, 8 workers on SQLite.

* Outage: 3 worker processes on a PostgreSQL server of the test's own (``own_postgres``); once some trials
  are COMPLETE the server is stopped (``pg_ctl stop -m fast``: every connection is cut), kept down 20 s,
  started again on the same port and data. The workers wait and retry (one warning line per worker, one
  line when the server is back, no traceback storm) and finish: exactly ``max_trials`` COMPLETE, every
  trial recorded before the outage unchanged, every worker exit 0.
* SQLite, 8 worker processes, 40 quick trials: no "database is locked" failure anywhere.
* The sweep of orphans (a RUNNING trial nobody runs, as a retried ``create_new_trial`` may leave) and the
  classification of real driver errors, in-process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from _support.common import free_port, task_config, write_config
from nas_distill import study as sm
from nas_distill.store import classify as classification
from nas_distill.store import retry as storage_retry
from nas_distill.store import stale

OUTAGE_S = 20


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas_distill.cli", *args]


def _complete(url: str, name: str) -> dict[int, tuple]:
    study = optuna.load_study(study_name=name, storage=url)
    return {t.number: (t.values, t.params, t.user_attrs) for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE}


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_outage_mid_search_workers_wait_and_finish(tmp_path, task_module, own_postgres):
    url = own_postgres.create_database("outage")
    name, max_trials, workers = "outage", 30, 3
    space = {"a": list(range(1, 9)), "b": list(range(1, 9))}
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", storage=url, study_name=name,
                                                          max_trials=max_trials, space=space,
                                                          heartbeat_interval=1, grace_period=3))
    env = dict(os.environ, ND_TEST_TRAIN_SECONDS="0.3")
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        # Log lines go to stdout (plain lines off a terminal), errors to stderr: both into the file.
        proc = subprocess.Popen(_cli("run", cfg, "--workers", str(workers)), env=env, stdout=err,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        before: dict[int, tuple] = {}
        while len(before) < 6:
            assert time.monotonic() < deadline and proc.poll() is None, err_path.read_text()[-3000:]
            time.sleep(0.1)
            try:
                before = _complete(url, name)
            except KeyError:  # the study is not created yet
                continue
        own_postgres.stop("fast")
        stopped = time.monotonic()
        time.sleep(OUTAGE_S)
        own_postgres.start()
        down_for = time.monotonic() - stopped
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err_path.read_text()
    assert proc.returncode == 0, log[-4000:]
    print(f"outage {down_for:.1f} s; COMPLETE before it: {len(before)}")

    after = _complete(url, name)
    assert len(after) == max_trials
    assert len({json.dumps(p, sort_keys=True) for _, p, _ in after.values()}) == max_trials
    for number, record in before.items():  # nothing recorded before the outage is lost or altered
        assert after[number] == record
    study = optuna.load_study(study_name=name, storage=url)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if t.user_attrs.get("error_type") not in ("Discarded",)]
    # No trial failed because of the outage (no storage error recorded as a trial failure).
    assert not [t for t in failed if t.user_attrs.get("error_type") != "WorkerLost"], \
        [(t.number, t.user_attrs.get("error_type"), t.user_attrs.get("error")) for t in failed]

    # One clear line per worker that saw the outage, one when the storage answered again; no storm.
    down = [line for line in log.splitlines() if "storage unreachable (" in line]
    back = [line for line in log.splitlines() if "storage reachable again (" in line]
    print(f"warning lines: {len(down)} unreachable, {len(back)} back; "
          f"tracebacks: {log.count('Traceback')}; WorkerLost: {len(failed)}")
    assert 1 <= len(down) <= workers, down
    assert len(back) == len(down), back
    assert all(f"127.0.0.1:{own_postgres.port}" in line and "retrying in" in line for line in down)
    assert log.count("Traceback") <= 1, log[-4000:]


@pytest.mark.serial
@pytest.mark.slow
def test_sqlite_eight_workers_no_database_is_locked(tmp_path, task_module):
    run_dir = tmp_path / "run"
    space = {"a": list(range(1, 9)), "b": list(range(1, 9))}
    cfg = write_config(tmp_path / "cfg.yaml", task_config(run_dir, study_name="eight", max_trials=40, space=space))
    env = dict(os.environ, ND_TEST_TRAIN_SECONDS="0.05")
    res = subprocess.run(_cli("run", cfg, "--workers", "8"), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "database is locked" not in res.stderr
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    study = optuna.load_study(study_name="eight", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 40
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 40
    assert len({t.user_attrs["worker"]["pid"] for t in complete}) >= 4
    locked = [t.number for t in trials if "locked" in str(t.user_attrs.get("error", ""))]
    assert locked == []
    failed = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("error_type") != "Discarded"]
    assert failed == []


# ------------------------------------------------------------------------------------ in-process
def test_orphan_running_trial_is_swept_and_not_retried(tmp_path, monkeypatch):
    """A RUNNING trial with no params and no heartbeat (what a retried ``create_new_trial`` whose first
    commit had landed leaves) is failed by the sweep once ORPHAN_AGE_S old; a beating trial is not."""
    monkeypatch.setattr(stale, "ORPHAN_AGE_S", 1.5)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = sm.open_study(sm.make_storage(url, heartbeat_interval=1, grace_period=1), "orph",
                          metrics=["acc"], higher_is_better=[True])
    assert storage_retry.policy_of(study._storage) is not None
    orphan_id = study._storage.create_new_trial(study._study_id)
    orphan = study._storage.get_trial(orphan_id)
    live = study.ask({"a": optuna.distributions.CategoricalDistribution([1, 2])})
    with sm.Heartbeat(study, live._trial_id):
        assert sm.fail_stale_trials(study) == []  # young: maybe still being asked
        ahead, _, _ = sm.budget_position(study, live.number)
        assert ahead == 1  # while RUNNING it holds a slot...
        time.sleep(2.2)
        assert sm.fail_stale_trials(study) == [orphan.number]  # ...until the sweep fails it
        ahead, _, _ = sm.budget_position(study, live.number)
        assert ahead == 0
    frozen = study._storage.get_trial(orphan_id)
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["error_type"] == "WorkerLost"
    assert study._storage.get_trial(live._trial_id).state == TrialState.RUNNING
    assert not study.get_trials(states=(TrialState.WAITING,))  # no params: nothing to retry


def test_connection_errors_are_told_from_request_errors(tmp_path):
    """classify() on errors raised by the real drivers: unreachable server, locked SQLite, bad SQL."""
    import sqlalchemy
    import sqlalchemy.exc

    def error_of(fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            return exc
        raise AssertionError("no error")

    port = free_port()  # nothing listens there
    refused = error_of(lambda: sqlalchemy.create_engine(
        f"postgresql+psycopg://nobody@127.0.0.1:{port}/x").connect())
    assert classification.classify(refused) == classification.UNREACHABLE

    path = tmp_path / "lock.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    holder.execute("INSERT INTO t VALUES (1)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with engine.connect() as conn:
        locked = error_of(lambda: conn.execute(sqlalchemy.text("SELECT * FROM t")).all())
    holder.execute("ROLLBACK")
    assert "locked" in str(locked)
    assert classification.classify(locked) == classification.BUSY
    with engine.begin() as conn:
        duplicate = error_of(lambda: conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)")))
    assert isinstance(duplicate, sqlalchemy.exc.IntegrityError)
    assert classification.classify(duplicate) is None
    with engine.connect() as conn:
        missing = error_of(lambda: conn.execute(sqlalchemy.text("SELECT * FROM nope")))
    assert classification.classify(missing) is None  # an SQLite OperationalError that no wait will fix
    # Optuna wraps SQLAlchemy errors raised inside its sessions: the cause decides.
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = refused
    assert classification.classify(wrapped) == classification.UNREACHABLE
    assert classification.classify(ValueError("x")) is None


def test_retry_waits_out_a_real_outage_with_one_warning(own_postgres, caplog):
    """A read issued while the server is down returns once it is back; one warning, one 'back' line."""
    import threading

    url = own_postgres.create_database("direct")
    storage = sm.make_storage(url, heartbeat_interval=1, grace_period=2)
    study = sm.open_study(storage, "direct", metrics=["acc"], higher_is_better=[True])
    study.ask({"a": optuna.distributions.CategoricalDistribution([1])})
    own_postgres.stop("fast")
    restart = threading.Timer(3.0, own_postgres.start)
    restart.start()
    started = time.monotonic()
    with caplog.at_level("DEBUG", logger="nas_distill.store.retry"):
        trials = study._storage.get_all_trials(study._study_id, states=(TrialState.RUNNING,))
    restart.join()
    assert time.monotonic() - started >= 2.5
    assert len(trials) == 1
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert warnings[0].getMessage().startswith(f"storage unreachable (postgresql+psycopg://nasdistill@127.0.0.1:"
                                               f"{own_postgres.port}/direct): ")
    assert "retrying in" in warnings[0].getMessage() and "(attempt 1)" in warnings[0].getMessage()
    assert warnings[1].getMessage().startswith("storage reachable again")
    assert not any(r.exc_info for r in caplog.records)
    assert storage_retry.policy_of(study._storage).recovered_within(5)
