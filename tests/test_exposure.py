"""Exposure (issue #7, item 6): loopback by default, secrets from the environment, no password in logs,
outputs or study attrs.

* ``nas-distill dashboard`` started for real without ``--host``: its listening socket is 127.0.0.1 only,
  and every entry point that starts a server defaults to 127.0.0.1.
* docker-compose.yml takes the PostgreSQL password from the environment with no fallback value, and no
  file of the product (everything tracked or about to be, except tests/, whose fake credentials are the
  point of the masking tests) holds a literal password.
* A storage URL with a password never shows in log records, in the CLI's output (also with ``--debug``),
  in the files a run writes, nor in any study or trial attr: a short search runs on the throwaway
  PostgreSQL server (trust authentication accepts any password) with the password in the config file.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
import pytest
import yaml

from _support.common import (
    REPO_ROOT,
    free_port,
    listening_addresses,
    stop_server,
    task_config,
    wait_for_server_json,
    write_config,
)
from nas_distill.errors import ConfigError

SECRET = "s3cret-" + "x9"  # spelled in two parts so the repository scan below never sees a literal
UNREACHABLE = f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db"
STARTUP_TIMEOUT_S = 45


def cli(*args, env=None, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "nas_distill.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env or dict(os.environ), cwd=cwd)


# ---------------------------------------------------------------------------------------- loopback
def test_every_server_entry_point_defaults_to_loopback():
    from nas_distill.cli import build_parser
    from nas_distill.reporting.dashboard import launch_dashboard

    assert inspect.signature(launch_dashboard).parameters["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["dashboard", "--storage", "sqlite:///x.db"])
    assert args.host == "127.0.0.1"


@pytest.mark.slow
def test_cli_dashboard_listens_on_loopback_only(tmp_path):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read the listening address from")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=url, study_name="exposed", directions=["maximize"])
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas_distill.cli", "dashboard", "--storage", url, "--study", "exposed",
         "--run-dir", str(tmp_path), "--port", str(port)],  # no --host: the default is what is tested
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        studies = wait_for_server_json(proc, log, f"http://127.0.0.1:{port}/api/studies", STARTUP_TIMEOUT_S)
        assert [s["study_name"] for s in studies["study_summaries"]] == ["exposed"]
        assert listening_addresses(port) == ["127.0.0.1"]
    finally:
        stop_server(proc)
        log.close()


# ----------------------------------------------------------------------------------------- secrets
def test_compose_takes_the_password_from_the_environment_without_a_fallback():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if "PASSWORD" in key:  # required from the environment: no ':-default' a deployment could keep
                assert re.fullmatch(r"\$\{POSTGRES_PASSWORD(:\?[^}]*)?\}", str(value)), (name, key, value)
            for credentials in re.findall(r"://([^@\s]+)@", str(value)):
                assert credentials.rsplit(":", 1)[-1] == "${POSTGRES_PASSWORD}", (name, key, value)


# Credentials in a URL, and password-like assignments, whose value is a literal (not ${VAR}, $VAR, a
# {placeholder}, *** or empty).
_URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.\-]*://(?P<creds>[^/\s@'\"]+)@", re.I)  # user:password
_ASSIGNMENT = re.compile(r"(?<![a-z])(?:password|passwd|secret|api[_-]?key|access[_-]?token)\w*\s*[:=]\s*['\"]?"
                         r"(?P<pw>[^\s'\",)]+)", re.I)
_PLACEHOLDER = re.compile(r"(\$\{?[A-Z_]+.*|\{.*\}|\*+|<[^>]*>|secret|password)$", re.I)


def _literal_passwords(line: str) -> list[str]:
    values = [m.group("creds").rsplit(":", 1)[1] for m in _URL_CREDENTIALS.finditer(line) if ":" in m.group("creds")]
    values += [m.group("pw") for m in _ASSIGNMENT.finditer(line)]
    return [v for v in values if v and not _PLACEHOLDER.match(v) and not v.startswith(("re.", "os.", "("))]


def _product_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO_ROOT / f for f in listed if not f.startswith("tests/") and (REPO_ROOT / f).is_file()]


def test_no_literal_password_in_the_repository():
    found = []
    files = _product_files()
    assert any(f.name == "docker-compose.yml" for f in files) and any(f.name == "study.py" for f in files)
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # images
        for n, line in enumerate(text.splitlines(), 1):
            if _literal_passwords(line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()[:120]}")
    assert found == []


def test_the_password_scan_catches_literals():
    assert _literal_passwords("url = 'postgresql+psycopg://nas:hunter2@db:5432/x'") == ["hunter2"]
    assert _literal_passwords("POSTGRES_PASSWORD=changeme") == ["changeme"]
    assert _literal_passwords("  password: 'p4ss'") == ["p4ss"]
    assert _literal_passwords("postgresql://${POSTGRES_USER:-nas}:${POSTGRES_PASSWORD}@postgres/db") == []
    assert _literal_passwords("POSTGRES_PASSWORD=") == [] and _literal_passwords("u:***@host") == []


# ------------------------------------------------------------------------------------------- logs
def test_unreachable_storage_password_stays_out_of_errors_and_logs(caplog, tmp_path):
    from nas_distill.study import make_storage, open_study

    caplog.set_level(logging.DEBUG)  # every logger, every level
    for attempt in (lambda: make_storage(UNREACHABLE),
                    lambda: open_study(UNREACHABLE, "s", metrics=["acc"], higher_is_better=[True],
                                       config={"auto_distillation": {"study": {"storage": UNREACHABLE}}})):
        with pytest.raises(ConfigError) as info:
            attempt()
        assert str(info.value).startswith("study.storage: cannot open postgresql+psycopg://u:***@127.0.0.1:1/db")
        text = str(info.value) + "".join(str(e) for e in _chain(info.value))
        assert SECRET not in text
    assert SECRET not in caplog.text


QUERY_URL = f"postgresql+psycopg://u@127.0.0.1:1/db?connect_timeout=2&password={SECRET}"


def test_query_and_environment_passwords_are_masked_in_errors_logs_and_the_stored_study(
        caplog, tmp_path, monkeypatch):
    """``?password=`` in the URL, and ``$PGPASSWORD``: out of the "cannot open" error, the outage log
    line, and the config stored in the study."""
    import sqlalchemy.exc

    from nas_distill.store import retry as storage_retry
    from nas_distill.study import make_storage, mask_url, open_study

    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as info:
        make_storage(QUERY_URL)
    assert "password=***" in str(info.value) and SECRET not in str(info.value)
    retry = storage_retry.StorageRetry(mask_url(QUERY_URL), max_seconds=0)
    driver_error = sqlalchemy.exc.OperationalError(f"connect to {QUERY_URL}", {}, Exception(f"refused {QUERY_URL}"))
    retry.note_failure(driver_error, 1.0, 1)
    assert "password=***" in caplog.text
    monkeypatch.setenv("PGPASSWORD", SECRET + "-env")
    retry.note_failure(Exception(f"auth failed for {SECRET}-env"), 1.0, 2)
    study = open_study(f"sqlite:///{tmp_path / 's.db'}", "q", metrics=["acc"], higher_is_better=[True],
                       config={"study": {"storage": QUERY_URL, "dsn": f"host=db password={SECRET}"}})
    stored = json.dumps(optuna.load_study(study_name="q", storage=f"sqlite:///{tmp_path / 's.db'}").user_attrs)
    assert "password=***" in stored and SECRET not in stored and SECRET not in caplog.text
    assert SECRET not in mask_url(f"PGPASSWORD leaked: {SECRET}-env")
    del study


@pytest.mark.slow
def test_cli_masks_a_query_password(tmp_path, task_module):
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", storage=QUERY_URL, max_trials=2))
    for res in (cli("status", "--storage", QUERY_URL, cwd=tmp_path), cli("run", cfg, cwd=tmp_path),
                cli("run", cfg, "--debug", cwd=tmp_path)):
        assert res.returncode != 0 and "password=***" in res.stderr, res.stderr
        assert SECRET not in res.stdout + res.stderr


def _chain(exc):
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__
        yield exc


@pytest.mark.slow
def test_cli_with_an_unreachable_storage_prints_one_masked_line(tmp_path, task_module):
    cfg = write_config(tmp_path / "cfg.yaml", task_config(tmp_path / "run", storage=UNREACHABLE, max_trials=2))
    env = dict(os.environ)
    runs = [
        cli("status", "--storage", UNREACHABLE, cwd=tmp_path),
        cli("run", cfg, cwd=tmp_path),
        cli("run", cfg, "--workers", "2", cwd=tmp_path),
        cli("worker", cfg, cwd=tmp_path, env=dict(env, NAS_DISTILL_STORAGE=UNREACHABLE)),
        cli("run", cfg, "--debug", cwd=tmp_path),  # tracebacks and debug logs: still masked
    ]
    for res in runs[:4]:
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("nas-distill: config error: study.storage: cannot open "
                                     "postgresql+psycopg://u:***@127.0.0.1:1/db"), res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" in runs[4].stderr and "u:***@127.0.0.1:1/db" in runs[4].stderr
    for res in runs:
        assert SECRET not in res.stdout + res.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ a real run on PostgreSQL
def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _all_attrs(study) -> str:
    storage = study._storage  # Optuna 5 reads study system attrs through the storage only
    data = {"study_user": study.user_attrs, "study_system": storage.get_study_system_attrs(study._study_id),
            "trials": [{"user": t.user_attrs, "system": t.system_attrs, "params": t.params}
                       for t in study.get_trials(deepcopy=False)]}
    return json.dumps(data, default=repr)


def _whole_database(url: str) -> str:
    """Every row of every table of the database, as text: whatever Optuna or we stored anywhere."""
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    rows = []
    with psycopg.connect(conninfo) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        for table in tables:
            rows += [repr(r) for r in conn.execute(f'SELECT * FROM "{table}"')]
    assert len(tables) > 5 and rows
    return "\n".join(rows)


@pytest.mark.slow
@pytest.mark.postgres
def test_search_on_postgres_stores_and_prints_no_password(tmp_path, task_module, postgres_url, fresh_pg_study_name):
    url = _with_password(postgres_url, SECRET)  # trust authentication: any password is accepted
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", task_config(run_dir, storage=url, study_name=fresh_pg_study_name,
                                                          max_trials=4, heartbeat_interval=1))
    outputs = [cli("run", cfg, "--workers", "2", "--debug", cwd=tmp_path)]
    assert outputs[0].returncode == 0, outputs[0].stderr[-3000:]
    outputs += [cli("status", cfg, cwd=tmp_path), cli("pareto", cfg, "--json", cwd=tmp_path),
                cli("report", cfg, "-o", tmp_path / "report.html", cwd=tmp_path)]
    assert all(res.returncode == 0 for res in outputs), [res.stderr for res in outputs]
    for res in outputs:
        assert SECRET not in res.stdout + res.stderr

    study = optuna.load_study(study_name=fresh_pg_study_name, storage=url)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 4
    attrs = _all_attrs(study)
    assert '"worker": "w1"' in attrs and SECRET not in attrs
    assert SECRET not in _whole_database(postgres_url)
    stored = study.user_attrs["config"]["auto_distillation"]["study"]["storage"]
    assert stored == url.replace(SECRET, "***")  # recorded, with the password masked

    files = [p for p in [*run_dir.rglob("*"), tmp_path / "report.html"] if p.is_file()]
    assert files, "the run wrote nothing: the scan below would be empty"
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
