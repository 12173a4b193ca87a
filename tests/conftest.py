"""Shared test fixtures.

* Every test (and every subprocess a test starts) runs with the Hugging Face hubs offline and with the
  repository root on ``PYTHONPATH`` (so ``python -m nas_distill.cli`` works without an install).
* ``postgres_url``: a throwaway PostgreSQL 15 server for the whole session. ``initdb`` into a temporary
  folder, trust authentication (the server listens on 127.0.0.1 only; no password anywhere), started with
  ``pg_ctl`` as an unprivileged user because PostgreSQL refuses to run as root. Tests that use it are
  marked ``@pytest.mark.postgres``. When the binaries or the server are missing the tests are skipped,
  except under ``CI=true`` where that is a failure.
* ``free_port()``: a TCP port on 127.0.0.1 that nothing listens on right now.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers_common import REPO_ROOT, TASK_MODULE, free_port, task_config, write_config  # noqa: F401

# Offline for every test and every child process (set at import so collection-time imports see it too).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
_pp = os.environ.get("PYTHONPATH", "")
if str(REPO_ROOT) not in _pp.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([_pp] if _pp else []))

_PG_BIN_GLOBS = ["/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _find_pg_bin() -> str | None:
    explicit = os.environ.get("NAS_DISTILL_PG_BIN")
    candidates = [explicit] if explicit else []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    for pattern in _PG_BIN_GLOBS:
        candidates.extend(sorted(glob.glob(pattern), reverse=True))
    for folder in candidates:
        if folder and all(os.access(os.path.join(folder, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return folder
    return None


def _server_user() -> str | None:
    """The OS user that runs the server: ourselves unless we are root, then an unprivileged account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    # No unprivileged account at all: create a system user (idempotent thanks to the lookup above).
    subprocess.run(["useradd", "--system", "--no-create-home", "nasdistill-pg"], check=True)
    return "nasdistill-pg"


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    if user is None:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--"] + argv
    return ["su", "-s", "/bin/sh", user, "-c", " ".join(_shell_quote(a) for a in argv)]


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


@pytest.fixture(scope="session")
def postgres_url():
    """Start a throwaway PostgreSQL server; yield ``postgresql+psycopg://user@127.0.0.1:port/db``."""
    bindir = _find_pg_bin()
    if bindir is None:
        _unavailable("PostgreSQL binaries (initdb, pg_ctl) not found")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg (3) is not installed")

    user = _server_user()
    base = tempfile.mkdtemp(prefix="nas-distill-pg-")
    datadir = os.path.join(base, "data")
    sockdir = os.path.join(base, "sock")
    os.makedirs(sockdir)
    if user is not None:
        info = pwd.getpwnam(user)
        for path in (base, sockdir):
            os.chown(path, info.pw_uid, info.pw_gid)
        os.chmod(base, 0o700)
    db_user = "nasdistill"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    pg_ctl = os.path.join(bindir, "pg_ctl")
    started = False
    try:
        res = subprocess.run(
            _as_user(user, [os.path.join(bindir, "initdb"), "-D", datadir, "-U", db_user,
                            "--auth-local=trust", "--auth-host=trust", "-E", "UTF8", "--no-locale"]),
            capture_output=True, text=True, env=env, cwd=base,
        )
        if res.returncode != 0:
            _unavailable(f"initdb failed: {res.stderr.strip()[-500:]}")
        port = free_port()
        opts = f"-h 127.0.0.1 -p {port} -k {sockdir} -c max_connections=200 -c fsync=off"
        res = subprocess.run(
            _as_user(user, [pg_ctl, "-D", datadir, "-l", os.path.join(base, "server.log"), "-w", "-t",
                            "60", "-o", opts, "start"]),
            capture_output=True, text=True, env=env, cwd=base,
        )
        if res.returncode != 0:
            log = Path(base, "server.log")
            tail = log.read_text()[-500:] if log.exists() else ""
            _unavailable(f"pg_ctl start failed: {res.stderr.strip()[-300:]} {tail}")
        started = True
        import psycopg

        deadline = time.time() + 30
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={port} user={db_user} dbname=postgres",
                                     autocommit=True) as conn:
                    conn.execute("CREATE DATABASE nas_distill_test")
                break
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield f"postgresql+psycopg://{db_user}@127.0.0.1:{port}/nas_distill_test"
    finally:
        if started:
            subprocess.run(_as_user(user, [pg_ctl, "-D", datadir, "-m", "immediate", "-w", "stop"]),
                           capture_output=True, env=env, cwd=base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_pg_study_name(request) -> str:
    """A study name unique to the test, so tests sharing the server do not see each other's trials."""
    return "t-" + request.node.name.replace("[", "-").replace("]", "")[:60] + f"-{os.getpid()}-{time.time_ns()}"


# ------------------------------------------------------------------------------ a task for workers
@pytest.fixture
def task_module(tmp_path, monkeypatch):
    """Write the test task module to ``tmp_path/tasks`` and put it on PYTHONPATH (also for children)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "nd_test_task.py").write_text(TASK_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    return "nd_test_task"


