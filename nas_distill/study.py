"""The shared Optuna study: storage URL -> storage, study creation, heartbeats, retries, trial records.

Every worker of a search (in one process, N processes on one machine, or machines sharing a PostgreSQL
server) opens the same study through :func:`open_study`. The study is a plain Optuna study: the
``optuna`` CLI, ``optuna.load_study`` and optuna-dashboard read it with no code of ours.

Storage URLs (:func:`make_storage`):

* ``None``: ``sqlite:///<run_dir>/study.db`` (embedded, nothing to start). The run folder is created;
  the folder of any other SQLite or journal file must exist (a ``config error`` otherwise).
* ``sqlite:///path``: ``RDBStorage`` with a 60 s busy timeout (several local processes may write) and
  Optuna's heartbeats.
* ``postgresql+psycopg://user@host/db`` (or any other SQLAlchemy URL): ``RDBStorage`` with heartbeats.
* ``journal:///path`` or a path ending in ``.log`` / ``.journal``: ``JournalStorage`` over a
  ``JournalFileBackend``. The journal has no heartbeat table, so the heartbeat is a trial system attr
  (``nas_distill:heartbeat``, a Unix time) that :class:`Heartbeat` refreshes.

Why our own stale-trial sweep (:func:`fail_stale_trials`) instead of only ``optuna.storages.
fail_stale_trials``: it works on every storage, and it writes the reason (``error_type='WorkerLost'``)
on the dead trial before failing it, so reports can say what happened. A failed stale trial is retried
by :class:`RetryStaleTrial`: a WAITING copy with the same params, which the next ``study.ask()`` of any
worker pops, so the killed worker's architecture is trained by another worker.

The budget (:func:`budget_position`): a trial may train only if fewer than ``max_trials`` *counted*
trials come before it, where a trial is counted when it is COMPLETE or WAITING, or RUNNING with a lower
number. Trial numbers follow creation order and a trial never leaves FAIL, so of any ``max_trials + 1``
trials that end COMPLETE, the highest-numbered one saw all the others alive (COMPLETE, RUNNING with a
lower number, or still WAITING) at its check and was refused: the study never holds more than
``max_trials`` counted COMPLETE trials, whatever the concurrency. Counting every WAITING trial (the
retries of dead or interrupted trials) reserves their slots, and a worker that must wait for a slot
while a retry is WAITING gives its own trial up and pops the retry instead (see
:mod:`nas_distill.runner`), so a dead worker's architecture is always trained, and nobody deadlocks. Trials answered from the store (``duplicate_of``) or imported from an earlier run
(``imported_from``) are not counted: they cost no training.

Storage outages (:mod:`nas_distill.storage_retry`): the study :func:`open_study` returns talks to an
RDB storage through a wrapper that retries connection-level failures with backoff (one warning line per
outage), so workers wait for a restarting PostgreSQL server instead of dying. A RUNNING trial that never
recorded a heartbeat (an orphan left by a retried ``create_new_trial`` whose first commit had landed) is
failed by the stale sweep once it is :data:`ORPHAN_AGE_S` old.

Passwords in storage URLs are masked (:func:`mask_url`) everywhere they are logged or stored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .vocabulary import DEFAULT_RUN_DIR, DEFAULT_STUDY_NAME

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "nas_distill:heartbeat"
# user attrs that mark a COMPLETE trial as not having cost a training slot
UNCOUNTED_ATTRS = ("duplicate_of", "imported_from")
# error types of failures that say nothing about the architecture: the arch is tried again
RETRYABLE_ERRORS = ("WorkerLost", "Interrupted", "ConfigError", "Environment")
#: ``last_beat`` of :func:`finish_trial` meaning "whatever the trial's heartbeat".
ANY_BEAT = "any-beat"
#: Age (s, at least the grace period) after which a RUNNING trial that never beat is an orphan: no worker
#: runs it (every worker's first beat follows its ask within the sampler's time, far less than this).
ORPHAN_AGE_S = 60.0

__all__ = [
    "mask_url",
    "mask_secrets",
    "resolve_storage_url",
    "make_storage",
    "open_study",
    "load_study",
    "artifact_store",
    "Heartbeat",
    "fail_stale_trials",
    "RetryStaleTrial",
    "budget_position",
    "counted_complete",
    "record_budget",
    "recorded_budget",
    "set_user_attrs",
    "worker_identity",
]


# ------------------------------------------------------------------------------------------- URLs
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")


# A password as a query parameter (``password``, SQLAlchemy / libpq) or a field of a libpq ``key=value``
# DSN: the value up to the next separator.
_PARAM_PASSWORD = re.compile(
    r"(?P<head>(?:^|[?&;\s])(?:password|passwd|pwd|sslpassword|pass)\s*=\s*)(?P<pw>'[^']*'|[^&;\s#'\"]*)",
    re.IGNORECASE)
#: Environment variables whose values are passwords the storage drivers read (libpq's, ours).
PASSWORD_ENV_VARS = ("PGPASSWORD",)


def mask_url(url: Any) -> Any:
    """Every password in a text masked as ``***``: a URL's userinfo (``postgresql://user:secret@host/db``
    -> ``postgresql://user:***@host/db``), a ``password`` query parameter or DSN field, and the value of
    ``$PGPASSWORD`` wherever it appears. Other values are returned unchanged."""
    if not isinstance(url, str):
        return url
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***" + m.group("tail"), url)
    text = _PARAM_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    for name in PASSWORD_ENV_VARS:
        secret = os.environ.get(name)
        if secret and len(secret) >= 3:  # a one- or two-letter value would mask ordinary text
            text = text.replace(secret, "***")
    return text


def mask_secrets(value: Any) -> Any:
    """A copy of a JSON-like structure with every password in a URL masked."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Mapping):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_secrets(v) for v in value]
    return value


def _is_journal(url: str) -> bool:
    return url.startswith("journal://") or url.endswith((".log", ".journal", ".jsonl"))


def resolve_storage_url(storage: str | None, run_dir: str | os.PathLike | None = None) -> str:
    """Normalise a storage setting to a URL.

    ``None`` -> ``sqlite:///<run_dir>/study.db``; a bare path ending in ``.db`` / ``.sqlite`` -> an
    absolute ``sqlite:///`` URL; a bare journal path -> ``journal:///<absolute path>``.
    """
    if storage is None or storage == "":
        folder = Path(run_dir or DEFAULT_RUN_DIR).resolve()
        return f"sqlite:///{folder / 'study.db'}"
    storage = str(storage)
    if "://" not in storage:
        path = Path(storage).expanduser().resolve()
        if _is_journal(storage):
            return f"journal:///{path}"
        if storage.endswith((".db", ".sqlite", ".sqlite3")):
            return f"sqlite:///{path}"
        from .errors import ConfigError

        raise ConfigError(
            "study.storage",
            f"expected a storage URL (sqlite:///..., postgresql+psycopg://..., journal:///...) "
            f"or a .db / .log path, got {storage!r}",
        )
    return storage


def require_shared_storage(url: str) -> None:
    """A ConfigError for an in-memory SQLite URL: such a study lives and dies with one process, so the
    workers of a command-line search would each search alone and nothing would be saved."""
    from .errors import ConfigError

    if url in ("sqlite://", "sqlite:///:memory:") or (url.startswith("sqlite") and "mode=memory" in url):
        raise ConfigError("study.storage", f"{url} is private to one process and lost when it exits; use a "
                                           f"file (sqlite:///runs/<name>/study.db) or PostgreSQL")


def _journal_path(url: str) -> str:
    if url.startswith("journal://"):
        rest = url[len("journal://") :]
        return rest[1:] if rest.startswith("//") else rest  # journal:///abs -> /abs
    return url


def _sqlite_path(url: str) -> str | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    return path if path not in ("", ":memory:") else None


def storage_file(url: str) -> str | None:
    """The file a SQLite or journal storage URL writes to (absolute as given), else ``None``."""
    url = resolve_storage_url(url)
    return _journal_path(url) if _is_journal(url) else _sqlite_path(url)


def _require_folder(path: str) -> None:
    """A storage file's folder must exist: a typo in a path must not quietly start a new, empty study
    somewhere else. Only the run folder (``study.run_dir``, where the default storage lives) is created,
    by :class:`~nas_distill.autodistill.AutoDistillation`."""
    folder = Path(path).parent
    if not folder.is_dir():
        from .errors import ConfigError

        raise ConfigError("study.storage", f"the folder {folder} of {path} does not exist; create it, or leave "
                                           "study.storage unset to use <run_dir>/study.db")


# ---------------------------------------------------------------------------------------- storage
def make_storage(
    url: str,
    *,
    heartbeat_interval: float | None = 10,
    grace_period: float | None = 30,
    max_retry: int | None = 2,
    create: bool = True,
):
    """An Optuna storage for ``url`` with heartbeats and the stale-trial retry wired in.

    ``create=False`` (the commands that only read): a missing journal file is a ConfigError instead of
    being created, and an SQL database's tables are not created.
    """
    import optuna

    url = resolve_storage_url(url)
    callback = RetryStaleTrial(max_retry=max_retry)
    if _is_journal(url):
        from optuna.storages.journal import JournalFileBackend

        path = _journal_path(url)
        _require_folder(path)
        if not create and not Path(path).is_file():
            from .errors import ConfigError

            raise ConfigError("study.storage", f"no journal file at {path}")
        from .journal_lock import HolderJournalLock

        storage = optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=HolderJournalLock(path)))
    else:
        interval = None if heartbeat_interval is None else max(1, int(math.ceil(heartbeat_interval)))
        grace = None if grace_period is None else max(1, int(math.ceil(grace_period)))
        engine_kwargs: dict[str, Any] = {}
        sqlite_path = _sqlite_path(url)
        if url.startswith("sqlite"):
            engine_kwargs["connect_args"] = {"timeout": 60}
            if sqlite_path:
                _require_folder(sqlite_path)
        else:
            engine_kwargs["pool_pre_ping"] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                storage = _open_rdb(url, engine_kwargs, interval, grace, callback, create)
            except Exception as exc:  # noqa: BLE001 - one line naming the storage, not a stack
                from .errors import ConfigError
                from .storage_retry import storage_error_text

                cause = storage_error_text(exc) or str(exc)
                if not create and ("no such table" in cause or "does not exist" in cause):
                    raise ConfigError("study.storage", mask_url(f"{url} holds no study (no Optuna tables)")) \
                        from None
                raise ConfigError("study.storage", mask_url(f"cannot open {url}: {cause}")) from exc
    if url.startswith("sqlite:///") and _sqlite_path(url):
        _tune_sqlite(storage)
    # What our own sweep and heartbeat thread read (any storage).
    storage._nas_distill_heartbeat = (heartbeat_interval, grace_period, callback)  # type: ignore[attr-defined]
    return storage


#: Attempts at opening an RDB storage while other workers create its schema at the same time.
_SCHEMA_RACE_ATTEMPTS = 8


def _open_rdb(url: str, engine_kwargs: dict[str, Any], interval, grace, callback, create: bool = True):
    """``RDBStorage(url, ...)``, retried while other workers create the schema of a fresh database.

    Why: workers started together on an empty PostgreSQL database (``docker compose up --scale
    worker=N``) all run Optuna's ``CREATE TABLE``; PostgreSQL's catalog makes all but one fail with a
    unique violation (``pg_type_typname_nsp_index``) or "already exists" (SQLite: an OperationalError
    "table ... already exists" when processes open a fresh file together). Creating the schema is
    idempotent once it exists, so the losers open the storage again after a short random pause.
    """
    import random

    import sqlalchemy.exc

    from .atomic_storage import AtomicRDBStorage

    for attempt in range(_SCHEMA_RACE_ATTEMPTS):
        try:
            return AtomicRDBStorage(
                url,
                engine_kwargs=dict(engine_kwargs),
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=callback,
                skip_table_creation=not create,
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            text = str(exc).lower()
            racing = "already exists" in text or "duplicate key" in text or "unique" in text
            if not racing or attempt == _SCHEMA_RACE_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _tune_sqlite(storage) -> None:
    """WAL journal + ``synchronous=NORMAL`` on every connection of a SQLite study file.

    Why: with the default rollback journal every commit is an fsync and readers block the writer; a
    cheap trial does ~20 commits and several workers read while others write. WAL lets readers run
    beside the writer and makes a commit a sequential append (a power cut may lose the last
    transactions, never corrupt the file). SQLite files belong on a local disk (WAL needs shared
    memory between the processes), which is what the SQLite storage is for; use PostgreSQL across
    machines.
    """
    import sqlalchemy

    def on_connect(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened during Optuna's own setup predate the listener


def _directions(higher_is_better: Sequence[bool]) -> list[str]:
    return ["maximize" if h else "minimize" for h in higher_is_better]


def open_study(
    storage: Any,
    study_name: str = DEFAULT_STUDY_NAME,
    *,
    metrics: Sequence[str],
    higher_is_better: Sequence[bool],
    sampler=None,
    config: Mapping[str, Any] | None = None,
    search_space: Mapping[str, Sequence[Any]] | None = None,
    heartbeat_interval: float | None = 10,
    grace_period: float | None = 30,
):
    """Create or load (``load_if_exists``) the shared study and record what it is about.

    ``storage`` is a URL (see :func:`make_storage`) or an Optuna storage object. Directions come from
    ``higher_is_better``; the metric names are set for optuna-dashboard; the config (passwords masked)
    and the search space are stored as study user attrs the first time.
    """
    import optuna

    from .config import study_name_error
    from .errors import ConfigError

    problem = study_name_error(study_name)
    if problem:  # the storage would fail on it with a generic "invalid data in the commit"
        raise ConfigError("study.study_name", problem)
    if isinstance(storage, (str, os.PathLike)) or storage is None:
        storage = make_storage(
            resolve_storage_url(storage and str(storage)),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
        )
    storage = _with_retries(storage)
    directions = _directions(higher_is_better)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=directions,
        sampler=sampler,
        load_if_exists=True,
    )
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        raise ConfigError(
            "auto_distillation.search.higher_is_better",
            f"study {study_name!r} exists with directions {existing}, the config asks for {directions} "
            f"(metrics {list(metrics)}); use another study name",
        )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metrics))
    elif list(study.metric_names) != list(metrics):
        raise ConfigError(
            "auto_distillation.search.metrics",
            f"study {study_name!r} records metrics {study.metric_names}, the config asks for "
            f"{list(metrics)}; use another study name",
        )
    attrs = study.user_attrs
    if search_space is not None:
        space = {k: list(v) for k, v in search_space.items()}
        if "search_space" not in attrs:
            study.set_user_attr("search_space", space)
        elif attrs["search_space"] != space:
            # Trials store each value as its index in the space (Optuna categoricals), and the claim
            # protocol counts points by index: a changed space would silently reinterpret every stored
            # trial. Refuse before anything is asked.
            raise ConfigError(
                "auto_distillation.search.search_space",
                f"study {study_name!r} was created with a different search space "
                f"({_space_difference(attrs['search_space'], space)}); use another study name",
            )
    if config is not None and "config" not in attrs:
        study.set_user_attr("config", mask_secrets(_jsonable(config)))
    if "metrics" not in attrs:
        study.set_user_attr("metrics", list(metrics))
        study.set_user_attr("higher_is_better", [bool(h) for h in higher_is_better])
    return study


def _space_difference(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """The first difference between two search spaces, for the error message."""
    added = sorted(set(wanted) - set(stored))
    removed = sorted(set(stored) - set(wanted))
    if added or removed:
        return f"keys added {added}, removed {removed}"
    for key in sorted(wanted):
        if list(stored[key]) != list(wanted[key]):
            return f"{key!r} was {_short_list(stored[key])}, now {_short_list(wanted[key])}"
    return "same keys and values"


def _short_list(values: Any, limit: int = 8) -> str:
    values = list(values)
    return repr(values) if len(values) <= limit else repr(values[:limit])[:-1] + f", ... ({len(values)} values)]"


def _with_retries(storage):
    """``storage`` behind the outage-riding wrapper of :mod:`nas_distill.storage_retry` (RDB storages)."""
    from . import storage_retry

    rdb = _rdb(storage)
    if rdb is None:
        return storage
    return storage_retry.wrap(storage, mask_url(str(getattr(rdb, "url", "storage"))))


def load_study(storage: Any, study_name: str | None = None):
    """Load an existing study (the only one in the storage when ``study_name`` is None)."""
    import optuna

    from .errors import ConfigError

    if isinstance(storage, (str, os.PathLike)):
        storage = make_storage(resolve_storage_url(str(storage)), create=False)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception as exc:  # noqa: BLE001 - read without creating tables: an empty database has none
        text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None).lower()
        if "no such table" in text or "does not exist" in text:
            raise ConfigError("study.storage", "the storage holds no study (no Optuna tables)") from None
        raise
    if study_name is None:
        if len(names) != 1:
            raise ConfigError("study.study_name", f"the storage holds studies {names}; name one")
        study_name = names[0]
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ConfigError("study.study_name", f"no study {study_name!r} in the storage (has {names})") from None


def artifact_store(run_dir: str | os.PathLike):
    """The file-system artifact store of a run (``<run_dir>/artifacts``), shared by its workers."""
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(run_dir) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def check_writable(folder: str | os.PathLike, field: str) -> None:
    """Create ``folder`` and write (then remove) a file in it; a ConfigError naming ``field`` if either
    fails. Called before the first trial, so a run folder nobody can write costs no training."""
    import tempfile

    from .errors import ConfigError

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise ConfigError(field, f"cannot write to {folder}: {exc.strerror or exc}; fix its permissions or "
                                 f"free space, or choose another folder (--run-dir)") from None


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON (tuples -> lists, unknown objects -> repr) so Optuna can store it."""
    return json.loads(json.dumps(value, default=repr))


# ------------------------------------------------------------------------------------ heartbeats
def _heartbeat_settings(storage) -> tuple[float | None, float | None, Any]:
    from .storage_retry import innermost

    inner = innermost(storage)  # optuna's _CachedStorage (and our retrying wrapper) wrap an RDBStorage
    for s in (storage, inner):
        settings = s.__dict__.get("_nas_distill_heartbeat") if hasattr(s, "__dict__") else None
        if settings is not None:
            return settings
    interval = getattr(inner, "heartbeat_interval", None)
    grace = getattr(inner, "grace_period", None)
    return interval, grace, getattr(inner, "heartbeat_stale_trial_callback", None)


def _rdb(storage):
    """The RDBStorage behind ``storage`` (Optuna's caching wrapper, our retrying one), or None."""
    import optuna

    from .storage_retry import innermost

    inner = innermost(storage)
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


class Heartbeat:
    """Context manager: keep a trial's heartbeat fresh from a daemon thread while the trial runs.

    RDB storages use Optuna's heartbeat table (``record_heartbeat``); other storages get a trial system
    attr. The first beat is written before ``__enter__`` returns, so a trial is never RUNNING without a
    heartbeat for longer than the ask -> enter window.
    """

    def __init__(self, study, trial_id: int, interval: float | None = None,
                 attrs: Mapping[str, Any] | None = None):
        self.study = study
        self.trial_id = trial_id
        self._first_attrs = dict(attrs) if attrs else None
        configured, _, _ = _heartbeat_settings(study._storage)
        self.interval = float(interval or configured or 10)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """One beat, one attempt: during an outage the next beat is the retry (the outage is logged
        once, by :mod:`nas_distill.storage_retry`, not per beat)."""
        from .storage_retry import policy_of

        storage = self.study._storage
        rdb = _rdb(storage)
        retry = policy_of(storage)
        try:
            if rdb is not None and rdb.heartbeat_interval:
                if retry is not None:
                    retry.once(rdb.record_heartbeat, self.trial_id)
                else:
                    rdb.record_heartbeat(self.trial_id)
            elif retry is not None:
                retry.once(storage._backend.set_trial_system_attr, self.trial_id, HEARTBEAT_ATTR, time.time())
            else:
                storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
        except Exception as exc:  # noqa: BLE001 - a finished trial or a brief outage: keep beating
            log.debug("heartbeat of trial id %s failed: %s", self.trial_id, exc)

    def _beat_with_attrs(self, attrs: Mapping[str, Any]) -> bool:
        """First beat + user attrs in one RDB transaction (what ``record_heartbeat`` and
        ``set_trial_user_attr`` do, in one session). False: not an RDB storage, or Optuna's internals
        moved; the caller then writes them separately."""
        rdb = _rdb(self.study._storage)
        if rdb is None or not rdb.heartbeat_interval:
            return False
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            from .storage_retry import call

            rdb._set_trial_attr_without_commit  # noqa: B018 - _write_user_attrs' fallback needs it
        except (ImportError, AttributeError, TypeError):  # pragma: no cover - a future Optuna
            return False
        values = {k: _jsonable(v) for k, v in attrs.items()}

        def write() -> None:
            # Idempotent: attrs are upserts, and a heartbeat row already there (a retry after a commit
            # that landed) is an integrity error the session ignores.
            with _create_scoped_session(rdb.scoped_session, True) as session:
                _write_user_attrs(rdb, session, self.trial_id, values)
                session.add(models.TrialHeartbeatModel(trial_id=self.trial_id))

        call(self.study._storage, write)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> "Heartbeat":
        attrs, self._first_attrs = self._first_attrs, None
        if attrs and self._beat_with_attrs(attrs):
            pass
        else:
            if attrs:
                set_user_attrs(self.study, self.trial_id, attrs)
            self.beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _orphan_age(grace_period: float) -> float:
    return max(float(ORPHAN_AGE_S), float(grace_period))


def _rdb_stale_trial_beats(rdb, study_id: int, grace_period: float) -> dict[int, Any]:
    """RUNNING trials whose last heartbeat (server time) is older than the grace period, and orphans:
    RUNNING trials with no heartbeat at all, started (client time) more than :func:`_orphan_age` ago;
    each with the heartbeat read (None for an orphan), which the sweep's FAIL requires to be still the
    last one (see :meth:`~nas_distill.atomic_storage.AtomicRDBStorage.finish_trial`).

    One session, the same two statements as Optuna's ``RDBStorage._get_stale_trial_ids`` (which skips
    trials that never beat, so an orphan would stay RUNNING forever).
    """
    import datetime

    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState
    from sqlalchemy import orm

    stale: dict[int, Any] = {}
    orphan_limit = datetime.timedelta(seconds=_orphan_age(grace_period))
    grace = datetime.timedelta(seconds=grace_period)
    with _create_scoped_session(rdb.scoped_session, True) as session:
        server_now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        client_now = datetime.datetime.now()
        running = (
            session.query(models.TrialModel)
            .options(orm.selectinload(models.TrialModel.heartbeats))
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialModel.study_id == study_id)
            .all()
        )
        for trial in running:
            if trial.heartbeats:
                beat = trial.heartbeats[0].heartbeat
                if server_now - beat.replace(tzinfo=None) > grace:
                    stale[trial.trial_id] = beat
            elif trial.datetime_start is not None and client_now - trial.datetime_start > orphan_limit:
                stale[trial.trial_id] = None
    return stale


def _stale_trial_beats(study, grace_period: float) -> dict[int, Any]:
    """Stale RUNNING trials: ``{trial id: the heartbeat read}`` on SQL storages (see
    :func:`_rdb_stale_trial_beats`), ``{trial id: ANY_BEAT}`` elsewhere."""
    from optuna.trial import TrialState

    from .storage_retry import call

    storage = study._storage
    rdb = _rdb(storage)
    if rdb is not None:
        if not rdb.heartbeat_interval:
            return {}
        try:
            return call(storage, _rdb_stale_trial_beats, rdb, study._study_id, grace_period)
        except (ImportError, AttributeError):  # pragma: no cover - a future Optuna: its own query
            return dict.fromkeys(call(storage, rdb._get_stale_trial_ids, study._study_id), ANY_BEAT)
    now = time.time()
    stale = {}
    for trial in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        if beat is None and trial.datetime_start is not None:
            beat = trial.datetime_start.timestamp()
        if beat is not None and now - float(beat) > grace_period:
            stale[trial._trial_id] = ANY_BEAT
    return stale


def _stale_trial_ids(study, grace_period: float) -> list[int]:
    return list(_stale_trial_beats(study, grace_period))


def lost_running_trials(study) -> set[int]:
    """Ids of RUNNING trials whose heartbeat is older than the study's grace period (as recorded in its
    config, else the storage's): their workers are gone, and the next sweep of a live worker fails them.
    What a reader of the study (``status``) shows instead of "running"."""
    _, grace, _ = _heartbeat_settings(study._storage)
    config = study.user_attrs.get("config")
    stored = ((config or {}).get("auto_distillation", {}).get("study") or {}).get("grace_period") \
        if isinstance(config, Mapping) else None
    grace = stored if isinstance(stored, (int, float)) and stored > 0 else grace
    return set(_stale_trial_ids(study, float(grace or 30)))


def fail_stale_trials(study) -> list[int]:
    """Mark RUNNING trials whose heartbeat is older than the grace period FAIL, and retry their archs.

    Safe to call from every worker at once: only the caller whose state change wins runs the retry, so
    each dead trial is retried exactly once. Returns the trial numbers this call failed.
    """
    import optuna
    from optuna.trial import TrialState

    from .storage_retry import policy_of

    interval, grace, callback = _heartbeat_settings(study._storage)
    if interval is None and _rdb(study._storage) is None:
        return []
    grace = float(grace if grace is not None else 2 * float(interval or 10))
    storage = study._storage
    retry = policy_of(storage)
    # Right after an outage nobody's heartbeat is fresh: give the live workers a grace period (and a
    # beat) to prove it before failing their trials.
    settle = grace + float(interval or 10)
    if retry is not None and retry.recovered_within(settle):
        return []
    if _journal_stalled_within(storage, settle):
        return []  # nobody could write a heartbeat while the journal's lock was stuck
    stale = _stale_trial_beats(study, grace)
    if stale and retry is not None and retry.recovered_within(settle):
        return []  # the read above was the first call to get through
    failed = []
    reason = {"error_type": "WorkerLost",
              "error": f"no heartbeat for more than {grace:g} s: the worker died or hung "
                       f"(or, never beating after {_orphan_age(grace):g} s, nobody ever ran it)"}
    for trial_id, beat in stale.items():
        try:
            # Only if no beat came since the read above: an owner that proved alive meanwhile keeps it.
            if finish_trial(study, trial_id, TrialState.FAIL, attrs=reason, last_beat=beat):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker (or the owner) finished it first
    numbers = []
    for trial_id in failed:
        frozen = storage.get_trial(trial_id)
        numbers.append(frozen.number)
        log.warning("trial %d: worker lost (no heartbeat for %g s); marked FAIL", frozen.number, grace)
        if callback is not None:
            try:
                callback(study, frozen)
            except Exception as exc:  # noqa: BLE001 - a failed retry must not stop the sweeping worker
                log.warning("retry of trial %d failed: %s", frozen.number, exc)
    return numbers


def _journal_stalled_within(storage, seconds: float) -> bool:
    """Whether ``storage`` is a journal whose lock was stuck (a wait longer than
    :data:`~nas_distill.journal_lock.STALL_S`) less than ``seconds`` ago. Takes the lock once itself,
    so a sweep that starts during a stall waits it out and sees it."""
    from .journal_lock import HolderJournalLock

    lock = getattr(getattr(storage, "_backend", None), "_lock", None)
    if not isinstance(lock, HolderJournalLock):
        return False
    lock.acquire()
    lock.release()
    return lock.stall_ended is not None and time.monotonic() - lock.stall_ended < seconds


def finish_trial(study, trial_id: int, state, values=None, attrs: Mapping[str, Any] | None = None,
                 last_beat: Any = ANY_BEAT) -> bool:
    """Finish a trial with ``attrs`` recorded on it, exactly once across every worker. ``last_beat``
    (SQL storages): finish only if the trial's heartbeat is still the one read (None: it never beat);
    :data:`ANY_BEAT`: whatever its heartbeat.

    On SQL storages the attrs and the state change are one transaction, so a loser (the trial was
    finished by someone else first: ``UpdateFinishedTrialError``) leaves no attrs behind on the
    winner's trial. Elsewhere (the journal) the attrs are written first, then the state, which the
    journal's replay gives to the first writer only.
    """
    from .atomic_storage import atomic_rdb
    from .storage_retry import call

    storage = study._storage
    rdb = atomic_rdb(storage)
    values = None if values is None else [float(v) for v in values]
    if rdb is not None:
        return call(storage, rdb.finish_trial, trial_id, state, values,
                    {k: _jsonable(v) for k, v in (attrs or {}).items()}, last_beat)
    if attrs:
        set_user_attrs(study, trial_id, attrs)
    return storage.set_trial_state_values(trial_id, state=state, values=values)


class RetryStaleTrial:
    """Failed-trial callback: enqueue a WAITING copy of the trial (same params) so its arch is retried.

    Like ``optuna.storages.RetryFailedTrialCallback`` (the same ``failed_trial`` / ``retry_history``
    system attrs, so ``RetryFailedTrialCallback.retried_trial_number`` works), but the copy starts with
    clean user attrs plus ``retry_of``, and at most ``max_retry`` retries per original trial.
    """

    def __init__(self, max_retry: int | None = 2):
        self.max_retry = max_retry

    def __call__(self, study, trial) -> None:
        import optuna

        if not trial.params:
            # An orphan of a retried create_new_trial (see nas_distill.storage_retry): no arch to retry.
            log.info("trial %d: no params, nothing to retry", trial.number)
            return
        history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
        if self.max_retry is not None and len(history) > self.max_retry:
            log.warning("trial %d: not retried again (%d retries already)", trial.number, len(history) - 1)
            return
        system_attrs = {"failed_trial": history[0], "retry_history": history}
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={"retry_of": trial.number},
                system_attrs=system_attrs,
            )
        )


def retry_trial(study, trial, max_retry: int | None = 2) -> None:
    """Enqueue a retry of ``trial`` (used for interrupted trials, which are not stale)."""
    _, _, callback = _heartbeat_settings(study._storage)
    (callback if isinstance(callback, RetryStaleTrial) else RetryStaleTrial(max_retry))(study, trial)


# ---------------------------------------------------------------------------------------- budget
BUDGET_ATTR = "max_trials"


def record_budget(study, max_trials: int) -> None:
    """Record the budget the workers run to (a ``--max-trials`` override included) in the study, so
    ``status`` and the progress bar show the budget in force rather than the config's."""
    if study.user_attrs.get(BUDGET_ATTR) != int(max_trials):
        study.set_user_attr(BUDGET_ATTR, int(max_trials))


def recorded_budget(study) -> int | None:
    value = study.user_attrs.get(BUDGET_ATTR)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def is_counted(trial) -> bool:
    """Whether a trial occupies a budget slot (see the module docstring)."""
    return not any(k in trial.user_attrs for k in UNCOUNTED_ATTRS)


def counted_complete(trials: Iterable[Any]) -> int:
    """Number of COMPLETE trials that cost a training slot."""
    from optuna.trial import TrialState

    return sum(1 for t in trials if t.state == TrialState.COMPLETE and is_counted(t))


def budget_position(study, number: int, trials: Iterable[Any] | None = None) -> tuple[int, int, list[Any]]:
    """``(ahead, complete, trials)`` for trial ``number``.

    ``trials``: the study's trials as read at any time after trial ``number`` was created (other states
    than the four below are ignored); by default they are read now.

    ``ahead``: counted COMPLETE and WAITING trials plus counted RUNNING trials numbered below ``number``;
    the trial may train iff ``ahead < max_trials``. ``complete``: counted COMPLETE trials. ``trials``:
    the COMPLETE / RUNNING / WAITING / FAIL trials read (one read; callers reuse them, e.g. to spot
    architectures already measured or already failed).
    """
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)
    if trials is None:
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False, states=states)
    else:
        trials = [t for t in trials if t.state in states]
    complete = 0
    ahead = 0
    for t in trials:
        if t.state == TrialState.FAIL or not is_counted(t):
            continue
        if t.state == TrialState.COMPLETE:
            complete += 1
            ahead += 1
        elif t.state == TrialState.WAITING or t.number < number:
            ahead += 1
    return ahead, complete, trials


# ----------------------------------------------------------------------------------- trial records
def set_user_attrs(study, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Write several user attrs of one trial (values made JSON-safe), in one transaction on RDB.

    Optuna commits each ``set_trial_user_attr`` on its own; a trial records ~10 attrs, and on SQLite a
    commit is the dominant cost of a cheap trial. The batched path uses the same statement Optuna uses
    (``RDBStorage._set_trial_attr_without_commit``) inside one session; if that internal API ever
    changes, the attrs are written one by one.
    """
    storage = study._storage
    values = {key: _jsonable(value) for key, value in attrs.items()}
    rdb = _rdb(storage)
    if rdb is not None and len(values) > 1:
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            setter = rdb._set_trial_attr_without_commit
        except (ImportError, AttributeError):  # pragma: no cover - a future Optuna
            setter = None
        if setter is not None:
            from .storage_retry import call

            def write() -> None:  # an upsert: safe to retry after a lost acknowledgement
                with _create_scoped_session(rdb.scoped_session, True) as session:
                    _write_user_attrs(rdb, session, trial_id, values)

            call(storage, write)
            return
    for key, value in values.items():
        storage.set_trial_user_attr(trial_id, key, value)


def _write_user_attrs(rdb, session, trial_id: int, values: Mapping[str, Any], check: bool = True) -> None:
    """Upsert JSON-safe user attrs of one trial inside ``session`` (the caller commits). ``check=False``:
    the caller has just finished the trial in this same transaction (the attrs go with the finish).

    On SQLite and PostgreSQL: one check that the trial may still be updated (as Optuna does before each
    attr) and one upsert statement for all the attrs, stored as Optuna stores them (``json.dumps`` in
    ``trial_user_attributes``), instead of a lookup + a statement per attr. Elsewhere Optuna's own
    per-attr statement.
    """
    import sqlite3

    from optuna.storages._rdb import models

    if not values:
        return
    dialect = rdb.engine.name
    insert = None
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert
    if insert is None and check:
        for key, value in values.items():
            rdb._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)
        return
    if insert is None:  # another dialect, the trial just finished: Optuna's setter would refuse it
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        for key, value in values.items():
            row = models.TrialUserAttributeModel.find_by_trial_and_key(trial, key, session)
            if row is None:
                session.add(models.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value)))
            else:
                row.value_json = json.dumps(value)
        return
    if check:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        rdb.check_trial_is_updatable(trial_id, trial.state)
    table = models.TrialUserAttributeModel.__table__
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=[table.c.trial_id, table.c.key],
                                      set_={"value_json": stmt.excluded.value_json})
    session.execute(stmt, [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                           for key, value in values.items()])


def worker_identity() -> dict[str, Any]:
    """``{'host': ..., 'pid': ...}`` (plus the torch.distributed rank when one is set)."""
    ident: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    label = os.environ.get("NAS_DISTILL_WORKER")
    if label:
        ident["worker"] = label
    return ident
