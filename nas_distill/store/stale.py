"""Trials whose worker died: found by their heartbeat, failed with the reason, and retried.

Why our own sweep instead of only ``optuna.storages.fail_stale_trials``: it works on every storage, and
it writes the reason (``error_type='WorkerLost'``) on the dead trial before failing it, so reports can
say what happened. A failed stale trial is retried by :class:`RetryStaleTrial`: a WAITING copy with the
same params, which the next ``study.ask()`` of any worker pops, so the killed worker's architecture is
trained by another worker.

A RUNNING trial that never recorded a heartbeat (an orphan left by a retried ``create_new_trial`` whose
first commit had landed, see :mod:`nas_distill.store.retry`) is failed once it is :data:`ORPHAN_AGE_S`
old.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Mapping

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy import orm

from . import optuna_internals as internals
from .atomic import ANY_BEAT
from .attrs import finish_trial, rdb_of
from .heartbeat import HEARTBEAT_ATTR, heartbeat_settings
from .journal_lock import HolderJournalLock
from .retry import call, policy_of

__all__ = ["ORPHAN_AGE_S", "RETRYABLE_ERRORS", "RetryStaleTrial", "stale_trial_beats", "lost_running_trials",
           "fail_stale_trials",
           "retry_trial"]

log = logging.getLogger(__name__)

#: Error types of failures that say nothing about the architecture: the arch is tried again.
RETRYABLE_ERRORS = ("WorkerLost", "Interrupted", "ConfigError", "Environment")
#: Age (s, at least the grace period) after which a RUNNING trial that never beat is an orphan: no worker
#: runs it (every worker's first beat follows its ask within the sampler's time, far less than this).
ORPHAN_AGE_S = 60.0


def _orphan_age(grace_period: float) -> float:
    return max(float(ORPHAN_AGE_S), float(grace_period))


def _rdb_stale_trial_beats(rdb, study_id: int, grace_period: float) -> dict[int, Any]:
    """RUNNING trials whose last heartbeat (server time) is older than the grace period, and orphans:
    RUNNING trials with no heartbeat at all, started (client time) more than :func:`_orphan_age` ago;
    each with the heartbeat read (None for an orphan), which the sweep's FAIL requires to be still the
    last one (see :meth:`~nas_distill.store.atomic.AtomicRDBStorage.finish_trial`).

    One session, the same two statements as Optuna's ``RDBStorage._get_stale_trial_ids`` (which skips
    trials that never beat, so an orphan would stay RUNNING forever).
    """
    models = internals.models
    stale: dict[int, Any] = {}
    orphan_limit = datetime.timedelta(seconds=_orphan_age(grace_period))
    grace = datetime.timedelta(seconds=grace_period)
    with internals.create_scoped_session(rdb.scoped_session, True) as session:
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


def stale_trial_beats(storage: Any, study_id: int, grace_period: float) -> dict[int, Any]:
    """Stale RUNNING trials: ``{trial id: the heartbeat read}`` on SQL storages (see
    :func:`_rdb_stale_trial_beats`), ``{trial id: ANY_BEAT}`` elsewhere."""
    rdb = rdb_of(storage)
    if rdb is not None:
        if not rdb.heartbeat_interval:
            return {}
        return call(storage, _rdb_stale_trial_beats, rdb, study_id, grace_period)
    now = time.time()
    stale = {}
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        if beat is None and trial.datetime_start is not None:
            beat = trial.datetime_start.timestamp()
        if beat is not None and now - float(beat) > grace_period:
            stale[internals.trial_id(trial)] = ANY_BEAT
    return stale


def lost_running_trials(study: optuna.Study) -> set[int]:
    """Ids of RUNNING trials whose heartbeat is older than the study's grace period (as recorded in its
    config, else the storage's): their workers are gone, and the next sweep of a live worker fails them.
    What a reader of the study (``status``) shows instead of "running"."""
    storage = internals.study_storage(study)
    grace = heartbeat_settings(storage).grace_period
    config = study.user_attrs.get("config")
    stored = ((config or {}).get("auto_distillation", {}).get("study") or {}).get("grace_period") \
        if isinstance(config, Mapping) else None
    grace = stored if isinstance(stored, (int, float)) and stored > 0 else grace
    return set(stale_trial_beats(storage, internals.study_id(study), float(grace or 30)))


def _journal_stalled_within(storage: Any, seconds: float) -> bool:
    """Whether ``storage`` is a journal whose lock was stuck (a wait longer than
    :data:`~nas_distill.store.journal_lock.STALL_S`) less than ``seconds`` ago. Takes the lock once
    itself, so a sweep that starts during a stall waits it out and sees it."""
    lock = internals.journal_lock_of(storage)
    if not isinstance(lock, HolderJournalLock):
        return False
    lock.acquire()
    lock.release()
    return lock.stall_ended is not None and time.monotonic() - lock.stall_ended < seconds


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose heartbeat is older than the grace period FAIL, and retry their archs.

    Safe to call from every worker at once: only the caller whose state change wins runs the retry, so
    each dead trial is retried exactly once. Returns the trial numbers this call failed.
    """
    storage = internals.study_storage(study)
    interval, grace, callback = heartbeat_settings(storage)
    if interval is None and rdb_of(storage) is None:
        return []
    grace = float(grace if grace is not None else 2 * float(interval or 10))
    retry = policy_of(storage)
    # Right after an outage nobody's heartbeat is fresh: give the live workers a grace period (and a
    # beat) to prove it before failing their trials.
    settle = grace + float(interval or 10)
    if retry is not None and retry.recovered_within(settle):
        return []
    if _journal_stalled_within(storage, settle):
        return []  # nobody could write a heartbeat while the journal's lock was stuck
    stale = stale_trial_beats(storage, internals.study_id(study), grace)
    if stale and retry is not None and retry.recovered_within(settle):
        return []  # the read above was the first call to get through
    failed = []
    reason = {"error_type": "WorkerLost",
              "error": f"no heartbeat for more than {grace:g} s: the worker died or hung "
                       f"(or, never beating after {_orphan_age(grace):g} s, nobody ever ran it)"}
    for trial_id, beat in stale.items():
        try:
            # Only if no beat came since the read above: an owner that proved alive meanwhile keeps it.
            if finish_trial(storage, trial_id, TrialState.FAIL, attrs=reason, last_beat=beat):
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


class RetryStaleTrial:
    """Failed-trial callback: enqueue a WAITING copy of the trial (same params) so its arch is retried.

    Like ``optuna.storages.RetryFailedTrialCallback`` (the same ``failed_trial`` / ``retry_history``
    system attrs, so ``RetryFailedTrialCallback.retried_trial_number`` works), but the copy starts with
    clean user attrs plus ``retry_of``, and at most ``max_retry`` retries per original trial.
    """

    def __init__(self, max_retry: int | None = 2):
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial) -> None:
        if not trial.params:
            # An orphan of a retried create_new_trial (see nas_distill.store.retry): no arch to retry.
            log.info("trial %d: no params, nothing to retry", trial.number)
            return
        history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
        if self.max_retry is not None and len(history) > self.max_retry:
            log.warning("trial %d: not retried again (%d retries already)", trial.number, len(history) - 1)
            return
        system_attrs = {"failed_trial": history[0], "retry_history": history}
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={"retry_of": trial.number},
                system_attrs=system_attrs,
            )
        )


def retry_trial(study: optuna.Study, trial, max_retry: int | None = 2) -> None:
    """Enqueue a retry of ``trial`` (used for interrupted trials, which are not stale)."""
    callback = heartbeat_settings(internals.study_storage(study)).callback
    (callback if isinstance(callback, RetryStaleTrial) else RetryStaleTrial(max_retry))(study, trial)
