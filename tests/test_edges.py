"""Edges a new user meets: YAML exponent numbers, a storage folder that does not exist, the dashboard on a
missing study or a busy port, ``--study-name``, and a launcher killed outright."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from _support.common import task_config, write_config

PY = sys.executable


def cli(*args, env=None, timeout=120):
    return subprocess.run([PY, "-m", "nas_distill.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    from nas_distill.config import AutoDistillationConfig
    from nas_distill.workers import read_config_file

    path = tmp_path / "cfg.yaml"
    path.write_text(
        "auto_distillation:\n"
        "  search:\n"
        "    search_space: {lr: [1e-3, 3E-4, 2.5e+2], name: ['1e5', small]}\n"
        "  flash_distillation:\n"
        "    learning_rate: 3e-3\n"
        "    weight_decay: 1e-5\n"
        "  study: {heartbeat_interval: 2e0}\n"
    )
    cfg = AutoDistillationConfig(str(path))
    # Python's own float parsing is the reference; a quoted value stays the string it was.
    assert cfg.flash.learning_rate == float("3e-3") and cfg.flash.weight_decay == float("1e-5")
    assert cfg.search_space["lr"] == [float("1e-3"), float("3e-4"), float("2.5e2")]
    assert cfg.search_space["name"] == ["1e5", "small"]
    assert cfg.study.heartbeat_interval == 2.0
    assert read_config_file(path)["auto_distillation"]["flash_distillation"]["learning_rate"] == 0.003


def test_storage_in_a_missing_folder_is_a_config_error(tmp_path, task_module):
    missing = tmp_path / "no-such-folder"
    run_dir = tmp_path / "run"
    for storage in (f"sqlite:///{missing / 'study.db'}", f"journal:///{missing / 'study.log'}"):
        cfg = write_config(tmp_path / "cfg.yaml", task_config(run_dir, storage=storage, max_trials=1))
        res = cli("run", cfg)
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip().splitlines() == [res.stderr.strip()]
        assert "config error: study.storage:" in res.stderr and str(missing) in res.stderr
        assert not missing.exists() and not run_dir.exists()


@pytest.fixture
def finished_study(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    study = optuna.create_study(study_name="edges", storage=f"sqlite:///{run_dir / 'study.db'}",
                                directions=["maximize"])
    study.set_metric_names(["acc"])
    dist = {"h": optuna.distributions.CategoricalDistribution([1, 2])}
    for h in (1, 2):
        study.add_trial(optuna.trial.create_trial(params={"h": h}, distributions=dist, values=[h / 10]))
    return run_dir


@pytest.mark.slow
def test_dashboard_on_a_missing_study_says_so_before_any_banner(finished_study):
    res = cli("dashboard", "--run-dir", finished_study, "--study-name", "nope", "--port", "1")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == res.stderr.strip().splitlines()[0]
    assert "no study 'nope'" in res.stderr and "edges" in res.stderr  # names the studies that exist


@pytest.mark.slow
def test_dashboard_on_a_busy_port_suggests_another(finished_study):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli("dashboard", "--run-dir", finished_study, "--study", "edges", "--port", port)
    assert res.returncode == 2 and res.stdout == "", res.stdout
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert f"port {port}" in res.stderr and "busy" in res.stderr
    suggested = int(res.stderr.rsplit("--port", 1)[1].split()[0])
    with socket.socket() as probe:  # the suggested port is really free
        probe.bind(("127.0.0.1", suggested))


@pytest.mark.slow
def test_dashboard_wait_serves_once_the_study_exists(finished_study):
    from _support.common import free_port, get_json

    port = free_port()
    dashboard = subprocess.Popen([PY, "-m", "nas_distill.cli", "dashboard", "--run-dir", finished_study,
                                  "--study", "later", "--port", str(port), "--wait"], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert dashboard.stdout.readline().startswith("waiting for study 'later' to be created")
        optuna.create_study(study_name="later", storage=f"sqlite:///{finished_study / 'study.db'}")
        assert dashboard.stdout.readline().startswith(f"optuna-dashboard on http://127.0.0.1:{port}/")
        deadline = time.time() + 60
        while True:
            try:
                names = [s["study_name"] for s in get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]]
                break
            except OSError:
                assert time.time() < deadline and dashboard.poll() is None
                time.sleep(0.3)
        assert "later" in names
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def test_study_name_is_an_alias_of_study(finished_study):
    by_alias = cli("status", "--run-dir", finished_study, "--study-name", "edges")
    by_flag = cli("status", "--run-dir", finished_study, "--study", "edges")
    assert by_alias.returncode == 0, by_alias.stderr
    assert by_alias.stdout == by_flag.stdout and "edges" in by_alias.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of this test would still answer; these workers are not our children.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigkill_of_the_launcher_stops_its_workers(tmp_path, task_module):
    run_dir = tmp_path / "run"
    url, name = f"sqlite:///{run_dir / 'study.db'}", "orphans"
    cfg = write_config(tmp_path / "cfg.yaml", task_config(run_dir, study_name=name, max_trials=8))
    env = dict(os.environ, ND_TEST_TRAIN_SECONDS="60")
    launcher = subprocess.Popen([PY, "-m", "nas_distill.cli", "run", cfg, "--workers", "2"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids: set[int] = set()
    try:
        deadline = time.time() + 90
        while len(pids) < 2 and time.time() < deadline:
            time.sleep(0.2)
            try:
                study = optuna.load_study(study_name=name, storage=url)
            except Exception:  # noqa: BLE001 - not created yet
                continue
            pids = {t.user_attrs["worker"]["pid"] for t in study.get_trials(states=(TrialState.RUNNING,))
                    if "worker" in t.user_attrs}
        assert len(pids) == 2, "the two workers never ran a trial"
        launcher.kill()
        launcher.wait(timeout=10)
        deadline = time.time() + 30
        while any(_pid_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_pid_alive(p) for p in pids), "workers outlived their killed launcher"
    finally:
        for pid in pids:
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    study = optuna.load_study(study_name=name, storage=url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    stopped = [t for t in study.trials if t.user_attrs.get("error_type") == "Interrupted"]
    assert len(stopped) == 2 and all("SIGTERM" in t.user_attrs["error"] for t in stopped)
