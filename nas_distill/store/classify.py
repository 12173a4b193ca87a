"""Which storage errors are about the connection (worth a retry) and which are about the request.

* ``'unreachable'``: the server is gone or restarting (SQLAlchemy ``OperationalError`` / ``InterfaceError``
  / a DBAPI error that invalidated the connection, psycopg ``OperationalError``, SQLite "unable to open" /
  "disk I/O error").
* ``'busy'``: the request lost a race it may win next time (SQLite "database is locked", PostgreSQL
  serialization failures and deadlocks, a full connection pool).
* None: anything else (integrity or programming errors, Optuna's ``UpdateFinishedTrialError``, a missing
  study): retrying it would give the same answer.

A leaf module (drivers only): :mod:`nas_distill.errors` uses it to tell an environmental failure from
the architecture's own.
"""

from __future__ import annotations

import sqlite3
from typing import Iterator

import sqlalchemy.exc as sa_exc
from optuna.exceptions import StorageInternalError

try:
    import psycopg
except ImportError:  # pragma: no cover - PostgreSQL support not installed
    psycopg = None

__all__ = ["UNREACHABLE", "BUSY", "classify", "first_line", "storage_error_text"]

UNREACHABLE, BUSY = "unreachable", "busy"

_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")
_SQLITE_UNREACHABLE = ("unable to open database file", "disk i/o error")


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
    if isinstance(error, sqlite3.OperationalError):
        return _sqlite_kind(str(error))
    if psycopg is None:  # pragma: no cover
        return None
    if isinstance(error, (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
                          psycopg.errors.LockNotAvailable)):
        return BUSY
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        return UNREACHABLE
    return None


def _sqlalchemy_kind(error: sa_exc.DBAPIError) -> str | None:
    orig = error.orig
    kind = _dbapi_kind(orig) if orig is not None else None
    if kind is not None:
        return kind
    if orig is not None and type(orig).__module__ == "sqlite3":
        return None  # an SQLite error that is not about locks or files
    if error.connection_invalidated or isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return UNREACHABLE
    return None


def classify(exc: BaseException) -> str | None:
    """``'unreachable'``, ``'busy'`` or None (not a connection-level error: do not retry)."""
    for error in _chain(exc):
        if isinstance(error, (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.DataError)):
            return None
        if isinstance(error, sa_exc.DBAPIError):
            return _sqlalchemy_kind(error)
        if isinstance(error, sa_exc.TimeoutError):  # QueuePool exhausted
            return BUSY
        if isinstance(error, sa_exc.PendingRollbackError) and "invalid transaction" in str(error):
            return UNREACHABLE
        kind = _dbapi_kind(error)
        if kind is not None:
            return kind
    return None


def first_line(exc: BaseException) -> str:
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
    if not any(isinstance(error, StorageInternalError) for error in _chain(exc)):
        return None
    return f"storage error: {first_line(exc)}"
