"""The circuit breaker: stop a whole study when its trials keep failing for the same reason.

A setup problem the dry run cannot see (a disk that fills, a task whose evaluation always raises) makes
every trial fail; without a breaker each worker would burn the whole budget on junk trials. After each
failure of its own, a worker reads the study's finished trials and trips the breaker when

* the first ``k`` trials of the run all failed (no trial completed yet), or
* the last ``k`` trials to finish all failed with the same exception type.

Trials are counted once per architecture (the first trial of each): a retried architecture that fails
again is no new evidence.

Tripping writes the study user attr :data:`STOPPED_ATTR` (``{reason, worker, time}``): every worker
checks it before asking for a trial and stops, and ``nas-distill status`` shows the reason. A new
``nas-distill run`` (or ``search()``) re-arms the breaker (:func:`rearm`): it clears the attr and records
the next trial number in :data:`SINCE_ATTR`, so failures of an earlier run are not counted again.

Trials that failed for reasons that say nothing about the setup are not counted: killed or interrupted
workers and trials given up at the budget (:data:`nas_distill.store.stale.RETRYABLE_ERRORS`). Neither is
``InvalidArchitecture``: an architecture the model builder refuses is that architecture's verdict, and a
space may hold many (the dry run already proved that every value of every key builds).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Iterable, Optional

from .store import store_of
from .store.budget import is_counted
from .store.stale import RETRYABLE_ERRORS

log = logging.getLogger(__name__)

STOPPED_ATTR = "stopped"
SINCE_ATTR = "breaker_since_trial"
DEFAULT_K = 3
#: Failures that are an architecture's own verdict: never a sign that the setup is broken.
ARCH_VERDICTS = ("InvalidArchitecture",)


def _own_failure(trial) -> bool:
    """A FAIL trial that failed because of what it ran (not a lost worker, an interrupt, ...)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and \
        str(trial.user_attrs.get("error_type") or "") not in RETRYABLE_ERRORS + ("Discarded",)


def _counted_failure(trial) -> bool:
    """A failure the breaker counts: the trial's own, and not an architecture's verdict."""
    return _own_failure(trial) and str(trial.user_attrs.get("error_type")) not in ARCH_VERDICTS


def verdict(trials: Iterable[Any], k: int, since: int = 0) -> Optional[str]:
    """Why the study should stop (a sentence), or None. ``trials``: the study's trials (any states)."""
    from optuna.trial import TrialState

    if not k or k < 1:
        return None
    finished = _distinct_archs(sorted(
        (t for t in trials if t.number >= since
         and (t.state == TrialState.COMPLETE and is_counted(t) or _counted_failure(t))),
        key=lambda t: t.number))
    failed = [t for t in finished if t.state == TrialState.FAIL]
    if len(failed) >= k and len(failed) == len(finished):
        return f"the first {k} trials all failed ({_kinds(failed[:k])}); the setup is likely broken " \
               f"(first error: {_first_error(failed)})"
    finished.sort(key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
    last = finished[-k:]
    if len(last) == k and all(t.state == TrialState.FAIL for t in last):
        kinds = {str(t.user_attrs.get("error_type")) for t in last}
        if len(kinds) == 1:
            return f"{k} trials in a row failed with {kinds.pop()} (trials " \
                   f"{', '.join(str(t.number) for t in last)}; last error: {_first_error(last[::-1])})"
    return None


def _distinct_archs(trials: list) -> list:
    """The first trial of each architecture: an arch that fails twice is one piece of evidence."""
    seen: set[str] = set()
    out = []
    for t in trials:
        key = json.dumps(t.params, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _kinds(trials: list) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        kind = str(t.user_attrs.get("error_type") or "unknown")
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind} x{n}" if n > 1 else kind for kind, n in counts.items())


def _first_error(trials: list) -> str:
    ordered = sorted(trials, key=lambda t: t.number)
    error = str(ordered[0].user_attrs.get("error") or "")
    return " ".join(error.split())[:300]


def check(study, k: int, worker: str = "") -> Optional[str]:
    """Read the study (an Optuna study or its :class:`~nas_distill.store.StudyStore`); trip the breaker
    when :func:`verdict` says so. Returns the reason, or None."""
    from optuna.trial import TrialState

    store = store_of(study)
    attrs = store.study.user_attrs
    if attrs.get(STOPPED_ATTR):
        return _reason(attrs[STOPPED_ATTR])
    trials = store.all_trials(states=(TrialState.COMPLETE, TrialState.FAIL))
    reason = verdict(trials, k, int(attrs.get(SINCE_ATTR) or 0))
    if reason:
        trip(store.study, reason, worker)
    return reason


def trip(study, reason: str, worker: str = "") -> None:
    study.set_user_attr(STOPPED_ATTR, {"reason": reason, "worker": worker or str(os.getpid()),
                                       "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    log.error("circuit breaker: stopping study %r: %s", study.study_name, reason)


def stopped(study) -> Optional[str]:
    """The reason the study (an Optuna study or its handle) was stopped, or None (one read of the
    study's user attrs)."""
    store = store_of(study)
    value = store.storage.get_study_user_attrs(store.study_id).get(STOPPED_ATTR)
    return _reason(value) if value else None


def _reason(value: Any) -> str:
    return value.get("reason") if isinstance(value, dict) else str(value)


def rearm(study) -> None:
    """A new run starts: forget an earlier stop; count failures from the next trial on."""
    store = store_of(study)
    study = store.study
    if study.user_attrs.get(STOPPED_ATTR):
        log.info("the previous run of study %r was stopped (%s); starting again", study.study_name,
                 stopped(store))
    next_number = len(store.all_trials())
    study.set_user_attr(STOPPED_ATTR, None)
    study.set_user_attr(SINCE_ATTR, next_number)
