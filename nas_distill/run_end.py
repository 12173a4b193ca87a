"""The end of one worker's run: leave no trial behind (:func:`settle`) and say whether the study met
its budget (:func:`budget_met`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState

from . import study as study_mod

log = logging.getLogger(__name__)


def budget_met(study, max_trials: int, space: Any) -> tuple[int, bool]:
    """``(counted COMPLETE trials of the whole study, whether it met its budget)``: ``max_trials``
    counted COMPLETE trials, or every point of a smaller ``space`` (the searcher's, or None) COMPLETE."""
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.COMPLETE,))
    complete = study_mod.counted_complete(trials)
    wanted = min(max_trials, len(space)) if space is not None else max_trials
    met = complete >= wanted or (
        space is not None and len({json.dumps(t.params, sort_keys=True) for t in trials}) >= len(space))
    return complete, met


def settle(study, sweep: Callable[[], None], poll: float = 0.5) -> None:
    """Budget spent: leave no trial RUNNING or WAITING behind.

    A trial still RUNNING now is another worker's trial on its way to being discarded (seconds), or
    the trial of a dead worker (killed during its budget wait, or before the budget was found spent):
    stay until the stale sweep (``sweep``) has failed it, a grace period and a beat at most. A WAITING
    retry (of a dead trial swept near the end) can no longer get a slot: it is recorded PRUNED
    (``pruned_reason``) instead of being left to a next run.
    """
    interval, grace, _ = study_mod._heartbeat_settings(study._storage)
    if interval is None and study_mod._rdb(study._storage) is None:
        return  # no heartbeats: a dead trial cannot be told from a live one
    deadline = time.monotonic() + float(grace or 30) + 2 * float(interval or 10) + 2
    storage, study_id = study._storage, study._study_id
    while True:
        for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
            _prune_waiting(study, t)
        if not storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            return
        if time.monotonic() > deadline:
            log.warning("budget reached, but trials are still RUNNING after %.0f s; leaving them",
                        float(grace or 30) + 2 * float(interval or 10))
            return
        time.sleep(poll)
        sweep()


def _prune_waiting(study, trial) -> None:
    from .search.samplers import CLAIM_KEY, RELEASED

    try:
        study_mod.set_user_attrs(study, trial._trial_id, {
            "pruned_reason": "budget reached before this retry could run"})
        study._storage.set_trial_system_attr(trial._trial_id, CLAIM_KEY, RELEASED)
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.PRUNED)
    except Exception as exc:  # noqa: BLE001 - popped or failed by another worker meanwhile
        log.debug("discarding waiting trial %d: %s", trial.number, exc)
