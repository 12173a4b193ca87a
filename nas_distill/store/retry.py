"""Ride out storage outages: retry the study's storage calls that fail for connection-level reasons.

A worker of a long search must not die because PostgreSQL restarted, a network link flapped or a SQLite
writer held the lock for a moment. :func:`wrap` puts the storage :func:`~nas_distill.store.open_study`
opens (Optuna's caching wrapper around an ``RDBStorage``) behind a retrying wrapper whose every call goes
through a :class:`StorageRetry`, which retries errors :func:`~nas_distill.store.classify.classify` calls
connection-level:

* ``'unreachable'``: exponential backoff (0.5 s doubling to 8 s, jittered) up to
  ``NAS_DISTILL_STORAGE_RETRY_S`` seconds per call (default 300). One warning line per outage, one line
  when the storage answers again, never a traceback per attempt.
* ``'busy'``: short quiet retries (20 ms doubling to 1 s).

Which calls are safe to retry after a commit whose acknowledgement was lost (the server committed, then
the connection died before the client heard it)?

* Reads, attribute / param / intermediate-value writes and heartbeats are upserts: a second write is a
  no-op.
* ``set_trial_state_values`` to a finished state: the retry finds the trial finished and Optuna raises
  ``UpdateFinishedTrialError``; the wrapper then reads the trial back, and when it holds exactly the
  state (and values) asked for, the first attempt landed and the call succeeds.
* ``create_new_trial`` (``study.ask()``, ``enqueue``): the retry creates a second trial; the first one is
  an orphan that nobody runs: RUNNING, no params, no heartbeat. The stale sweep
  (:mod:`nas_distill.store.stale`) fails RUNNING trials that never recorded a heartbeat once they are
  older than ``ORPHAN_AGE_S``, and a trial with no params is not retried, so an orphan holds a budget
  slot for a minute at most and never ends COMPLETE. The same sweep covers a WAITING retry whose pop
  (``WAITING -> RUNNING``) landed but was not acknowledged.

A worker that has just seen the storage come back does not sweep stale trials for a grace period (see
:meth:`StorageRetry.recovered_within`): during the outage nobody could beat, and the other workers need
one heartbeat interval to prove they are alive.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import random
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import optuna
import tenacity
from optuna.exceptions import UpdateFinishedTrialError

from ..errors import ConfigError
from ..vocabulary import DEFAULT_RETRY_SECONDS
from . import optuna_internals as internals
from .classify import BUSY, UNREACHABLE, classify, first_line
from .secrets import mask_url

__all__ = ["ENV_RETRY_SECONDS", "StorageRetry", "retry_seconds_from_env", "RetryingStorage", "wrap",
           "policy_of", "call", "innermost"]

log = logging.getLogger(__name__)

#: Environment variable: seconds a storage call keeps retrying before the error is raised.
ENV_RETRY_SECONDS = "NAS_DISTILL_STORAGE_RETRY_S"


def retry_seconds_from_env(default: float = DEFAULT_RETRY_SECONDS) -> float:
    """``NAS_DISTILL_STORAGE_RETRY_S`` as seconds (0 disables retries); ``default`` when unset."""
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


# ------------------------------------------------------------------------------------ the policy
class StorageRetry:
    """Backoff policy plus the outage state of one storage in this process (shared by its threads).

    Args:
        label: how the storage is named in log lines (a URL with its password masked).
        max_seconds: how long one call keeps retrying, counted from its first failure (default:
            ``NAS_DISTILL_STORAGE_RETRY_S`` or 300).
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
        # One Retrying for every call and thread: tenacity keeps each call's state in its own RetryCallState.
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: classify(exc) is not None),
            wait=self._wait, stop=self._stop, before_sleep=self._before_sleep, reraise=True)

    # -- outage bookkeeping (one warning per outage, one line when it ends)
    def note_failure(self, exc: BaseException, delay: float, attempt: int) -> None:
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
                self.outages += 1
            self._failures += 1
        message = f"storage unreachable ({self.label}): {mask_url(first_line(exc))}; " \
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

    # -- the tenacity hooks
    def _delay(self, kind: str, attempt: int) -> float:
        if kind == BUSY:
            ceiling = min(self.busy_max_delay, self.busy_base_delay * 2 ** min(attempt - 1, 10))
        else:
            ceiling = min(self.max_delay, self.base_delay * 2 ** min(attempt - 1, 10))
        return ceiling * random.uniform(0.5, 1.0)  # jitter: N workers do not retry in lock-step

    @staticmethod
    def _kind(state: tenacity.RetryCallState) -> str:
        return classify(state.outcome.exception()) or UNREACHABLE

    def _wait(self, state: tenacity.RetryCallState) -> float:
        if state.attempt_number == 1:
            state.first_failure = state.outcome_timestamp  # the retry window starts at the first failure
        return self._delay(self._kind(state), state.attempt_number)

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        failing_for = state.outcome_timestamp - state.first_failure
        if failing_for + state.upcoming_sleep <= self.max_seconds:
            return False
        kind = self._kind(state)
        if kind == UNREACHABLE or state.attempt_number > 1:
            log.error("storage %s (%s) for %.0f s: giving up: %s", kind, self.label, failing_for,
                      mask_url(first_line(state.outcome.exception())))
        return True

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc, delay, attempt = state.outcome.exception(), state.upcoming_sleep, state.attempt_number
        if self._kind(state) == UNREACHABLE:
            self.note_failure(exc, delay, attempt)
        else:
            log.debug("storage busy (%s): %s; retrying in %.2fs (attempt %d)", self.label, first_line(exc),
                      delay, attempt)
        if self._reset is not None:
            try:
                self._reset()
            except Exception:  # noqa: BLE001 - best effort: the retry opens a new session anyway
                log.debug("resetting the storage session failed", exc_info=True)

    # -- calls
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried on connection-level errors (see the module docstring).

        The first attempt is a plain call: every storage call of a trial goes through here, and
        tenacity's bookkeeping costs ~30 us a call, more than a cached read. Only a failure worth a
        retry enters it, as its first failed attempt."""
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if classify(exc) is None:
                raise
            first_failure = exc
        else:
            self.note_success()
            return result
        result = self._retrying(_replay_first(first_failure, fn), *args, **kwargs)
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


def _replay_first(error: BaseException, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, except that its first call raises ``error`` (the failure already seen) again."""
    pending = [error]

    def attempt(*args: Any, **kwargs: Any) -> Any:
        if pending:
            raise pending.pop()
        return fn(*args, **kwargs)

    return attempt


# ----------------------------------------------------------------------------------- the wrapper
def _values_match(stored: Sequence[float] | None, wanted: Sequence[float] | None) -> bool:
    if wanted is None:
        return True
    if stored is None or len(stored) != len(wanted):
        return False
    for a, b in zip(stored, wanted):
        a, b = float(a), float(b)
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            return False
    return True


#: Forwarded without the retry policy: no I/O of their own (session cleanup, a check on a read state,
#: settings).
_DIRECT = frozenset({"remove_session", "check_trial_is_updatable", "get_heartbeat_interval",
                     "get_heartbeat_stale_trial_callback", "get_failed_trial_callback"})


def _forwarded_names() -> list[str]:
    """The storage interface: every public method of Optuna's ``BaseStorage`` and ``BaseHeartbeat``
    (abstract or not: a backend's own version must run, not the base class's default), plus the
    private stale-trial query Optuna's heartbeat machinery calls."""
    names = {name for base in (optuna.storages.BaseStorage, internals.BaseHeartbeat)
             for name, _ in inspect.getmembers(base, inspect.isfunction) if not name.startswith("_")}
    return sorted(names | {internals.STALE_TRIAL_IDS})


def _forwarder(name: str, template: Callable[..., Any]) -> Callable[..., Any]:
    if name in _DIRECT:
        def method(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self._backend, name)(*args, **kwargs)
    else:
        def method(self, *args: Any, **kwargs: Any) -> Any:
            return self._retry.call(getattr(self._backend, name), *args, **kwargs)
    # The name, signature and docs of Optuna's method; not its ``__dict__``, which marks it abstract.
    return functools.update_wrapper(method, template, updated=())


class _RetryingBase:
    """The hand-written part of :class:`RetryingStorage`: what is more than a forwarded call."""

    def __init__(self, backend: Any, retry: StorageRetry):
        self._backend = backend  # as in Optuna's _CachedStorage: code that looks for the RDBStorage follows it
        self._retry = retry

    def __getattr__(self, name: str) -> Any:  # anything not forwarded (engine, url, ...)
        if name.startswith("__") or name in ("_backend", "_retry"):
            raise AttributeError(name)
        return getattr(self._backend, name)

    def set_trial_state_values(self, trial_id, state, values=None):
        attempts = 0

        def attempt():
            nonlocal attempts
            attempts += 1
            try:
                return self._backend.set_trial_state_values(trial_id, state=state, values=values)
            except UpdateFinishedTrialError:
                # A retry that finds the trial finished: did our previous attempt commit before the
                # connection died? Then the trial holds exactly what we asked for.
                if attempts > 1 and state.is_finished():
                    frozen = self._backend.get_trial(trial_id)
                    if frozen.state == state and _values_match(frozen.values, values):
                        log.info("trial id %s: the %s commit had landed before the connection dropped",
                                 trial_id, state.name)
                        return True
                raise

        return self._retry.call(attempt)

    def record_heartbeat(self, trial_id):
        return self._retry.once(self._backend.record_heartbeat, trial_id)  # the next beat is the retry


def _make_retrying_class() -> type:
    bases = (_RetryingBase, optuna.storages.BaseStorage, internals.BaseHeartbeat)
    namespace: dict[str, Any] = {"__doc__": "A storage that forwards every call to ``backend`` through a "
                                            ":class:`StorageRetry` (see the module docstring).",
                                 "__module__": __name__}
    for name in _forwarded_names():
        if name not in vars(_RetryingBase):
            template = getattr(optuna.storages.BaseStorage, name, None) or getattr(internals.BaseHeartbeat, name)
            namespace[name] = _forwarder(name, template)
    return type(optuna.storages.BaseStorage)("RetryingStorage", bases, namespace)


RetryingStorage = _make_retrying_class()


def _backends(storage: Any) -> Iterator[Any]:
    seen = 0
    while storage is not None and seen < 8:
        yield storage
        storage = internals.backend_of(storage)
        seen += 1


def innermost(storage: Any) -> Any:
    """The storage at the bottom of a chain of wrappers (``_backend`` attributes)."""
    chain = list(_backends(storage))
    return chain[-1] if chain else storage


def wrap(storage: Any, label: str, max_seconds: float | None = None) -> Any:
    """``storage`` behind a :class:`RetryingStorage` when it is (or wraps) an ``RDBStorage``.

    An ``RDBStorage`` is first put behind Optuna's own ``_CachedStorage`` (what ``optuna.create_study``
    would do with it), then behind the retrying wrapper. Already wrapped storages, journal and in-memory
    storages are returned as they are.
    """
    if policy_of(storage) is not None:
        return storage
    rdb = innermost(storage)
    if not isinstance(rdb, optuna.storages.RDBStorage):
        return storage
    if isinstance(storage, optuna.storages.RDBStorage):
        storage = internals.CachedStorage(storage)

    def reset() -> None:
        rdb.scoped_session.remove()  # this thread's session: the next call checks out a live connection

    return RetryingStorage(storage, StorageRetry(label, max_seconds=max_seconds, reset=reset))


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
