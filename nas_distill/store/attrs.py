"""Trial records: several user attrs in one write, a finish with its reason exactly once, who ran it."""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping

import optuna

from .atomic import ANY_BEAT, atomic_rdb
from .optuna_internals import create_scoped_session
from .retry import call, innermost
from .sql import jsonable, write_user_attrs

__all__ = ["rdb_of", "set_user_attrs", "finish_trial", "worker_identity"]


def rdb_of(storage: Any) -> optuna.storages.RDBStorage | None:
    """The RDBStorage behind ``storage`` (Optuna's caching wrapper, our retrying one), or None."""
    inner = innermost(storage)
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


def set_user_attrs(storage: Any, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Write several user attrs of one trial (values made JSON-safe), in one transaction on RDB
    (:func:`~nas_distill.store.sql.write_user_attrs`, an upsert: safe to retry after a lost
    acknowledgement); one by one elsewhere."""
    values = {key: jsonable(value) for key, value in attrs.items()}
    rdb = rdb_of(storage)
    if rdb is not None and len(values) > 1:
        def write() -> None:
            with create_scoped_session(rdb.scoped_session, True) as session:
                write_user_attrs(rdb, session, trial_id, values)

        call(storage, write)
        return
    for key, value in values.items():
        storage.set_trial_user_attr(trial_id, key, value)


def finish_trial(storage: Any, trial_id: int, state, values=None, attrs: Mapping[str, Any] | None = None,
                 last_beat: Any = ANY_BEAT) -> bool:
    """Finish a trial with ``attrs`` recorded on it, exactly once across every worker. ``last_beat``
    (SQL storages): finish only if the trial's heartbeat is still the one read (None: it never beat);
    :data:`~nas_distill.store.atomic.ANY_BEAT`: whatever its heartbeat.

    On SQL storages the attrs and the state change are one transaction, so a loser (the trial was
    finished by someone else first: ``UpdateFinishedTrialError``) leaves no attrs behind on the
    winner's trial. Elsewhere (the journal) the attrs are written first, then the state, which the
    journal's replay gives to the first writer only.
    """
    rdb = atomic_rdb(storage)
    values = None if values is None else [float(v) for v in values]
    if rdb is not None:
        return call(storage, rdb.finish_trial, trial_id, state, values,
                    {k: jsonable(v) for k, v in (attrs or {}).items()}, last_beat)
    if attrs:
        set_user_attrs(storage, trial_id, attrs)
    return storage.set_trial_state_values(trial_id, state=state, values=values)


def worker_identity() -> dict[str, Any]:
    """``{'host': ..., 'pid': ...}`` (plus the worker's label when one is set)."""
    ident: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    label = os.environ.get("NAS_DISTILL_WORKER")
    if label:
        ident["worker"] = label
    return ident
