"""Whether an asked trial trains: the budget rule, and the answer from the store.

Budget (:func:`nas_distill.store.budget.budget_position`): a trial trains only if fewer than ``max_trials``
counted trials come before it. :class:`Budget` is one worker's view of that rule: it reads the study
only near the end of the search, and says when to wait for a slot, when to give a slot to a retry, and
when the budget is spent.

Answer from the store (:func:`known_trial`): an arch that is already COMPLETE, being trained by a
lower-numbered trial, that failed for a reason of its own, or that the pruner stopped is not trained
again; :func:`answer_attrs` is what such a trial records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.trial import TrialState

from .records import N_PARAMS, parameter_count
from .store import StudyStore
from .store.budget import counted_complete, is_counted
from .store.stale import RETRYABLE_ERRORS
from .vocabulary import stopped_early

#: ``Budget.gate`` verdicts: stop, wait for a slot, ask.
SPENT, FULL, OPEN = "spent", "full", "open"
#: ``Budget.place`` verdicts (besides SPENT): the trial has a slot, give the slot to a waiting retry, wait.
HAS_SLOT, YIELD, WAIT = "has slot", "yield", "wait"
#: ``Budget.others_pending`` verdict (besides SPENT and WAIT): nothing will free a point.
IDLE = "idle"


class Budget:
    """One worker's view of the study's budget of ``max_trials`` counted COMPLETE trials.

    ``done`` is a lower bound of the counted COMPLETE trials (they never decrease); ``running`` is the
    number of trials last seen running (the workers at work, for the ETA and the gate).
    """

    def __init__(self, max_trials: int):
        self.max_trials = max_trials
        self.done = 0
        self.running = 1
        # The first gate of a worker always reads: a worker started on a study whose budget is already
        # spent (the same command run again) must stop before asking, not leave a discarded trial behind.
        self._read = False

    @property
    def spent_reason(self) -> str:
        return f"budget reached: {self.max_trials} trials complete"

    def gate(self, store: StudyStore) -> str:
        """Before asking: :data:`SPENT`, :data:`FULL` (every slot is held by a running trial: wait) or
        :data:`OPEN`. While ``done`` plus the trials seen running is below ``max_trials`` no read is
        needed. A WAITING retry keeps the gate open: only an ask pops it."""
        if self._read and self.done < self.max_trials and self.done + self.running < self.max_trials:
            return OPEN
        self._read = True
        trials = store.all_trials(states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
        self.done = counted_complete(trials)
        if self.done >= self.max_trials:
            return SPENT
        self.running = sum(1 for t in trials if t.state == TrialState.RUNNING and is_counted(t))
        if self.done + self.running >= self.max_trials and not any(t.state == TrialState.WAITING for t in trials):
            return FULL
        return OPEN

    def place(self, store: StudyStore, number: int, snapshot: Sequence[Any] | None = None) -> tuple[str, list[Any]]:
        """Where asked trial ``number`` stands: ``(verdict, the study's trials read)``; the verdict is
        :data:`SPENT`, :data:`HAS_SLOT`, :data:`YIELD` (a WAITING retry holds a slot: give ours up) or
        :data:`WAIT`. ``snapshot``: a read of the study made after this trial held its point."""
        ahead, complete, trials = store.budget_position(number, snapshot)
        self.running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        self.done = complete
        if complete >= self.max_trials:
            return SPENT, trials
        if ahead < self.max_trials:
            return HAS_SLOT, trials
        if any(t.state == TrialState.WAITING for t in trials):
            return YIELD, trials
        return WAIT, trials

    def others_pending(self, store: StudyStore) -> str:
        """Nothing new to ask: :data:`SPENT`, :data:`WAIT` (other workers' trials might still free
        points) or :data:`IDLE` (nothing will)."""
        trials = store.all_trials(states=(TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE))
        if counted_complete(trials) >= self.max_trials:
            return SPENT
        if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            return WAIT
        return IDLE


def known_trial(trials: Sequence[Any], arch: dict, number: int) -> Any:
    """A COMPLETE trial of the same arch, else a lower-numbered RUNNING one training it now, else one
    that failed for a reason of the arch's own, else one the pruner stopped; None when the arch is new."""
    # One pass over the study (it runs once per trial, and the study grows to thousands of trials),
    # the arch compared first: it rules out nearly every trial at its first key.
    # Another worker may be training this arch right now (two model-based proposals can coincide):
    # the lower number trains, so two such trials never both step aside; if that worker dies, its
    # trial is failed and retried like any other.
    complete = running = failed = stopped = None
    not_arch_errors = RETRYABLE_ERRORS + ("Discarded",)
    for t in trials:
        if t.number == number or not same_arch(t.params, arch):
            continue
        if t.state == TrialState.COMPLETE:
            if complete is None or t.number < complete.number:
                complete = t
        elif t.state == TrialState.RUNNING and t.number < number:
            if running is None or t.number < running.number:
                running = t
        elif t.state == TrialState.FAIL and failed is None:
            error_type = t.user_attrs.get("error_type")
            if error_type and error_type not in not_arch_errors:
                failed = t
        elif stopped is None and stopped_early(t):
            stopped = t
    return next((t for t in (complete, running, failed, stopped) if t is not None), None)


def same_arch(params: dict, arch: dict) -> bool:
    # A plain loop, not all(<generator>): called for every trial of the study per trial (see known_trial).
    for key, value in arch.items():
        if key not in params:
            return False
        other = params[key]
        if other != value or type(other) is not type(value):
            return False
    return True


def answer_attrs(known: Any, arch: dict, metric_names: Sequence[str], worker: dict) -> dict[str, Any]:
    """The user attributes of a trial answered from ``known`` instead of trained: ``duplicate_of``, and
    the known trial's figures (COMPLETE: its metrics and ``n_params``), a ``note`` (COMPLETE, RUNNING)
    or its error (FAIL)."""
    attrs: dict[str, Any] = {"arch": arch, "duplicate_of": known.number, "worker": worker}
    if known.state == TrialState.COMPLETE:
        if parameter_count(known.user_attrs) is not None:
            attrs[N_PARAMS] = parameter_count(known.user_attrs)
        for name, value in zip(metric_names, known.values or []):
            attrs[name] = value
        attrs["note"] = f"same architecture as COMPLETE trial {known.number}: not trained again"
    elif known.state == TrialState.RUNNING:
        attrs["note"] = f"same architecture is being trained by trial {known.number}: not trained twice"
    elif known.state == TrialState.PRUNED:
        attrs["note"] = f"same architecture was stopped early in trial {known.number}: not trained again"
    else:
        attrs["error_type"] = known.user_attrs.get("error_type")
        attrs["error"] = f"same architecture failed in trial {known.number}: {known.user_attrs.get('error')}"
    return attrs
