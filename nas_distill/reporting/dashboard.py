"""optuna-dashboard on the search's study, with the student checkpoints and a hypervolume view.

What it adds to a plain ``optuna-dashboard <storage>``:

* the run's ``FileSystemArtifactStore`` (``<run_dir>/artifacts``), so the trained students that the
  workers uploaded can be downloaded from each trial's page;
* the hypervolume-history figure, which optuna-dashboard does not draw itself. It is stored in the study
  with ``optuna_dashboard.save_plotly_graph_object`` under a fixed id (``nas-distill-hypervolume``), so a
  relaunch replaces it instead of adding a copy; the dashboard shows it with the study's figures, and
  its API lists it under ``plotly_graph_objects`` of ``/api/studies/<id>``. While the server runs, a
  daemon thread refreshes it every ``refresh_s`` seconds when the number of finished trials (or of rung
  records) changed (workers keep adding trials while the dashboard is up).
* the learning curves of the report (id ``nas-distill-learning-curves``), pushed the same way when some
  trial has rung records (the pruner's partial evaluations; Optuna's own intermediate values cannot hold
  them in a multi-objective study).

Binds 127.0.0.1 by default: the dashboard can edit notes and delete studies, so exposing it is a choice
the caller makes explicitly (docker-compose passes ``--host 0.0.0.0`` inside the container and publishes
the port on the host's loopback only).

Guarded (:class:`DashboardGuard`, around optuna-dashboard's WSGI app): optuna-dashboard's write API
(``DELETE /api/studies/<id>``, notes, uploads, ``tell``) checks neither ``Host`` nor ``Origin``, so any
web page the user opens could reach ``127.0.0.1:8080`` through DNS rebinding and delete the live study.
The guard answers 403 to a request whose ``Host`` names another machine than the bound address (the
rebinding page's own domain), and, unless ``allow_writes``, to every request that is not a read
(``GET`` / ``HEAD``); with ``allow_writes``, a write whose ``Origin`` is another site is refused too.

Imports neither torch nor any model code; optuna-dashboard and plotly are imported when used.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas_distill.store.open import open_storage as store_open_storage
from nas_distill.vocabulary import RUNGS_ATTR

__all__ = ["HYPERVOLUME_FIGURE_ID", "LEARNING_CURVES_FIGURE_ID", "check_port_free", "push_figures",
           "launch_dashboard", "open_storage", "DashboardGuard", "is_loopback"]

HYPERVOLUME_FIGURE_ID = "nas-distill-hypervolume"
LEARNING_CURVES_FIGURE_ID = "nas-distill-learning-curves"

_log = logging.getLogger(__name__)


def open_storage(storage: Any) -> Any:
    """An Optuna storage from a URL (``sqlite:///...``, ``postgresql+psycopg://...``, ``journal:///...``),
    a SQLite or journal file path, or an existing storage object; opened as the workers open it, but
    creating nothing (a missing file or an empty database is a ConfigError)."""
    return store_open_storage(storage, create=False)


def _progress_key(study: optuna.Study) -> tuple[int, int]:
    """What the pushed figures depend on: the finished trials, and the rung records of every trial."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
    rungs = sum(len(t.user_attrs[RUNGS_ATTR]) for t in trials if isinstance(t.user_attrs.get(RUNGS_ATTR), list))
    return finished, rungs


def push_figures(storage: Any, study_name: str | None = None) -> dict[str, list[str]]:
    """Store the hypervolume-history figure (studies with a complete trial) and the learning curves
    (studies with rung records) in each study of ``storage`` (or only ``study_name``).

    Returns ``{study name: [graph object ids pushed]}``; studies given neither are left out.
    """
    from optuna_dashboard import save_plotly_graph_object

    from nas_distill.reporting.data import collect
    from nas_distill.reporting.figures import hypervolume_figure, learning_curves_figure

    storage = open_storage(storage)
    names = [study_name] if study_name else optuna.get_all_study_names(storage)
    pushed: dict[str, list[str]] = {}
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        data = collect(study, importances=False)
        figures = []
        if data.complete:
            figures.append((HYPERVOLUME_FIGURE_ID, hypervolume_figure(data)))
        if data.has_rungs:
            figures.append((LEARNING_CURVES_FIGURE_ID, learning_curves_figure(data)))
        for figure_id, figure in figures:
            pushed.setdefault(name, []).append(save_plotly_graph_object(study, figure, graph_object_id=figure_id))
    return pushed


def _refresh_loop(storage: Any, study_name: str | None, interval: float, stop: threading.Event) -> None:
    """Re-push the figures whenever the finished trials or the rung records of some study changed."""
    seen: dict[str, tuple[int, int]] = {}
    while not stop.wait(interval):
        try:
            names = [study_name] if study_name else optuna.get_all_study_names(storage)
            for name in names:
                count = _progress_key(optuna.load_study(study_name=name, storage=storage))
                if seen.get(name) != count:
                    push_figures(storage, name)
                    seen[name] = count
        except Exception:  # a refresh failing must never take the dashboard down
            _log.warning("refreshing the dashboard figures failed", exc_info=True)


def check_port_free(host: str, port: int) -> str | None:
    """``None`` when ``host:port`` can be bound now, else one line saying it is busy and naming a free
    port to pass as ``--port``.

    Why before starting: optuna-dashboard reports a busy port with a traceback after its own banner.
    The probe binds the way its server does (``SO_REUSEADDR``), so a port in TIME_WAIT is not "busy".
    """
    import socket

    def bind(p: int) -> int:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, p))
            return sock.getsockname()[1]

    try:
        bind(port)
        return None
    except OSError as exc:
        try:
            free = bind(0)
        except OSError:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        return f"port {port} on {host} is busy ({exc.strerror or exc}); pass a free one, e.g. --port {free}"


_READ_METHODS = ("GET", "HEAD")
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a name) is this machine's loopback interface only."""
    import ipaddress

    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """``'127.0.0.1:8080'`` / ``'[::1]:8080'`` / ``'http://localhost:8080'`` -> the bare host, lower case."""
    from urllib.parse import urlsplit

    value = value.strip()
    netloc = urlsplit(value).netloc if "://" in value else value
    return (urlsplit("//" + netloc).hostname or "").lower()


def allowed_host_names(bind_host: str) -> set[str]:
    """The names a browser may use for a server bound to ``bind_host``: the loopback names always (the
    port may be published there, as docker-compose does), plus the bound address; for a wildcard bind
    (``0.0.0.0`` / ``::``) this machine's host names and addresses."""
    import socket

    names = {n.lower() for n in _LOOPBACK_NAMES} | {_host_name(bind_host) or bind_host.lower()}
    if bind_host in ("0.0.0.0", "::", ""):
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            try:
                names.update(info[4][0].lower() for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    return names


class DashboardGuard:
    """WSGI middleware: refuse foreign ``Host`` headers, writes (unless allowed) and foreign ``Origin``s.

    Args:
        app: the WSGI app (optuna-dashboard's).
        bind_host: the address the server is bound to (see :func:`allowed_host_names`).
        allow_writes: let ``POST`` / ``PUT`` / ``DELETE`` / ``PATCH`` through (notes, deleting studies,
            uploads); a write must then come without ``Origin`` (a script) or from an allowed origin.
    """

    def __init__(self, app: Any, bind_host: str, allow_writes: bool = False):
        self.app = app
        self.allowed = allowed_host_names(bind_host)
        self.allow_writes = allow_writes

    def refusal(self, environ: dict[str, Any]) -> str | None:
        """Why the request is refused, or None to serve it."""
        host = _host_name(environ.get("HTTP_HOST") or "")
        if host not in self.allowed:
            return f"Host {host or '(none)'!r} is not this dashboard's address"
        if environ.get("REQUEST_METHOD", "GET").upper() in _READ_METHODS:
            return None
        if not self.allow_writes:
            return "this dashboard is read-only (start it with --allow-writes to edit notes or delete)"
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and _host_name(origin) not in self.allowed:
            return f"writes from origin {origin!r} are refused"
        return None

    def __call__(self, environ: dict[str, Any], start_response: Any):
        reason = self.refusal(environ)
        if reason is None:
            return self.app(environ, start_response)
        _log.warning("refused %s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), reason)
        body = (reason + "\n").encode("utf-8")
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body)))])
        return [body]


def launch_dashboard(
    storage_url: Any,
    artifact_dir: str | os.PathLike[str] | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    study_name: str | None = None,
    refresh_s: float | None = 60.0,
    allow_writes: bool = False,
) -> None:
    """Serve optuna-dashboard on the study storage with the artifact store; blocks until stopped.

    Args:
        storage_url: the study storage (URL, journal file path, or storage object), the same the
            workers write to.
        artifact_dir: the run's artifact folder (``<run_dir>/artifacts``); created if missing so the
            dashboard can also take uploads. ``None``: no artifact store.
        host: interface to bind; 127.0.0.1 unless you mean to expose the dashboard.
        port: TCP port.
        study_name: push the figures to this study only (default: every study).
        refresh_s: how often to refresh the pushed figures while serving; ``None`` or 0: only once.
        allow_writes: serve optuna-dashboard's write API (notes, deleting studies, uploads); by default
            the dashboard is read-only. Either way :class:`DashboardGuard` checks ``Host`` / ``Origin``.
    """
    import bottle
    from optuna_dashboard import wsgi

    storage = open_storage(storage_url)
    store = None
    if artifact_dir is not None:
        from optuna.artifacts import FileSystemArtifactStore

        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(os.fspath(artifact_dir))
    pushed = push_figures(storage, study_name)
    _log.info("pushed the hypervolume / learning-curve figures to %d studies", len(pushed))
    stop = threading.Event()
    if refresh_s:
        threading.Thread(
            target=_refresh_loop, args=(storage, study_name, float(refresh_s), stop),
            name="nas-distill-dashboard-refresh", daemon=True,
        ).start()
    if not is_loopback(host):
        _log.warning("the dashboard listens on %s: every machine that can reach this address can read the "
                      "study%s", host, " and change it (--allow-writes)" if allow_writes else "")
    app = DashboardGuard(wsgi(storage, artifact_store=store), host, allow_writes=allow_writes)
    try:
        bottle.run(app, host=host, port=port)
    finally:
        stop.set()
