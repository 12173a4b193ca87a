"""A throwaway PostgreSQL server for tests: initdb, start, stop, start again (same port, same data).

Used by the session-wide ``postgres_url`` fixture of conftest.py and by tests that need a server of their
own (the storage-outage test stops and restarts it). ``initdb`` into a temporary folder, trust
authentication (the server listens on 127.0.0.1 only; no password anywhere), started with ``pg_ctl`` as an
unprivileged user because PostgreSQL refuses to run as root.

Missing binaries or a server that will not start raise :class:`PostgresUnavailable`; the fixtures turn it
into a skip, or a failure under ``CI=true``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _support.common import free_port

PG_BIN_GLOBS = ["/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin"]
DB_USER = "nasdistill"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL for the tests (binaries, driver, or the server failed to start)."""


def find_pg_bin() -> str | None:
    explicit = os.environ.get("NAS_DISTILL_PG_BIN")
    candidates = [explicit] if explicit else []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    for pattern in PG_BIN_GLOBS:
        candidates.extend(sorted(glob.glob(pattern), reverse=True))
    for folder in candidates:
        if folder and all(os.access(os.path.join(folder, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return folder
    return None


def server_user() -> str | None:
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


def as_user(user: str | None, argv: list[str]) -> list[str]:
    if user is None:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--"] + argv
    return ["su", "-s", "/bin/sh", user, "-c", " ".join(shlex.quote(a) for a in argv)]


class PostgresServer:
    """One throwaway server. ``start()`` (initdb on first use), ``stop()``, ``start()`` again on the same
    port and data folder, ``url(db)``, ``create_database(name)``, ``cleanup()`` (stop + delete).

    ``max_connections=200`` and ``fsync=off``: many worker processes, and nothing here must survive a
    power cut.
    """

    def __init__(self, prefix: str = "nas-distill-pg-"):
        self.bindir = find_pg_bin()
        if self.bindir is None:
            raise PostgresUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise PostgresUnavailable("psycopg (3) is not installed") from None
        self.user = server_user()
        self.base = tempfile.mkdtemp(prefix=prefix)
        self.datadir = os.path.join(self.base, "data")
        self.sockdir = os.path.join(self.base, "sock")
        self.logfile = os.path.join(self.base, "server.log")
        os.makedirs(self.sockdir)
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            for path in (self.base, self.sockdir):
                os.chown(path, info.pw_uid, info.pw_gid)
            os.chmod(self.base, 0o700)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env["LC_ALL"] = "C"
        self.port: int | None = None
        self.running = False
        self._initialised = False

    # -------------------------------------------------------------------------------- commands
    def _run(self, argv: list[str], check_reason: str | None = None) -> subprocess.CompletedProcess:
        res = subprocess.run(as_user(self.user, argv), capture_output=True, text=True, env=self.env,
                             cwd=self.base)
        if check_reason and res.returncode != 0:
            tail = Path(self.logfile).read_text()[-500:] if os.path.exists(self.logfile) else ""
            raise PostgresUnavailable(f"{check_reason}: {res.stderr.strip()[-300:]} {tail}")
        return res

    def _pg_ctl(self) -> str:
        return os.path.join(self.bindir, "pg_ctl")

    def start(self, timeout: float = 60) -> "PostgresServer":
        if not self._initialised:
            self._run([os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", DB_USER,
                       "--auth-local=trust", "--auth-host=trust", "-E", "UTF8", "--no-locale"],
                      check_reason="initdb failed")
            self._initialised = True
        if self.port is None:
            self.port = free_port()
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.sockdir} -c max_connections=200 -c fsync=off"
        self._run([self._pg_ctl(), "-D", self.datadir, "-l", self.logfile, "-w", "-t", str(int(timeout)),
                   "-o", opts, "start"], check_reason="pg_ctl start failed")
        self.running = True
        self.wait_ready(timeout)
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (clients disconnected, clean shutdown) or ``immediate`` (a crash)."""
        if self.running:
            self._run([self._pg_ctl(), "-D", self.datadir, "-m", mode, "-w", "stop"])
            self.running = False

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # --------------------------------------------------------------------------------- clients
    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={DB_USER} dbname={dbname}"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{dbname}"

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.time() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name``; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def start_or_skip(prefix: str = "nas-distill-pg-") -> PostgresServer:
    """A started server; when PostgreSQL is unavailable the test is skipped, or failed under CI=true."""
    import pytest

    server = None
    try:
        server = PostgresServer(prefix)
        return server.start()
    except PostgresUnavailable as exc:
        if server is not None:
            server.cleanup()
        if in_ci():
            pytest.fail(f"PostgreSQL is required under CI=true: {exc}", pytrace=False)
        pytest.skip(str(exc))
