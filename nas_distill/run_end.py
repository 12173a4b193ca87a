"""The end of one worker's run: leave no trial behind (:func:`settle`) and say whether the study met
its budget (:func:`budget_met`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState

from .store import StudyStore
from .store.budget import counted_complete
from .store.optuna_internals import trial_id
from .vocabulary import stopped_early

log = logging.getLogger(__name__)


def budget_met(store: StudyStore, max_trials: int, space: Any) -> tuple[int, bool]:
    """``(counted COMPLETE trials of the whole study, whether it met its budget)``: ``max_trials``
    counted COMPLETE trials, or every point of a smaller ``space`` (the searcher's, or None) COMPLETE or
    stopped early by the pruner (a stopped arch is never trained again: the search has seen it)."""
    trials = store.all_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    complete = counted_complete(trials)
    decided = [t for t in trials if t.state == TrialState.COMPLETE or stopped_early(t)]
    wanted = min(max_trials, len(space)) if space is not None else max_trials
    met = complete >= wanted or (
        space is not None and len({json.dumps(t.params, sort_keys=True) for t in decided}) >= len(space))
    return complete, met


def settle(store: StudyStore, sweep: Callable[[], None], poll: float = 0.5) -> None:
    """Budget spent: leave no trial RUNNING or WAITING behind.

    A trial still RUNNING now is another worker's trial on its way to being discarded (seconds), or
    the trial of a dead worker (killed during its budget wait, or before the budget was found spent):
    stay until the stale sweep (``sweep``) has failed it, a grace period and a beat at most. A WAITING
    retry (of a dead trial swept near the end) can no longer get a slot: it is recorded PRUNED
    (``pruned_reason``) instead of being left to a next run.
    """
    if not store.sweeps:
        return  # no heartbeats: a dead trial cannot be told from a live one
    wait = float(store.grace_period or 30) + 2 * float(store.heartbeat_interval or 10)
    deadline = time.monotonic() + wait + 2
    while True:
        for t in store.all_trials(states=(TrialState.WAITING,)):
            _prune_waiting(store, t)
        if not store.all_trials(states=(TrialState.RUNNING,)):
            return
        if time.monotonic() > deadline:
            log.warning("budget reached, but trials are still RUNNING after %.0f s; leaving them", wait)
            return
        time.sleep(poll)
        sweep()


def _prune_waiting(store: StudyStore, trial) -> None:
    from .search.samplers import CLAIM_KEY, RELEASED

    try:
        tid = trial_id(trial)
        store.set_user_attrs(tid, {"pruned_reason": "budget reached before this retry could run"})
        store.storage.set_trial_system_attr(tid, CLAIM_KEY, RELEASED)
        store.storage.set_trial_state_values(tid, state=TrialState.PRUNED)
    except Exception as exc:  # noqa: BLE001 - popped or failed by another worker meanwhile
        log.debug("discarding waiting trial %d: %s", trial.number, exc)
