"""An SQL storage on which a trial's state changes hands exactly once: one finisher, one claimer.

Two workers may try to change one trial at the same moment: its owner tells COMPLETE while a stale
sweep (a late heartbeat) tells FAIL, or several workers pop the same WAITING retry. Exactly one must
win, and the others must hear that they lost, on every storage:

* ``RDBStorage`` reads the trial, checks it is unfinished, then writes. On PostgreSQL the read locks the
  row (``SELECT ... FOR UPDATE``), but SQLite has no row locks and runs the read outside the write
  transaction, so two processes both see RUNNING and both "win" (the COMPLETE and the FAIL both return
  True; the last write stays). :class:`AtomicRDBStorage` makes the change one conditional ``UPDATE ...
  WHERE state IN (<states it may leave>)``: the first statement of its write transaction, so the
  database itself picks the winner (SQLite's write lock, PostgreSQL's row lock), and the row count says
  who won.
* ``JournalStorage`` needs nothing: changes are appended to one log under a file lock and replayed in
  log order; the replay applies the first finish or claim of a trial only, and raises
  ``UpdateFinishedTrialError`` to (or returns False for) the writer whose entry came later.

A loser of a finish gets Optuna's ``UpdateFinishedTrialError`` (what ``RDBStorage`` raises for a trial
found finished); a loser of a claim gets ``False`` (Optuna's pop then tries the next WAITING trial).
"""

from __future__ import annotations

import datetime
from typing import Any, Sequence

import sqlalchemy.exc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from .optuna_internals import create_scoped_session, models
from .retry import innermost
from .sql import write_user_attrs, write_values

__all__ = ["ANY_BEAT", "AtomicRDBStorage", "atomic_rdb", "leavable_states"]

#: ``last_beat`` of :meth:`AtomicRDBStorage.finish_trial` meaning "whatever the trial's heartbeat".
ANY_BEAT = "any-beat"


def leavable_states(state: TrialState) -> tuple[TrialState, ...] | None:
    """The states a trial may be in for a change to ``state`` to happen; None: not a hand-over."""
    if state == TrialState.RUNNING:
        return (TrialState.WAITING,)
    if state.is_finished():
        return (TrialState.RUNNING, TrialState.WAITING)
    return None


def _finished_message(number: Any) -> str:
    return f"Trial#{number} has already finished and can not be updated."


class AtomicRDBStorage(RDBStorage):
    """``RDBStorage`` whose finishes and claims are one conditional update (see the module docstring)."""

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        return self.finish_trial(trial_id, state, values)

    def finish_trial(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None,
                     user_attrs: dict[str, Any] | None = None, last_beat: Any = ANY_BEAT) -> bool:
        """Move the trial to ``state`` (with ``values`` and, in the same transaction, ``user_attrs``)
        if nobody else did first. True: this call won. False: a claim (``RUNNING``) that another worker
        won, or a ``last_beat`` condition that failed. Raises ``UpdateFinishedTrialError`` when the trial
        is already finished.

        ``last_beat`` (the stale sweep's FAIL): the heartbeat the sweep read (None: no heartbeat row);
        the change happens only if no newer beat exists, in the same statement, so an owner that beat
        after the sweep's read (alive after all) keeps its trial."""
        sources = leavable_states(state)
        if sources is None:
            return super().set_trial_state_values(trial_id, state, values)
        try:
            with create_scoped_session(self.scoped_session) as session:
                change = (
                    session.query(models.TrialModel)
                    .filter(models.TrialModel.trial_id == trial_id)
                    .filter(models.TrialModel.state.in_(sources))
                )
                if last_beat is not ANY_BEAT:
                    beats = models.TrialHeartbeatModel
                    newer = session.query(beats.trial_id).filter(beats.trial_id == trial_id)
                    if last_beat is not None:
                        newer = newer.filter(beats.heartbeat > last_beat)
                    change = change.filter(~newer.exists())
                won = change.update({models.TrialModel.state: state}, synchronize_session=False)
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                if not won:
                    if trial.state.is_finished():
                        raise UpdateFinishedTrialError(_finished_message(trial.number))
                    return False  # claimed by another worker, or the owner beat again
                now = datetime.datetime.now()
                if state == TrialState.RUNNING:
                    trial.datetime_start = now
                else:
                    trial.datetime_complete = now
                if values is not None:
                    write_values(session, trial, values)
                if user_attrs:
                    write_user_attrs(self, session, trial_id, user_attrs, check=False)
        except sqlalchemy.exc.IntegrityError:
            return False
        return True


def atomic_rdb(storage: Any) -> AtomicRDBStorage | None:
    """The :class:`AtomicRDBStorage` under ``storage``'s wrappers, or None."""
    inner = innermost(storage)
    return inner if isinstance(inner, AtomicRDBStorage) else None
