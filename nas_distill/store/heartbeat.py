"""Heartbeats: a daemon thread keeps a running trial's heartbeat fresh, so the other workers can tell
a live trial from one whose worker died.

SQL storages use Optuna's heartbeat table (``record_heartbeat``). The journal has no heartbeat table, so
there the heartbeat is a trial system attr (:data:`HEARTBEAT_ATTR`, a Unix time).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping, NamedTuple

from .attrs import rdb_of, set_user_attrs
from .optuna_internals import backend_of, create_scoped_session, models
from .retry import call, innermost, policy_of
from .sql import jsonable, write_user_attrs

__all__ = ["HEARTBEAT_ATTR", "HeartbeatSettings", "heartbeat_settings", "attach_settings", "Heartbeat"]

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "nas_distill:heartbeat"
_SETTINGS_ATTR = "_nas_distill_heartbeat"


class HeartbeatSettings(NamedTuple):
    """Seconds between beats, seconds without a beat after which a trial is stale, and what retries a
    stale trial (``None``: not set)."""

    interval: float | None
    grace_period: float | None
    callback: Any


def attach_settings(storage: Any, settings: HeartbeatSettings) -> None:
    """Record on the storage object what our own sweep and heartbeat thread read (any storage)."""
    setattr(storage, _SETTINGS_ATTR, settings)


def heartbeat_settings(storage: Any) -> HeartbeatSettings:
    """The settings :func:`attach_settings` recorded on ``storage`` or the storage it wraps, else the
    ``RDBStorage``'s own."""
    inner = innermost(storage)  # optuna's _CachedStorage (and our retrying wrapper) wrap an RDBStorage
    for s in (storage, inner):
        settings = s.__dict__.get(_SETTINGS_ATTR) if hasattr(s, "__dict__") else None
        if settings is not None:
            return HeartbeatSettings(*settings)
    return HeartbeatSettings(getattr(inner, "heartbeat_interval", None), getattr(inner, "grace_period", None),
                             getattr(inner, "heartbeat_stale_trial_callback", None))


class Heartbeat:
    """Context manager: keep a trial's heartbeat fresh from a daemon thread while the trial runs.

    The first beat (with ``attrs`` as user attrs, in the same transaction on SQL storages) is written
    before ``__enter__`` returns, so a trial is never RUNNING without a heartbeat for longer than the
    ask -> enter window.
    """

    def __init__(self, storage: Any, trial_id: int, interval: float | None = None,
                 attrs: Mapping[str, Any] | None = None):
        self.storage = storage
        self.trial_id = trial_id
        self._first_attrs = dict(attrs) if attrs else None
        self.interval = float(interval or heartbeat_settings(storage).interval or 10)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """One beat, one attempt: during an outage the next beat is the retry (the outage is logged
        once, by :mod:`nas_distill.store.retry`, not per beat)."""
        storage = self.storage
        rdb = rdb_of(storage)
        retry = policy_of(storage)
        try:
            if rdb is not None and rdb.heartbeat_interval:
                if retry is not None:
                    retry.once(rdb.record_heartbeat, self.trial_id)
                else:
                    rdb.record_heartbeat(self.trial_id)
            elif retry is not None:
                retry.once(backend_of(storage).set_trial_system_attr, self.trial_id, HEARTBEAT_ATTR, time.time())
            else:
                storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
        except Exception as exc:  # noqa: BLE001 - a finished trial or a brief outage: keep beating
            log.debug("heartbeat of trial id %s failed: %s", self.trial_id, exc)

    def _beat_with_attrs(self, attrs: Mapping[str, Any]) -> bool:
        """First beat + user attrs in one RDB transaction (what ``record_heartbeat`` and
        ``set_trial_user_attr`` do, in one session). False: not an RDB storage with heartbeats; the
        caller then writes them separately."""
        rdb = rdb_of(self.storage)
        if rdb is None or not rdb.heartbeat_interval:
            return False
        values = {k: jsonable(v) for k, v in attrs.items()}

        def write() -> None:
            # Idempotent: attrs are upserts, and a heartbeat row already there (a retry after a commit
            # that landed) is an integrity error the session ignores.
            with create_scoped_session(rdb.scoped_session, True) as session:
                write_user_attrs(rdb, session, self.trial_id, values)
                session.add(models.TrialHeartbeatModel(trial_id=self.trial_id))

        call(self.storage, write)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> "Heartbeat":
        attrs, self._first_attrs = self._first_attrs, None
        if not (attrs and self._beat_with_attrs(attrs)):
            if attrs:
                set_user_attrs(self.storage, self.trial_id, attrs)
            self.beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
