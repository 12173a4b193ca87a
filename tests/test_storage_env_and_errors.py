"""Where the study lives and what a storage failure says.

* ``$NAS_DISTILL_STORAGE`` is the storage of every command, ``run`` included: the run's trials land
  there (not in the run folder's default SQLite file), and ``status`` reads them back.
* A storage failure names its cause (a read-only SQLite database), not Optuna's generic "invalid data in
  the commit, e.g. exceeding max length".
* An in-memory SQLite study is refused for command-line searches; commands that only read create no
  journal file and no tables; ``status`` tells a RUNNING trial whose worker died from a live one.
"""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from _support.common import task_config, write_config


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nas_distill.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=180, env=env or dict(os.environ))


@pytest.mark.slow
def test_run_and_status_use_the_storage_from_the_environment(tmp_path, task_module):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", task_config(run_dir, study_name="envs", max_trials=3))
    sqlite = tmp_path / "elsewhere.db"
    env = dict(os.environ, NAS_DISTILL_STORAGE=f"sqlite:///{sqlite}")
    res = cli("run", cfg, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (run_dir / "study.db").exists()  # not the config's default storage
    study = optuna.load_study(study_name="envs", storage=f"sqlite:///{sqlite}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    status = cli("status", cfg, env=env)
    assert status.returncode == 0, status.stderr
    assert "3" in status.stdout and "envs" in status.stdout


@pytest.mark.slow
def test_read_only_sqlite_error_names_the_cause(tmp_path):
    """SQLite opened read-only (``mode=ro``: what a file without write permission gives, even to root)."""
    from nas_distill.store.classify import storage_error_text

    path = tmp_path / "s.db"
    optuna.create_study(study_name="ro", storage=f"sqlite:///{path}")
    storage = optuna.storages.RDBStorage(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(optuna.exceptions.StorageInternalError) as info:
        storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "other")
    assert "invalid data in the commit" in str(info.value)  # what Optuna itself says
    text = storage_error_text(info.value)
    assert text == "storage error: attempt to write a readonly database"
    assert storage_error_text(ValueError("x")) is None
    # The CLI prints that line: a read-only store seen through the product's own command.
    res = subprocess.run([sys.executable, "-c", (
        "import sys, optuna\n"
        "from nas_distill import cli\n"
        "def fail(args):\n"
        f"    optuna.storages.RDBStorage('sqlite:///file:{path}?mode=ro&uri=true').create_new_study("
        "[optuna.study.StudyDirection.MINIMIZE], 'x')\n"
        "cli.COMMANDS['status'] = fail\n"
        "sys.exit(cli.main(['status']))\n")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip() == "nas-distill: error: storage error: attempt to write a readonly database"


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_in_memory_sqlite_is_refused_for_command_line_searches(tmp_path, task_module, url):
    """Each worker process would get a private, empty study, and nothing would be saved."""
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", storage=url, max_trials=2))
    for args in (["run", cfg, "--workers", "2"], ["worker", cfg]):
        res = cli(*args)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("nas-distill: config error: study.storage: ") and "private" in res.stderr


@pytest.mark.slow
def test_read_only_commands_create_no_journal_file_and_no_tables(tmp_path):
    journal = tmp_path / "missing.log"
    res = cli("status", "--storage", f"journal:///{journal}")
    assert res.returncode == 2 and "no journal file" in res.stderr, res.stderr
    assert not journal.exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    for command in ("status", "pareto", "report"):
        res = cli(command, "--storage", f"sqlite:///{empty}")
        assert res.returncode == 2 and "holds no study" in res.stderr, res.stderr
    import sqlite3

    assert sqlite3.connect(empty).execute("SELECT name FROM sqlite_master").fetchall() == []


@pytest.mark.slow
def test_status_tells_a_dead_running_trial_from_a_live_one(tmp_path):
    """Two RUNNING trials: one beating, one whose worker died (no beat for longer than the grace period
    recorded in the study's config). Nobody has swept yet: status says which one is lost."""
    import time

    from nas_distill import study as sm
    from nas_distill.results import read_status, status_text

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = sm.open_study(sm.make_storage(url, heartbeat_interval=1, grace_period=2), "dead",
                          metrics=["acc"], higher_is_better=[True],
                          config={"auto_distillation": {"study": {"heartbeat_interval": 1, "grace_period": 2}}})
    dist = {"a": optuna.distributions.CategoricalDistribution([1, 2])}
    dead, live = study.ask(dist), study.ask(dist)
    sm.Heartbeat(study, dead._trial_id).beat()
    with sm.Heartbeat(study, live._trial_id, interval=0.5):
        time.sleep(3)
        text = status_text(read_status(sm.load_study(url, "dead")))
    assert "running 2 (no heartbeat: worker lost 1)" in text, text
