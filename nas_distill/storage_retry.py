"""Ride out storage outages: retry the study's storage calls that fail for connection-level reasons.

A worker of a long search must not die because PostgreSQL restarted, a network link flapped or a SQLite
writer held the lock for a moment. :class:`RetryingStorage` wraps the storage :func:`nas_distill.study.
open_study` opens (Optuna's caching wrapper around an ``RDBStorage``) and retries each call whose error is
about the connection, not the request (:func:`classify`):

* ``'unreachable'``: the server is gone or restarting (SQLAlchemy ``OperationalError`` / ``InterfaceError``
  / a DBAPI error that invalidated the connection, psycopg ``OperationalError``, SQLite "unable to open" /
  "disk I/O error"). Exponential backoff (0.5 s doubling to 8 s, jittered) up to
  ``NAS_DISTILL_STORAGE_RETRY_S`` seconds per call (default 300). One warning line per outage, one line
  when the storage answers again, never a traceback per attempt.
* ``'busy'``: the request lost a race it may win next time (SQLite "database is locked", PostgreSQL
  serialization failures and deadlocks, a full connection pool). Short quiet retries.

Anything else (integrity or programming errors, Optuna's ``UpdateFinishedTrialError``, a missing study)
is raised at once: retrying it would give the same answer.

Which calls are safe to retry after a commit whose acknowledgement was lost (the server committed, then
the connection died before the client heard it)?

* Reads, attribute / param / intermediate-value writes and heartbeats are upserts: a second write is a
  no-op.
* ``set_trial_state_values`` to a finished state: the retry finds the trial finished and Optuna raises
  ``UpdateFinishedTrialError``. :meth:`RetryingStorage.set_trial_state_values` then reads the trial back:
  when it holds exactly the state (and values) we asked for, our first attempt landed and the call
  succeeds.
* ``create_new_trial`` (``study.ask()``, ``enqueue``): the retry creates a second trial; the first one is
  an orphan that nobody runs: RUNNING, no params, no heartbeat. :func:`nas_distill.study.fail_stale_trials`
  fails RUNNING trials that never recorded a heartbeat once they are older than
  ``study.ORPHAN_AGE_S`` (and :class:`~nas_distill.study.RetryStaleTrial` does not retry a trial with no
  params), so an orphan holds a budget slot for a minute at most and never ends COMPLETE. The same
  sweep covers a WAITING retry whose pop (``WAITING -> RUNNING``) landed but was not acknowledged.

A worker that has just seen the storage come back does not sweep stale trials for a grace period (see
:meth:`StorageRetry.recovered_within`): during the outage nobody could beat, and the other workers need
one heartbeat interval to prove they are alive.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from .vocabulary import DEFAULT_RETRY_SECONDS

log = logging.getLogger(__name__)

#: Environment variable: seconds a storage call keeps retrying before the error is raised.
ENV_RETRY_SECONDS = "NAS_DISTILL_STORAGE_RETRY_S"
UNREACHABLE, BUSY = "unreachable", "busy"

_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")
_SQLITE_UNREACHABLE = ("unable to open database file", "disk i/o error")


def retry_seconds_from_env(default: float = DEFAULT_RETRY_SECONDS) -> float:
    """``NAS_DISTILL_STORAGE_RETRY_S`` as seconds (0 disables retries); ``default`` when unset."""
    from .errors import ConfigError

    raw = os.environ.get(ENV_RETRY_SECONDS, "").strip()
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise ConfigError(ENV_RETRY_SECONDS, f"expected a number of seconds >= 0, got {raw!r}")
    return value


# ------------------------------------------------------------------------------- classification
def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its causes / contexts (Optuna wraps SQLAlchemy errors in ``StorageInternalError``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 12:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _sqlite_kind(message: str) -> str | None:
    text = message.lower()
    if any(m in text for m in _SQLITE_BUSY):
        return BUSY
    if any(m in text for m in _SQLITE_UNREACHABLE):
        return UNREACHABLE
    return None  # "no such table", syntax errors, ...: not transient


def _dbapi_kind(error: BaseException) -> str | None:
    """Kind of a raw driver error (sqlite3 / psycopg), or None."""
    import sqlite3

    if isinstance(error, sqlite3.OperationalError):
        return _sqlite_kind(str(error))
    try:
        import psycopg
    except ImportError:  # pragma: no cover - PostgreSQL support not installed
        return None
    if isinstance(error, (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
                          psycopg.errors.LockNotAvailable)):
        return BUSY
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        return UNREACHABLE
    return None


def classify(exc: BaseException) -> str | None:
    """``'unreachable'``, ``'busy'`` or None (not a connection-level error: do not retry)."""
    try:
        import sqlalchemy.exc as sa_exc
    except ImportError:  # pragma: no cover - sqlalchemy comes with optuna
        sa_exc = None
    for error in _chain(exc):
        if sa_exc is not None:
            if isinstance(error, (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.DataError)):
                return None
            if isinstance(error, sa_exc.DBAPIError):
                orig = error.orig
                kind = _dbapi_kind(orig) if orig is not None else None
                if kind is not None:
                    return kind
                if orig is not None and type(orig).__module__ == "sqlite3":
                    return None  # an SQLite error that is not about locks or files
                if error.connection_invalidated or isinstance(error, (sa_exc.OperationalError,
                                                                      sa_exc.InterfaceError)):
                    return UNREACHABLE
                return None
            if isinstance(error, sa_exc.TimeoutError):  # QueuePool exhausted
                return BUSY
            if isinstance(error, sa_exc.PendingRollbackError) and "invalid transaction" in str(error):
                return UNREACHABLE
        kind = _dbapi_kind(error)
        if kind is not None:
            return kind
    return None


def _first_line(exc: BaseException) -> str:
    """The first line of the driver's message (SQLAlchemy and Optuna wrap it), else of ``exc``'s."""
    text = ""
    for error in _chain(exc):
        orig = getattr(error, "orig", None)
        if orig is not None:
            text = str(orig)
            break
        if _dbapi_kind(error) is not None:
            text = str(error)
            break
    text = (text or str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def storage_error_text(exc: BaseException) -> str | None:
    """``'storage error: <the driver's message>'`` when ``exc`` is Optuna's generic storage error
    (``StorageInternalError``: "invalid data in the commit, e.g. exceeding max length", whatever the
    cause: a read-only file, a server gone past the retry window...), else None."""
    try:
        from optuna.exceptions import StorageInternalError
    except ImportError:  # pragma: no cover
        return None
    if not any(isinstance(error, StorageInternalError) for error in _chain(exc)):
        return None
    return f"storage error: {_first_line(exc)}"


# ------------------------------------------------------------------------------------ the policy
class StorageRetry:
    """Backoff policy plus the outage state of one storage in this process (shared by its threads).

    Args:
        label: how the storage is named in log lines (a URL with its password masked).
        max_seconds: how long one call keeps retrying (default: ``NAS_DISTILL_STORAGE_RETRY_S`` or 300).
        reset: called before each retry (drops this thread's dead session).
    """

    base_delay = 0.5
    max_delay = 8.0
    busy_base_delay = 0.02
    busy_max_delay = 1.0

    def __init__(self, label: str, max_seconds: float | None = None,
                 reset: Callable[[], None] | None = None):
        self.label = label
        self.max_seconds = retry_seconds_from_env() if max_seconds is None else float(max_seconds)
        self._reset = reset
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic time of the first failure of this outage
        self._failures = 0
        self.recovered_at: float | None = None  # monotonic time the last outage ended
        self.outages = 0

    # -- outage bookkeeping (one warning per outage, one line when it ends)
    def note_failure(self, exc: BaseException, delay: float, attempt: int) -> None:
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
                self.outages += 1
            self._failures += 1
        message = f"storage unreachable ({self.label}): {_mask(_first_line(exc))}; " \
                  f"retrying in {delay:.1f}s (attempt {attempt})"
        if first:
            log.warning(message)
        else:
            log.debug(message)

    def note_success(self) -> None:
        if self._down_since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self._down_since is None:
                return
            now = time.monotonic()
            seconds, failures = now - self._down_since, self._failures
            self._down_since, self._failures, self.recovered_at = None, 0, now
        log.warning("storage reachable again (%s) after %.1f s (%d failed attempts)", self.label, seconds,
                    failures)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def recovered_within(self, seconds: float) -> bool:
        """Whether the storage is down now or came back less than ``seconds`` ago."""
        if self._down_since is not None:
            return True
        return self.recovered_at is not None and time.monotonic() - self.recovered_at < seconds

    # -- calls
    def _delay(self, kind: str, attempt: int) -> float:
        if kind == BUSY:
            ceiling = min(self.busy_max_delay, self.busy_base_delay * 2 ** min(attempt - 1, 10))
        else:
            ceiling = min(self.max_delay, self.base_delay * 2 ** min(attempt - 1, 10))
        return ceiling * random.uniform(0.5, 1.0)  # jitter: N workers do not retry in lock-step

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried on connection-level errors (see the module docstring)."""
        attempt = 0
        started: float | None = None
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                kind = classify(exc)
                if kind is None:
                    raise
                now = time.monotonic()
                started = now if started is None else started
                attempt += 1
                delay = self._delay(kind, attempt)
                if now - started + delay > self.max_seconds:
                    if kind == UNREACHABLE or attempt > 1:
                        log.error("storage %s (%s) for %.0f s: giving up: %s", kind, self.label, now - started,
                                  _mask(_first_line(exc)))
                    raise
                if kind == UNREACHABLE:
                    self.note_failure(exc, delay, attempt)
                else:
                    log.debug("storage busy (%s): %s; retrying in %.2fs (attempt %d)", self.label,
                              _first_line(exc), delay, attempt)
                if self._reset is not None:
                    try:
                        self._reset()
                    except Exception:  # noqa: BLE001 - best effort: the retry opens a new session anyway
                        log.debug("resetting the storage session failed", exc_info=True)
                time.sleep(delay)
                continue
            self.note_success()
            return result

    def once(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One attempt (heartbeats: the next beat is the retry); the outage state is kept up to date."""
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if classify(exc) == UNREACHABLE:
                self.note_failure(exc, 0.0, 1)
            raise
        self.note_success()
        return result


def _mask(text: str) -> str:
    from .study import mask_url

    return mask_url(text)


# ----------------------------------------------------------------------------------- the wrapper
def _values_match(stored: Sequence[float] | None, wanted: Sequence[float] | None) -> bool:
    import math

    if wanted is None:
        return True
    if stored is None or len(stored) != len(wanted):
        return False
    for a, b in zip(stored, wanted):
        a, b = float(a), float(b)
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            return False
    return True


def _make_retrying_class():
    from optuna.storages import BaseStorage
    from optuna.storages._heartbeat import BaseHeartbeat

    class RetryingStorage(BaseStorage, BaseHeartbeat):
        """A storage that forwards every call to ``backend`` through a :class:`StorageRetry`.

        ``_backend`` is the wrapped storage (as in Optuna's ``_CachedStorage``), so code that looks for
        the ``RDBStorage`` underneath follows the chain.
        """

        def __init__(self, backend: Any, retry: StorageRetry):
            self._backend = backend
            self._retry = retry

        def __getattr__(self, name: str) -> Any:  # anything not proxied below (engine, url, ...)
            if name.startswith("__") or name in ("_backend", "_retry"):
                raise AttributeError(name)
            return getattr(self._backend, name)

        def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
            return self._retry.call(getattr(self._backend, name), *args, **kwargs)

        # -- studies
        def create_new_study(self, directions, study_name=None):
            return self._call("create_new_study", directions, study_name)

        def delete_study(self, study_id):
            return self._call("delete_study", study_id)

        def set_study_user_attr(self, study_id, key, value):
            return self._call("set_study_user_attr", study_id, key, value)

        def set_study_system_attr(self, study_id, key, value):
            return self._call("set_study_system_attr", study_id, key, value)

        def get_study_id_from_name(self, study_name):
            return self._call("get_study_id_from_name", study_name)

        def get_study_name_from_id(self, study_id):
            return self._call("get_study_name_from_id", study_id)

        def get_study_directions(self, study_id):
            return self._call("get_study_directions", study_id)

        def get_study_user_attrs(self, study_id):
            return self._call("get_study_user_attrs", study_id)

        def get_study_system_attrs(self, study_id):
            return self._call("get_study_system_attrs", study_id)

        def get_all_studies(self):
            return self._call("get_all_studies")

        # -- trials
        def create_new_trial(self, study_id, template_trial=None):
            return self._call("create_new_trial", study_id, template_trial)

        def set_trial_param(self, trial_id, param_name, param_value_internal, distribution):
            return self._call("set_trial_param", trial_id, param_name, param_value_internal, distribution)

        def get_trial_id_from_study_id_trial_number(self, study_id, trial_number):
            return self._call("get_trial_id_from_study_id_trial_number", study_id, trial_number)

        def get_trial_number_from_id(self, trial_id):
            return self._call("get_trial_number_from_id", trial_id)

        def get_trial_param(self, trial_id, param_name):
            return self._call("get_trial_param", trial_id, param_name)

        def set_trial_state_values(self, trial_id, state, values=None):
            from optuna.exceptions import UpdateFinishedTrialError

            attempts = [0]

            def attempt():
                attempts[0] += 1
                try:
                    return self._backend.set_trial_state_values(trial_id, state=state, values=values)
                except UpdateFinishedTrialError:
                    # A retry that finds the trial finished: did our previous attempt commit before the
                    # connection died? Then the trial holds exactly what we asked for.
                    if attempts[0] > 1 and state.is_finished():
                        frozen = self._backend.get_trial(trial_id)
                        if frozen.state == state and _values_match(frozen.values, values):
                            log.info("trial id %s: the %s commit had landed before the connection dropped",
                                     trial_id, state.name)
                            return True
                    raise

            return self._retry.call(attempt)

        def set_trial_intermediate_value(self, trial_id, step, intermediate_value):
            return self._call("set_trial_intermediate_value", trial_id, step, intermediate_value)

        def set_trial_user_attr(self, trial_id, key, value):
            return self._call("set_trial_user_attr", trial_id, key, value)

        def set_trial_system_attr(self, trial_id, key, value):
            return self._call("set_trial_system_attr", trial_id, key, value)

        def get_trial(self, trial_id):
            return self._call("get_trial", trial_id)

        def get_all_trials(self, study_id, deepcopy=True, states=None):
            return self._call("get_all_trials", study_id, deepcopy=deepcopy, states=states)

        def get_n_trials(self, study_id, state=None):
            return self._call("get_n_trials", study_id, state)

        def get_best_trial(self, study_id):
            return self._call("get_best_trial", study_id)

        def get_trial_params(self, trial_id):
            return self._call("get_trial_params", trial_id)

        def get_trial_user_attrs(self, trial_id):
            return self._call("get_trial_user_attrs", trial_id)

        def get_trial_system_attrs(self, trial_id):
            return self._call("get_trial_system_attrs", trial_id)

        def remove_session(self):
            return self._backend.remove_session()

        def check_trial_is_updatable(self, trial_id, trial_state):
            return self._backend.check_trial_is_updatable(trial_id, trial_state)

        # -- heartbeats (Optuna's BaseHeartbeat)
        def record_heartbeat(self, trial_id):
            return self._retry.once(self._backend.record_heartbeat, trial_id)

        def _get_stale_trial_ids(self, study_id):
            return self._call("_get_stale_trial_ids", study_id)

        def get_heartbeat_interval(self):
            return self._backend.get_heartbeat_interval()

        def get_heartbeat_stale_trial_callback(self):
            return self._backend.get_heartbeat_stale_trial_callback()

    return RetryingStorage


_RETRYING_CLASS = None


def retrying_class():
    """The :class:`RetryingStorage` class (built on first use: Optuna is imported lazily)."""
    global _RETRYING_CLASS
    if _RETRYING_CLASS is None:
        _RETRYING_CLASS = _make_retrying_class()
    return _RETRYING_CLASS


def _backends(storage: Any) -> Iterator[Any]:
    seen = 0
    while storage is not None and seen < 8:
        yield storage
        storage = storage.__dict__.get("_backend") if hasattr(storage, "__dict__") else None
        seen += 1


def innermost(storage: Any) -> Any:
    """The storage at the bottom of a chain of wrappers (``_backend`` attributes)."""
    last = storage
    for last in _backends(storage):
        pass
    return last


def wrap(storage: Any, label: str, max_seconds: float | None = None) -> Any:
    """``storage`` behind a :class:`RetryingStorage` when it is (or wraps) an ``RDBStorage``.

    An ``RDBStorage`` is first put behind Optuna's own ``_CachedStorage`` (what ``optuna.create_study``
    would do with it), then behind the retrying wrapper. Already wrapped storages, journal and in-memory
    storages are returned as they are.
    """
    import optuna

    if policy_of(storage) is not None:
        return storage
    rdb = innermost(storage)
    if not isinstance(rdb, optuna.storages.RDBStorage):
        return storage
    if isinstance(storage, optuna.storages.RDBStorage):
        storage = optuna.storages._CachedStorage(storage)

    def reset() -> None:
        rdb.scoped_session.remove()  # this thread's session: the next call checks out a live connection

    return retrying_class()(storage, StorageRetry(label, max_seconds=max_seconds, reset=reset))


def policy_of(storage: Any) -> StorageRetry | None:
    """The :class:`StorageRetry` of a wrapped storage (anywhere in its chain), else None."""
    for s in _backends(storage):
        retry = s.__dict__.get("_retry") if hasattr(s, "__dict__") else None
        if isinstance(retry, StorageRetry):
            return retry
    return None


def call(storage: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the retry policy of ``storage`` (a plain call when it has none).

    For code that talks to the ``RDBStorage`` underneath directly (batched writes in one session).
    """
    retry = policy_of(storage)
    if retry is None:
        return fn(*args, **kwargs)
    return retry.call(fn, *args, **kwargs)
