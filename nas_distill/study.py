"""The study API as the trial loop, the workers and the reports call it today: an Optuna study in,
an Optuna study out. Everything lives in :mod:`nas_distill.store`; new code uses its handle
(``store.open_study(...)`` / ``store.store_of(study)``) instead of these functions."""

from __future__ import annotations

from typing import Any, Mapping

from .store import open as _open
from .store.atomic import ANY_BEAT
from .store.attrs import rdb_of as _rdb
from .store.attrs import worker_identity
from .store.budget import UNCOUNTED_ATTRS, budget_position, counted_complete, is_counted, record_budget, recorded_budget
from .store.files import artifact_store, check_writable
from .store.handle import store_of
from .store.heartbeat import HEARTBEAT_ATTR
from .store.heartbeat import heartbeat_settings as _heartbeat_settings
from .store.open import DEFAULT_STUDY_NAME, make_storage
from .store.secrets import PASSWORD_ENV_VARS, mask_secrets, mask_url
from .store.stale import (
    ORPHAN_AGE_S,
    RETRYABLE_ERRORS,
    RetryStaleTrial,
    fail_stale_trials,
    lost_running_trials,
    retry_trial,
)
from .store.urls import is_journal as _is_journal
from .store.urls import journal_path as _journal_path
from .store.urls import require_shared_storage, resolve_storage_url, storage_file
from .store.urls import sqlite_path as _sqlite_path

__all__ = [
    "ANY_BEAT", "DEFAULT_STUDY_NAME", "HEARTBEAT_ATTR", "ORPHAN_AGE_S", "PASSWORD_ENV_VARS", "RETRYABLE_ERRORS",
    "UNCOUNTED_ATTRS", "Heartbeat", "RetryStaleTrial", "artifact_store", "budget_position", "check_writable",
    "counted_complete", "fail_stale_trials", "finish_trial", "is_counted", "load_study", "lost_running_trials",
    "make_storage", "mask_secrets", "mask_url", "open_study", "record_budget", "recorded_budget",
    "require_shared_storage", "resolve_storage_url", "retry_trial", "set_user_attrs", "storage_file",
    "worker_identity", "_heartbeat_settings", "_rdb", "_is_journal", "_journal_path", "_sqlite_path",
]


def open_study(storage: Any, study_name: str = DEFAULT_STUDY_NAME, **kwargs: Any):
    """:func:`nas_distill.store.open_study`'s study."""
    return _open.open_study(storage, study_name, **kwargs).study


def load_study(storage: Any, study_name: str | None = None):
    """:func:`nas_distill.store.load_study`'s study."""
    return _open.load_study(storage, study_name).study


def Heartbeat(study, trial_id: int, interval: float | None = None,  # noqa: N802 - the class it was
              attrs: Mapping[str, Any] | None = None):
    return store_of(study).heartbeat(trial_id, interval=interval, attrs=attrs)


def set_user_attrs(study, trial_id: int, attrs: Mapping[str, Any]) -> None:
    store_of(study).set_user_attrs(trial_id, attrs)


def finish_trial(study, trial_id: int, state, values=None, attrs: Mapping[str, Any] | None = None,
                 last_beat: Any = ANY_BEAT) -> bool:
    return store_of(study).finish_trial(trial_id, state, values, attrs, last_beat)

