"""The shared study: storage URLs, records, heartbeats / stale trials / retries, the budget rule, and
tools we did not write (the optuna CLI, optuna-dashboard) reading what we wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from _support.common import free_port
from nas_distill import AutoDistillation, ConfigError
from nas_distill import study as sm

SPACE = {"a": [1, 2, 3], "b": [1, 2]}


def conf(run_dir, storage=None, name="s", max_trials=4, algorithm="grid", **study):
    st = {"run_dir": str(run_dir), "study_name": name, **study}
    if storage:
        st["storage"] = storage
    return {"auto_distillation": {"search": {"search_space": SPACE, "search_algorithm": algorithm,
                                             "metrics": ["acc", "latency"], "higher_is_better": [True, False],
                                             "max_trials": max_trials},
                                  "study": st}}


def run_search(run_dir, **kw):
    ad = AutoDistillation(lambda arch: dict(arch), conf(run_dir, **kw))
    ad.train_func = lambda m: None
    ad.eval_func = lambda m: {"acc": float(m["a"] + m["b"]), "latency": float(m["a"] * m["b"])}
    ad.search()
    return ad


# --------------------------------------------------------------------------------------- URLs
def test_mask_url_and_secrets():
    assert sm.mask_url("postgresql+psycopg://bob:s3cr3t@db:5432/x") == "postgresql+psycopg://bob:***@db:5432/x"
    assert sm.mask_url("sqlite:///a.db") == "sqlite:///a.db"
    assert sm.mask_url("postgresql://bob@db/x") == "postgresql://bob@db/x"
    data = {"study": {"storage": "mysql://u:p@h/d"}, "x": ["redis://:pw@h:1"]}
    assert "p@" not in json.dumps(sm.mask_secrets(data)) and "pw" not in json.dumps(sm.mask_secrets(data))


def test_resolve_storage_url(tmp_path):
    assert sm.resolve_storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'study.db'}"
    assert sm.resolve_storage_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert sm.resolve_storage_url(str(tmp_path / "j.log")) == f"journal:///{tmp_path / 'j.log'}"
    assert sm.resolve_storage_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"
    with pytest.raises(ConfigError, match="study.storage"):
        sm.resolve_storage_url("nonsense")


def test_default_storage_records_and_artifacts(tmp_path):
    ad = run_search(tmp_path / "run")
    assert (tmp_path / "run" / "study.db").exists()
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert study.metric_names == ["acc", "latency"]
    assert study.user_attrs["search_space"] == SPACE
    assert study.user_attrs["config"]["auto_distillation"]["search"]["max_trials"] == 4
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    for t in complete:
        assert set(t.params) == set(SPACE) and t.user_attrs["arch"] == t.params
        assert t.user_attrs["acc"] == t.values[0] and t.user_attrs["latency"] == t.values[1]
        assert {"build", "train", "eval", "total"} <= set(t.user_attrs["timings"])
        assert t.user_attrs["worker"]["pid"] == os.getpid()
    assert ad.find_best_model_archs()


def test_password_is_masked_in_stored_config(tmp_path):
    secret_url = "postgresql+psycopg://bob:hunter2@127.0.0.1:1/none"
    study = sm.open_study(f"sqlite:///{tmp_path / 's.db'}", "m", metrics=["acc"], higher_is_better=[True],
                          config={"study": {"storage": secret_url}})
    assert "hunter2" not in json.dumps(study.user_attrs)
    assert "***" in study.user_attrs["config"]["study"]["storage"]


def test_existing_study_with_other_directions_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    sm.open_study(url, "x", metrics=["acc", "latency"], higher_is_better=[True, False])
    with pytest.raises(ConfigError, match="directions"):
        sm.open_study(url, "x", metrics=["acc", "latency"], higher_is_better=[True, True])


def test_existing_study_with_another_search_space_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    space = {"hidden": [64, 128], "layers": [1, 2]}
    study = sm.open_study(url, "x", metrics=["acc"], higher_is_better=[True], search_space=space)
    trial = study.ask({"hidden": optuna.distributions.CategoricalDistribution([64, 128])})
    study.tell(trial, 1.0)
    # Same space (key order and tuple vs list do not matter): reopened.
    again = sm.open_study(url, "x", metrics=["acc"], higher_is_better=[True],
                          search_space={"layers": (1, 2), "hidden": [64, 128]})
    assert len(again.trials) == 1
    # A value inserted in front shifts every stored index: refused, naming the key, nothing asked.
    with pytest.raises(ConfigError) as err:
        sm.open_study(url, "x", metrics=["acc"], higher_is_better=[True],
                      search_space={"hidden": [32, 64, 128], "layers": [1, 2]})
    assert str(err.value).startswith("auto_distillation.search.search_space: ")
    assert "'hidden' was [64, 128], now [32, 64, 128]" in str(err.value)
    with pytest.raises(ConfigError, match=r"keys added \['heads'\], removed \[\]"):
        sm.open_study(url, "x", metrics=["acc"], higher_is_better=[True],
                      search_space={**space, "heads": [1, 2]})
    assert len(optuna.load_study(study_name="x", storage=url).trials) == 1


def test_journal_storage_search(tmp_path):
    ad = run_search(tmp_path / "run", storage=str(tmp_path / "study.log"))
    assert isinstance(ad.study._storage, optuna.storages.JournalStorage)
    reread = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))))
    assert len([t for t in reread.trials if t.state == TrialState.COMPLETE]) == 4


# ----------------------------------------------------------------------------- stale / retries
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_stale_trial_is_failed_and_retried_once(tmp_path, kind):
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:///{tmp_path / 's.log'}"
    storage = sm.make_storage(url, heartbeat_interval=1, grace_period=1)
    study = sm.open_study(storage, "st", metrics=["acc"], higher_is_better=[True])
    dist = {"a": optuna.distributions.CategoricalDistribution([1, 2, 3])}
    trial = study.ask(dist)
    sm.Heartbeat(study, trial._trial_id).beat()  # one beat, then the "worker" dies
    assert sm.fail_stale_trials(study) == []  # still fresh
    time.sleep(2.5)
    other = sm.open_study(sm.make_storage(url, heartbeat_interval=1, grace_period=1), "st",
                          metrics=["acc"], higher_is_better=[True])
    assert sm.fail_stale_trials(other) == [trial.number]
    assert sm.fail_stale_trials(study) == []  # exactly once, whoever sweeps
    frozen = other.trials[trial.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["error_type"] == "WorkerLost"
    waiting = other.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == trial.params
    assert waiting[0].user_attrs["retry_of"] == trial.number
    # the next ask pops the retry: same arch
    popped = other.ask(dist)
    assert popped.params == trial.params


def test_heartbeat_keeps_a_long_trial_alive(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = sm.open_study(sm.make_storage(url, heartbeat_interval=1, grace_period=2), "hb",
                          metrics=["acc"], higher_is_better=[True])
    trial = study.ask({"a": optuna.distributions.CategoricalDistribution([1])})
    with sm.Heartbeat(study, trial._trial_id):
        time.sleep(3.5)
        assert sm.fail_stale_trials(study) == []
    study.tell(trial, [1.0])


# ----------------------------------------------------------------------------------- budget
def test_budget_rule_counts_complete_waiting_and_lower_running(tmp_path):
    study = sm.open_study(f"sqlite:///{tmp_path / 's.db'}", "b", metrics=["acc"], higher_is_better=[True])
    dist = {"a": optuna.distributions.CategoricalDistribution(list(range(20)))}
    done = study.ask(dist)
    study.tell(done, [1.0])                      # 0 COMPLETE
    dup = study.ask(dist)
    sm.set_user_attrs(study, dup._trial_id, {"duplicate_of": 0, "x": 1})
    study.tell(dup, [1.0])                       # 1 COMPLETE but answered from the store: not counted
    running = study.ask(dist)                    # 2 RUNNING
    failed = study.ask(dist)
    study.tell(failed, state=TrialState.FAIL)    # 3 FAIL: not counted
    mine = study.ask(dist)                       # 4 RUNNING (the trial being admitted)
    study.enqueue_trial({"a": 5})                # 5 WAITING: counted whatever its number
    later = study.ask(dist)                      # 5 popped -> RUNNING, then add another WAITING
    study.enqueue_trial({"a": 6})
    ahead, complete, _ = sm.budget_position(study, mine.number)
    assert complete == 1
    # ahead of #4: COMPLETE #0, RUNNING #2, WAITING (#6); not #1 (duplicate), #3 (FAIL), #5 (higher)
    assert ahead == 3
    assert later.number > mine.number and running.number < mine.number


# ------------------------------------------------------------------- tools we did not write
def test_optuna_cli_lists_the_pareto_trials(tmp_path):
    ad = run_search(tmp_path / "run", max_trials=6)
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    optuna_cli = os.path.join(os.path.dirname(sys.executable), "optuna")
    res = subprocess.run([optuna_cli, "best-trials", "--storage", url, "--study-name", "s", "-f", "json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    expected = {t.number for t in ad.study.best_trials}
    assert {row["number"] for row in listed} == expected
    assert expected == {n for n in expected}  # non-empty front
    assert expected


@pytest.mark.slow
def test_optuna_dashboard_lists_the_study_with_metric_names(tmp_path):
    run_search(tmp_path / "run")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nas_distill.cli", "dashboard", "--run-dir",
                             str(tmp_path / "run"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        body = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stderr.read()) from None
                time.sleep(0.3)
        assert body is not None, "the dashboard never answered"
        studies = body["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "s"]
        assert summary["directions"] == ["maximize", "minimize"]
        # the study's objective names, as optuna-dashboard serves them to its UI
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}",
                                    timeout=10) as r:
            detail = json.loads(r.read())
        assert detail["objective_names"] == ["acc", "latency"]
        detail = detail["objective_names"]
        assert detail == ["acc", "latency"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _attrs_roundtrip(url: str, name: str) -> None:
    from optuna.exceptions import UpdateFinishedTrialError

    study = optuna.create_study(storage=sm.make_storage(url), study_name=name)
    trial = study.ask()
    with sm.Heartbeat(study, trial._trial_id, attrs={"arch": {"a": 1}, "worker": {"pid": 3}}):
        pass
    # one batched upsert: new keys are inserted, a key written by the first beat is replaced
    sm.set_user_attrs(study, trial._trial_id, {"worker": {"pid": 4}, "acc": 0.5, "timings": {"x": [1, 2]},
                                               "note": "text"})
    assert study._storage.get_trial(trial._trial_id).user_attrs == {
        "arch": {"a": 1}, "worker": {"pid": 4}, "acc": 0.5, "timings": {"x": [1, 2]}, "note": "text"}
    study.tell(trial, 1.0)
    with pytest.raises(UpdateFinishedTrialError):  # as Optuna's own set_trial_user_attr
        sm.set_user_attrs(study, trial._trial_id, {"a": 1, "b": 2})
    with pytest.raises(KeyError):
        sm.set_user_attrs(study, 10**9, {"a": 1, "b": 2})


def test_batched_user_attrs_sqlite(tmp_path):
    _attrs_roundtrip(f"sqlite:///{tmp_path / 'study.db'}", "attrs")


@pytest.mark.postgres
def test_batched_user_attrs_postgres(postgres_url, fresh_pg_study_name):
    _attrs_roundtrip(postgres_url, fresh_pg_study_name)
