"""The docker-compose topology without Docker: PostgreSQL + 3 workers + the dashboard on one study.

The worker and dashboard commands, and the storage URL, are built from docker-compose.yml itself
(``command`` lists and ``environment`` with the ``${VAR:-default}`` variables interpolated), so this test
breaks when the compose file drifts from the CLI. What Docker would provide is mapped by hand:

* the image's entry point (``nas-distill``) -> ``python -m nas_distill.cli``;
* the ``postgres`` service's address in the URL -> the throwaway server of conftest.py (trust auth, so
  the empty password interpolated from ``POSTGRES_PASSWORD`` is fine);
* the ``runs`` volume's mount point (``/runs``) -> a temporary folder;
* the dashboard's ``--host 0.0.0.0 --port 8080`` (needed inside a container) -> loopback and a free port;
* ``NAS_CONFIG`` -> a temporary config for the fast pure-Python test task instead of the digits demo.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from _support.common import REPO_ROOT, free_port, get_json, stop_server, task_config, wait_for_server_json, write_config

WORKERS = 3
MAX_TRIALS = 9
DASHBOARD_TIMEOUT_S = 30
WORKER_TIMEOUT_S = 45


def _compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def _interpolate(arg: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}`` / ``${VAR:-default}`` / ``${VAR:?message}`` against ``env``."""

    def value(m: re.Match) -> str:
        name, op, rest = m.group(1), m.group(2), m.group(3)
        if name in env and (env[name] or op != ":-"):
            return env[name]
        if op == ":-":
            return rest
        if op == ":?":
            raise AssertionError(f"docker-compose.yml requires {name}: {rest}")
        return ""

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", value, str(arg))


def _mount_point(service: dict, volume: str) -> str:
    for spec in service.get("volumes", []):
        source, _, target = str(spec).partition(":")
        if source == volume:
            return target.split(":")[0]
    raise AssertionError(f"the service mounts no {volume!r} volume: {service.get('volumes')}")


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.postgres
def test_compose_topology_on_postgres(tmp_path, task_module, postgres_url, fresh_pg_study_name):
    services = _compose()["services"]
    pg = urlsplit(postgres_url)
    env_vars = {
        "POSTGRES_USER": pg.username,
        "POSTGRES_PASSWORD": "",  # trust authentication on the throwaway server
        "POSTGRES_DB": pg.path.lstrip("/"),
        "NAS_STUDY": fresh_pg_study_name,
        "NAS_CONFIG": write_config(tmp_path / "topology.yaml",
                                   task_config(tmp_path / "unused-run-dir", study_name="unused",
                                               max_trials=MAX_TRIALS, task=f"{task_module}:make_task")),
    }
    runs = tmp_path / "runs"  # the 'runs' volume
    runs.mkdir()

    def command(name: str) -> tuple[list[str], dict[str, str]]:
        service = services[name]
        args = [_interpolate(a, env_vars) for a in service["command"]]
        mount = _mount_point(service, "runs")
        args = [str(runs) if a == mount else a for a in args]
        environment = {k: _interpolate(v, env_vars) for k, v in service["environment"].items()}
        url = environment["NAS_DISTILL_STORAGE"]
        # the 'postgres' service name resolves to the throwaway server
        assert "@postgres:5432/" in url, url
        environment["NAS_DISTILL_STORAGE"] = url.replace("@postgres:5432/", f"@{pg.hostname}:{pg.port}/")
        env = dict(os.environ, **environment, ND_TEST_TRAIN_SECONDS="0.3")
        env.pop("NAS_DISTILL_WORKER", None)
        return [sys.executable, "-m", "nas_distill.cli", *args], env

    worker_cmd, worker_env = command("worker")
    assert worker_cmd[3] == "worker"
    assert "--storage" not in worker_cmd  # the URL travels in the environment only
    study_name = worker_cmd[worker_cmd.index("--study") + 1]
    assert study_name == fresh_pg_study_name
    assert worker_cmd[worker_cmd.index("--run-dir") + 1] == str(runs)
    storage_url = worker_env["NAS_DISTILL_STORAGE"]

    dash_cmd, dash_env = command("dashboard")
    assert dash_cmd[3] == "dashboard"
    assert dash_cmd[dash_cmd.index("--study") + 1] == study_name
    assert dash_env["NAS_DISTILL_STORAGE"] == storage_url
    port = free_port()
    dash_cmd[dash_cmd.index("--host") + 1] = "127.0.0.1"  # 0.0.0.0 inside the container
    dash_cmd[dash_cmd.index("--port") + 1] = str(port)

    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(WORKERS)]
    dash_log = open(tmp_path / "dashboard.log", "w+")
    procs: list[subprocess.Popen] = []
    dashboard = None
    try:
        # `docker compose up --scale worker=3`: three identical containers, nothing prepares the study.
        for log in logs:
            procs.append(subprocess.Popen(worker_cmd, env=worker_env, cwd=tmp_path, stdout=log,
                                          stderr=subprocess.STDOUT))
        dashboard = subprocess.Popen(dash_cmd, env=dict(dash_env, PYTHONUNBUFFERED="1"), cwd=tmp_path,
                                     stdout=dash_log, stderr=subprocess.STDOUT)
        codes = []
        for proc, log in zip(procs, logs):
            try:
                codes.append(proc.wait(timeout=WORKER_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                log.seek(0)
                pytest.fail(f"a worker did not finish within {WORKER_TIMEOUT_S} s:\n{log.read()[-3000:]}")
        for code, log in zip(codes, logs):
            log.seek(0)
            assert code == 0, log.read()[-3000:]

        study = optuna.load_study(study_name=study_name, storage=storage_url)
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == MAX_TRIALS
        assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == MAX_TRIALS
        pids = {t.user_attrs["worker"]["pid"] for t in complete}
        assert len(pids) == WORKERS, f"trials by {sorted(pids)}: the work was not shared by {WORKERS} workers"
        assert pids <= {p.pid for p in procs}
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

        base = f"http://127.0.0.1:{port}"
        summaries = wait_for_server_json(dashboard, dash_log, base + "/api/studies",
                                         DASHBOARD_TIMEOUT_S)["study_summaries"]
        mine = [s for s in summaries if s["study_name"] == study_name]
        assert len(mine) == 1, [s["study_name"] for s in summaries]
        assert mine[0]["directions"] == ["maximize", "minimize"]
        detail = get_json(f"{base}/api/studies/{mine[0]['study_id']}")
        assert detail["objective_names"] == ["acc", "cost"]
        assert len(detail["trials"]) == len(trials)
        assert sum(1 for t in detail["trials"] if t["state"] == "Complete") == MAX_TRIALS
    finally:
        for proc in procs + ([dashboard] if dashboard is not None else []):
            if proc.poll() is None:
                stop_server(proc)
        for log in logs + [dash_log]:
            log.close()
    assert dashboard.returncode is not None  # stopped
