"""One handle on a study's storage: the Optuna study, the storage it talks to, the retry policy, the
heartbeat settings and the stale-trial handling, so that callers never reach into Optuna's objects."""

from __future__ import annotations

from typing import Any, Container, Iterable, Mapping

import optuna

from . import optuna_internals as internals
from .atomic import ANY_BEAT
from .attrs import finish_trial, rdb_of, set_user_attrs
from .budget import budget_position
from .heartbeat import Heartbeat, heartbeat_settings
from .retry import StorageRetry, call, policy_of
from .stale import fail_stale_trials, lost_running_trials, retry_trial

__all__ = ["StudyStore", "store_of"]


class StudyStore:
    """The handle :func:`~nas_distill.store.open_study` returns (:func:`store_of` builds one for any
    Optuna study).

    Attributes:
        study: the ``optuna.Study``.
        storage: the storage the study talks to (the retrying wrapper on SQL storages).
        study_id: the study's id in ``storage``.
        retry: the :class:`~nas_distill.store.retry.StorageRetry` of ``storage``, or None.
        rdb: the ``RDBStorage`` underneath, or None (journal, in-memory).
    """

    def __init__(self, study: optuna.Study):
        self.study = study
        self.storage = internals.study_storage(study)
        self.study_id: int = internals.study_id(study)
        self.retry: StorageRetry | None = policy_of(self.storage)
        self.rdb = rdb_of(self.storage)

    def __repr__(self) -> str:
        return f"StudyStore({self.study.study_name!r}, {type(self.storage).__name__})"

    # -- settings
    @property
    def heartbeat_interval(self) -> float | None:
        return heartbeat_settings(self.storage).interval

    @property
    def grace_period(self) -> float | None:
        return heartbeat_settings(self.storage).grace_period

    @property
    def sweeps(self) -> bool:
        """Whether stale trials can be told at all (heartbeats configured, or an SQL storage)."""
        return self.heartbeat_interval is not None or self.rdb is not None

    # -- reads and writes
    def call(self, fn, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` under the storage's retry policy (for direct calls on :attr:`rdb`)."""
        return call(self.storage, fn, *args, **kwargs)

    def all_trials(self, states: Container[optuna.trial.TrialState] | None = None, deepcopy: bool = False):
        """The study's trials (not copied by default: read-only use)."""
        return self.storage.get_all_trials(self.study_id, deepcopy=deepcopy, states=states)

    def trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(trial_id)

    def set_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        set_user_attrs(self.storage, trial_id, attrs)

    def finish_trial(self, trial_id: int, state, values=None, attrs: Mapping[str, Any] | None = None,
                     last_beat: Any = ANY_BEAT) -> bool:
        return finish_trial(self.storage, trial_id, state, values, attrs, last_beat)

    # -- heartbeats and dead workers
    def heartbeat(self, trial: Any, interval: float | None = None,
                  attrs: Mapping[str, Any] | None = None) -> Heartbeat:
        """``with handle.heartbeat(trial, attrs=...):`` keeps ``trial`` (a trial, frozen trial or trial
        id) beating while the body runs; the first beat and ``attrs`` are written on entry."""
        trial_id = trial if isinstance(trial, int) else internals.trial_id(trial)
        return Heartbeat(self.storage, trial_id, interval=interval, attrs=attrs)

    def fail_stale_trials(self) -> list[int]:
        return fail_stale_trials(self.study)

    def lost_running_trials(self) -> set[int]:
        return lost_running_trials(self.study)

    def retry_trial(self, trial, max_retry: int | None = 2) -> None:
        retry_trial(self.study, trial, max_retry)

    # -- budget
    def budget_position(self, number: int, trials: Iterable[Any] | None = None):
        return budget_position(self.study, number, trials)


def store_of(study: optuna.Study | StudyStore) -> StudyStore:
    """The handle of an Optuna study (a handle is returned as is)."""
    return study if isinstance(study, StudyStore) else StudyStore(study)
