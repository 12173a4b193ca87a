"""Open a study's storage from its URL, and create or load the shared study in it.

Every worker of a search (in one process, N processes on one machine, or machines sharing a PostgreSQL
server) opens the same study through :func:`open_study`. The study is a plain Optuna study: the
``optuna`` CLI, ``optuna.load_study`` and optuna-dashboard read it with no code of ours.

* SQLite: ``RDBStorage`` with a 60 s busy timeout (several local processes may write), WAL, and Optuna's
  heartbeats. Any other SQLAlchemy URL (PostgreSQL): ``RDBStorage`` with heartbeats and pre-ping.
* A journal: ``JournalStorage`` over a ``JournalFileBackend`` whose lock knows its holder
  (:mod:`.journal_lock`).

SQL storages are put behind the retrying wrapper (:mod:`.retry`), so workers wait for a restarting
PostgreSQL server instead of dying.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import sqlalchemy
import sqlalchemy.exc
import tenacity
from optuna.storages.journal import JournalFileBackend

from ..checks import study_name_error
from ..errors import ConfigError
from ..vocabulary import DEFAULT_GRACE_PERIOD, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_STUDY_NAME
from .atomic import AtomicRDBStorage
from .attrs import rdb_of
from .classify import storage_error_text
from .handle import StudyStore
from .heartbeat import HeartbeatSettings, attach_settings
from .journal_lock import HolderJournalLock
from .retry import wrap
from .secrets import mask_secrets, mask_url
from .sql import jsonable
from .stale import RetryStaleTrial
from .urls import is_journal, journal_path, require_folder, resolve_storage_url, sqlite_path

__all__ = ["DEFAULT_STUDY_NAME", "make_storage", "open_storage", "open_study", "load_study"]

#: Attempts at opening an RDB storage while other workers create its schema at the same time.
_SCHEMA_RACE_ATTEMPTS = 8


# ---------------------------------------------------------------------------------------- storage
def make_storage(url: str, *, heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
                 grace_period: float | None = DEFAULT_GRACE_PERIOD,
                 max_retry: int | None = 2, create: bool = True):
    """An Optuna storage for ``url`` with heartbeats and the stale-trial retry wired in.

    ``create=False`` (the commands that only read): a missing journal file is a ConfigError instead of
    being created, and an SQL database's tables are not created.
    """
    url = resolve_storage_url(url)
    callback = RetryStaleTrial(max_retry=max_retry)
    if is_journal(url):
        storage = _journal_storage(journal_path(url), create)
    else:
        storage = _rdb_storage(url, heartbeat_interval, grace_period, callback, create)
    attach_settings(storage, HeartbeatSettings(heartbeat_interval, grace_period, callback))
    return storage


def _journal_storage(path: str, create: bool):
    require_folder(path)
    if not create and not Path(path).is_file():
        raise ConfigError("study.storage", f"no journal file at {path}")
    return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=HolderJournalLock(path)))


def _whole_seconds(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, int(math.ceil(seconds)))


def _rdb_storage(url: str, heartbeat_interval, grace_period, callback, create: bool):
    engine_kwargs: dict[str, Any] = {}
    file = sqlite_path(url)
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
        if file:
            require_folder(file)
    else:
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = _open_rdb(url, engine_kwargs, _whole_seconds(heartbeat_interval),
                                _whole_seconds(grace_period), callback, create)
        except Exception as exc:  # noqa: BLE001 - one line naming the storage, not a stack
            cause = storage_error_text(exc) or str(exc)
            if not create and ("no such table" in cause or "does not exist" in cause):
                raise ConfigError("study.storage", mask_url(f"{url} holds no study (no Optuna tables)")) \
                    from None
            raise ConfigError("study.storage", mask_url(f"cannot open {url}: {cause}")) from exc
    if url.startswith("sqlite:///") and file:
        _tune_sqlite(storage)
    return storage


def _open_rdb(url: str, engine_kwargs: dict[str, Any], interval, grace, callback, create: bool = True):
    """``RDBStorage(url, ...)``, retried while other workers create the schema of a fresh database.

    Why: workers started together on an empty PostgreSQL database (``docker compose up --scale
    worker=N``) all run Optuna's ``CREATE TABLE``; PostgreSQL's catalog makes all but one fail with a
    unique violation (``pg_type_typname_nsp_index``) or "already exists" (SQLite: an OperationalError
    "table ... already exists" when processes open a fresh file together). Creating the schema is
    idempotent once it exists, so the losers open the storage again after a short random pause.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_schema_race),
        stop=tenacity.stop_after_attempt(_SCHEMA_RACE_ATTEMPTS),
        wait=tenacity.wait_random(0.05, 0.2) + tenacity.wait_incrementing(0.0, 0.1),
        reraise=True,
    )
    return retrying(
        AtomicRDBStorage,
        url,
        engine_kwargs=dict(engine_kwargs),
        heartbeat_interval=interval,
        grace_period=grace,
        heartbeat_stale_trial_callback=callback,
        skip_table_creation=not create,
    )


def _schema_race(exc: BaseException) -> bool:
    """Whether opening failed only because another process created the same schema meanwhile."""
    if not isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                            sqlalchemy.exc.OperationalError)):
        return False
    text = str(exc).lower()
    return "already exists" in text or "duplicate key" in text or "unique" in text


def _tune_sqlite(storage) -> None:
    """WAL journal + ``synchronous=NORMAL`` on every connection of a SQLite study file.

    Why: with the default rollback journal every commit is an fsync and readers block the writer; a
    cheap trial does ~20 commits and several workers read while others write. WAL lets readers run
    beside the writer and makes a commit a sequential append (a power cut may lose the last
    transactions, never corrupt the file). SQLite files belong on a local disk (WAL needs shared
    memory between the processes), which is what the SQLite storage is for; use PostgreSQL across
    machines.
    """
    def on_connect(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened during Optuna's own setup predate the listener


def _with_retries(storage):
    """``storage`` behind the outage-riding wrapper of :mod:`.retry` (RDB storages)."""
    rdb = rdb_of(storage)
    if rdb is None:
        return storage
    return wrap(storage, mask_url(str(getattr(rdb, "url", "storage"))))


def open_storage(storage: Any, *, heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
                 grace_period: float | None = DEFAULT_GRACE_PERIOD,
                 create: bool = True):
    """A URL, a path or None (the default URL) opened by :func:`make_storage`; a storage object as is."""
    if isinstance(storage, (str, os.PathLike)) or storage is None:
        return make_storage(resolve_storage_url(storage and str(storage)), heartbeat_interval=heartbeat_interval,
                            grace_period=grace_period, create=create)
    return storage


# ------------------------------------------------------------------------------------------ study
def open_study(
    storage: Any,
    study_name: str = DEFAULT_STUDY_NAME,
    *,
    metrics: Sequence[str],
    higher_is_better: Sequence[bool],
    sampler=None,
    config: Mapping[str, Any] | None = None,
    search_space: Mapping[str, Sequence[Any]] | None = None,
    heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: float | None = DEFAULT_GRACE_PERIOD,
) -> StudyStore:
    """Create or load (``load_if_exists``) the shared study and record what it is about; its handle.

    ``storage`` is a URL (see :func:`make_storage`) or an Optuna storage object. Directions come from
    ``higher_is_better``; the metric names are set for optuna-dashboard; the config (passwords masked)
    and the search space are stored as study user attrs the first time. A study that exists with other
    directions, metrics or search space is refused (a ConfigError) before anything is asked.
    """
    problem = study_name_error(study_name)
    if problem:  # the storage would fail on it with a generic "invalid data in the commit"
        raise ConfigError("study.study_name", problem)
    storage = _with_retries(open_storage(storage, heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period))
    directions = ["maximize" if h else "minimize" for h in higher_is_better]
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                sampler=sampler, load_if_exists=True)
    _check_directions(study, directions, metrics)
    _check_metric_names(study, metrics)
    attrs = study.user_attrs
    if search_space is not None:
        _check_search_space(study, attrs, {k: list(v) for k, v in search_space.items()})
    if config is not None and "config" not in attrs:
        study.set_user_attr("config", mask_secrets(jsonable(config)))
    if "metrics" not in attrs:
        study.set_user_attr("metrics", list(metrics))
        study.set_user_attr("higher_is_better", [bool(h) for h in higher_is_better])
    return StudyStore(study)


def _check_directions(study: optuna.Study, directions: list[str], metrics: Sequence[str]) -> None:
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        raise ConfigError(
            "auto_distillation.search.higher_is_better",
            f"study {study.study_name!r} exists with directions {existing}, the config asks for {directions} "
            f"(metrics {list(metrics)}); use another study name",
        )


def _check_metric_names(study: optuna.Study, metrics: Sequence[str]) -> None:
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metrics))
    elif list(study.metric_names) != list(metrics):
        raise ConfigError(
            "auto_distillation.search.metrics",
            f"study {study.study_name!r} records metrics {study.metric_names}, the config asks for "
            f"{list(metrics)}; use another study name",
        )


def _check_search_space(study: optuna.Study, attrs: Mapping[str, Any], space: dict[str, list]) -> None:
    if "search_space" not in attrs:
        study.set_user_attr("search_space", space)
    elif attrs["search_space"] != space:
        # Trials store each value as its index in the space (Optuna categoricals), and the claim
        # protocol counts points by index: a changed space would silently reinterpret every stored
        # trial. Refuse before anything is asked.
        raise ConfigError(
            "auto_distillation.search.search_space",
            f"study {study.study_name!r} was created with a different search space "
            f"({_space_difference(attrs['search_space'], space)}); use another study name",
        )


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


def load_study(storage: Any, study_name: str | None = None) -> StudyStore:
    """Load an existing study (the only one in the storage when ``study_name`` is None); its handle.
    A URL or path is opened read-only: nothing is created (a ConfigError names what is missing)."""
    storage = open_storage(storage, create=False) if storage is not None else storage
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
        return StudyStore(optuna.load_study(study_name=study_name, storage=storage))
    except KeyError:
        raise ConfigError("study.study_name", f"no study {study_name!r} in the storage (has {names})") from None
