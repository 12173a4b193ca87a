"""The trial budget, counted in the study so that every worker agrees on it.

A trial may train only if fewer than ``max_trials`` *counted* trials come before it, where a trial is
counted when it is COMPLETE or WAITING, or RUNNING with a lower number. Trial numbers follow creation
order and a trial never leaves FAIL, so of any ``max_trials + 1`` trials that end COMPLETE, the
highest-numbered one saw all the others alive (COMPLETE, RUNNING with a lower number, or still WAITING)
at its check and was refused: the study never holds more than ``max_trials`` counted COMPLETE trials,
whatever the concurrency. Counting every WAITING trial (the retries of dead or interrupted trials)
reserves their slots, and a worker that must wait for a slot while a retry is WAITING gives its own
trial up and pops the retry instead (see :mod:`nas_distill.runner`), so a dead worker's architecture is
always trained, and nobody deadlocks. Trials answered from the store (``duplicate_of``) or imported from
an earlier run (``imported_from``) are not counted: they cost no training.
"""

from __future__ import annotations

from typing import Any, Iterable

import optuna
from optuna.trial import TrialState

from . import optuna_internals as internals

__all__ = ["BUDGET_ATTR", "UNCOUNTED_ATTRS", "record_budget", "recorded_budget", "is_counted",
           "counted_complete", "budget_position"]

BUDGET_ATTR = "max_trials"
#: User attrs that mark a COMPLETE trial as not having cost a training slot.
UNCOUNTED_ATTRS = ("duplicate_of", "imported_from")
_STATES = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL, TrialState.PRUNED)


def record_budget(study: optuna.Study, max_trials: int) -> None:
    """Record the budget the workers run to (a ``--max-trials`` override included) in the study, so
    ``status`` and the progress bar show the budget in force rather than the config's."""
    if study.user_attrs.get(BUDGET_ATTR) != int(max_trials):
        study.set_user_attr(BUDGET_ATTR, int(max_trials))


def recorded_budget(study: optuna.Study) -> int | None:
    value = study.user_attrs.get(BUDGET_ATTR)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def is_counted(trial) -> bool:
    """Whether a trial occupies a budget slot (see the module docstring)."""
    return not any(k in trial.user_attrs for k in UNCOUNTED_ATTRS)


def counted_complete(trials: Iterable[Any]) -> int:
    """Number of COMPLETE trials that cost a training slot."""
    return sum(1 for t in trials if t.state == TrialState.COMPLETE and is_counted(t))


def budget_position(study: optuna.Study, number: int,
                    trials: Iterable[Any] | None = None) -> tuple[int, int, list[Any]]:
    """``(ahead, complete, trials)`` for trial ``number``.

    ``trials``: the study's trials as read at any time after trial ``number`` was created (other states
    than the five below are ignored); by default they are read now.

    ``ahead``: counted COMPLETE and WAITING trials plus counted RUNNING trials numbered below ``number``;
    the trial may train iff ``ahead < max_trials``. ``complete``: counted COMPLETE trials. ``trials``:
    the COMPLETE / RUNNING / WAITING / FAIL / PRUNED trials read (one read; callers reuse them, e.g. to
    spot architectures already measured, already failed or stopped early).
    """
    if trials is None:
        trials = internals.study_storage(study).get_all_trials(internals.study_id(study), deepcopy=False,
                                                               states=_STATES)
    else:
        trials = [t for t in trials if t.state in _STATES]
    complete = 0
    ahead = 0
    for t in trials:
        if t.state in (TrialState.FAIL, TrialState.PRUNED) or not is_counted(t):
            continue
        if t.state == TrialState.COMPLETE:
            complete += 1
            ahead += 1
        elif t.state == TrialState.WAITING or t.number < number:
            ahead += 1
    return ahead, complete, trials
