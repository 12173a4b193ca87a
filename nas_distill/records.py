"""A study read once into typed records, shared by every reader of a search: ``status``, ``pareto``,
``export``, the demo, the results files, the HTML report and the dashboard.

One pass over the trials gives one :class:`TrialRecord` per trial (any state) and marks the Pareto front
of the COMPLETE ones. The front is computed here only (:func:`nas_distill.search.pareto.find_pareto_front`),
so every output agrees on which trials are on it.

Conventions:

* Metric values are kept *raw*, in the study's own directions. Only the Pareto front flips the sign of
  minimised metrics, because :mod:`nas_distill.search.pareto` works on "higher is better" vectors.
* Metric names are the study's (``study.set_metric_names``), else ``value_0``, ``value_1``...
* A trial's architecture is its ``arch`` user attribute (what the runner and ``import_results`` write),
  else its Optuna params.
* The parameter count is the trial user attribute ``n_params``; studies written before it had that
  name hold it as ``params``, which is read too (:func:`parameter_count`).
* Units come from the metric name (``accuracy`` -> fraction or %, ``latency`` -> ms, ``params`` ->
  count, ``model_size_mb`` -> MiB) unless the study's user attr ``metric_units`` (a ``{name: unit}``
  dict) says otherwise.
* Rung records (the pruner's partial evaluations) are the trial user attribute ``rungs``, a list
  ``[{"step", "of", "values": {metric: value}, "known": {metric: value}}, ...]`` in rung order; a trial the
  pruner stopped is PRUNED with ``early_stop = {"by", "step", "of", "reason"}``. Both are read leniently:
  an entry that does not have that form is left out (with a debug log line), so a reader never fails on
  a study someone else wrote.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_distill.search.pareto import find_pareto_front

from .store import optuna_internals
from .vocabulary import EARLY_STOP_ATTR, RUNGS_ATTR

__all__ = ["N_PARAMS", "EarlyStop", "MetricInfo", "Rung", "StudyRecords", "TrialRecord", "early_stop_of",
           "metric_unit", "parameter_count", "read_study", "rungs_of"]

_log = logging.getLogger(__name__)

#: The trial user attribute holding the student's parameter count.
N_PARAMS = "n_params"
#: Its name in studies written before it was renamed (still read, never written).
_OLD_N_PARAMS = "params"
#: The user attributes a results file keeps of each trial (besides arch and values).
RESULT_ATTRS = ("timings", "worker", "artifact_id", "duplicate_of", "imported_from")


def parameter_count(attrs: Mapping[str, Any]) -> int | None:
    """The parameter count recorded in a trial's user attributes (either name), or None."""
    value = attrs.get(N_PARAMS, attrs.get(_OLD_N_PARAMS))
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _step(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _metric_map(value: Any) -> dict[str, float] | None:
    """``{name: number}``, or None when ``value`` is not a mapping of names to numbers."""
    if not isinstance(value, Mapping):
        return None
    numbers = {str(k): _number(v) for k, v in value.items()}
    return None if any(v is None for v in numbers.values()) else numbers


@dataclass(frozen=True)
class Rung:
    """One partial evaluation of a trial: at training step ``step`` of ``of``, the expensive metrics
    ``values`` (raw, on the rung slice) and the architecture metrics ``known`` the pruner compared."""

    step: int
    of: int
    values: dict[str, float]
    known: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "of": self.of, "values": dict(self.values), "known": dict(self.known)}


@dataclass(frozen=True)
class EarlyStop:
    """Why and where the pruner stopped a trial's training."""

    by: str
    step: int
    of: int
    reason: str
    #: The trials whose records at that rung it was compared with, when recorded.
    compared_with: tuple[int, ...] | None = None
    #: Those of them that had finished then: their final values showed the rung predicts, when recorded.
    finished: tuple[int, ...] | None = None

    @property
    def steps_saved(self) -> int:
        """The training steps the trial did not run."""
        return max(0, self.of - self.step)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"by": self.by, "step": self.step, "of": self.of, "reason": self.reason}
        if self.compared_with is not None:
            out["compared_with"] = list(self.compared_with)
        if self.finished is not None:
            out["finished"] = list(self.finished)
        return out


def rungs_of(attrs: Mapping[str, Any], number: int | None = None) -> list[Rung]:
    """The rung records in a trial's user attributes, in stored order; malformed entries (and entries
    without any value) left out."""
    raw = attrs.get(RUNGS_ATTR)
    if raw is None:
        return []
    if not isinstance(raw, list):
        _log.debug("trial %s: ignoring user attr %r (not a list): %.200r", number, RUNGS_ATTR, raw)
        return []
    rungs = []
    for i, entry in enumerate(raw):
        entry = entry if isinstance(entry, Mapping) else {}
        step, of = _step(entry.get("step")), _step(entry.get("of"))
        values, known = _metric_map(entry.get("values")), _metric_map(entry.get("known", {}))
        if step is None or not of or not values or known is None:
            _log.debug("trial %s: ignoring %s[%d] (expected {step, of, values, known}): %.200r",
                       number, RUNGS_ATTR, i, raw[i])
            continue
        rungs.append(Rung(step, of, values, known))
    return rungs


def early_stop_of(attrs: Mapping[str, Any], number: int | None = None) -> EarlyStop | None:
    """The ``early_stop`` record in a trial's user attributes, or None (also when malformed)."""
    raw = attrs.get(EARLY_STOP_ATTR)
    if raw is None:
        return None
    raw_map = raw if isinstance(raw, Mapping) else {}
    step, of = _step(raw_map.get("step")), _step(raw_map.get("of"))
    if step is None or not of:
        _log.debug("trial %s: ignoring user attr %r (expected {by, step, of, reason}): %.200r",
                   number, EARLY_STOP_ATTR, raw)
        return None
    return EarlyStop(str(raw_map.get("by") or "pruner"), step, of, str(raw_map.get("reason") or ""),
                     _trial_numbers(raw_map, "compared_with", number), _trial_numbers(raw_map, "finished", number))


def _trial_numbers(raw: Mapping[str, Any], key: str, number: int | None) -> tuple[int, ...] | None:
    numbers = raw.get(key)
    if numbers is not None and not (isinstance(numbers, list) and all(_step(n) is not None for n in numbers)):
        _log.debug("trial %s: ignoring %s.%s (expected trial numbers): %.200r", number, EARLY_STOP_ATTR, key,
                   numbers)
        numbers = None
    return None if numbers is None else tuple(numbers)


@dataclass(frozen=True)
class MetricInfo:
    """One objective of the study: its name, direction and unit, and the labels built from them."""

    name: str
    direction: str  # "maximize" or "minimize"
    unit: str | None

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "maximize"

    @property
    def sign(self) -> float:
        """+1 for a maximised metric, -1 for a minimised one ("higher is better" after multiplying)."""
        return 1.0 if self.higher_is_better else -1.0

    @property
    def label(self) -> str:
        """Axis label, e.g. ``"latency (ms)"``."""
        return f"{self.name} ({self.unit})" if self.unit else self.name

    @property
    def arrow(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def described(self) -> str:
        """Label with the direction, for titles: ``"latency (ms, lower is better)"``."""
        inside = f"{self.unit}, {self.arrow}" if self.unit else self.arrow
        return f"{self.name} ({inside})"


@dataclass
class TrialRecord:
    """One trial, whatever its state. ``attrs``: its user attributes as stored (read-only)."""

    number: int
    state: str
    arch: dict[str, Any]
    values: list[float] | None
    n_params: int | None = None
    duration_s: float | None = None
    worker: str | None = None
    error: str | None = None
    pareto: bool = False
    trial_id: int | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: Its partial evaluations during training, in rung order (empty: none recorded).
    rungs: list[Rung] = field(default_factory=list)
    #: Set on a PRUNED trial the pruner stopped (see :attr:`stopped_early`).
    early_stop: EarlyStop | None = None

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE" and self.values is not None

    @property
    def stopped_early(self) -> bool:
        """PRUNED by the pruner during training; not a repeat (``duplicate_of``) nor a trial given up
        before training (``pruned_reason``)."""
        return self.state == "PRUNED" and self.early_stop is not None

    def to_json(self) -> dict[str, Any]:
        """The trial in the report's embedded JSON block (``params``: the architecture, as Optuna names it)."""
        return {
            "number": self.number,
            "state": self.state,
            "params": self.arch,
            "values": self.values,
            "n_params": self.n_params,
            "duration_s": self.duration_s,
            "worker": self.worker,
            "error": self.error,
            "pareto": self.pareto,
            **({"rungs": [r.to_json() for r in self.rungs]} if self.rungs else {}),
            **({"early_stop": self.early_stop.to_json()} if self.early_stop else {}),
        }

    def to_result(self) -> dict[str, Any]:
        """The trial in a results file (:mod:`nas_distill.results`; its format names the count ``params``)."""
        out: dict[str, Any] = {"number": self.number, "arch": {k: self.arch[k] for k in sorted(self.arch)},
                               "values": list(self.values or [])}
        if self.n_params is not None:
            out["params"] = self.n_params
        out.update({key: self.attrs[key] for key in RESULT_ATTRS if key in self.attrs})
        out["pareto"] = self.pareto
        return out


@dataclass
class StudyRecords:
    """A study as :func:`read_study` reads it. ``trials``: every trial, in number order."""

    study_name: str
    metrics: list[MetricInfo]
    trials: list[TrialRecord]
    search_space: dict[str, Any] | None = None
    config: Any = None
    #: Why the circuit breaker stopped the study (:mod:`nas_distill.breaker`), or None.
    stopped: str | None = None
    #: :meth:`state_reasons`, when the reader asked for them (``status``); else empty.
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)
    #: :func:`nas_distill.arch_metrics.summary` (students measured untrained, predictor errors), when the
    #: reader asked for it; else None.
    architecture_metrics: dict[str, Any] | None = None

    @property
    def complete(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.complete]

    @property
    def pareto(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.pareto]

    @property
    def pareto_numbers(self) -> list[int]:
        return [t.number for t in self.trials if t.pareto]

    @property
    def param_names(self) -> list[str]:
        """Every architecture key, in the order first seen."""
        return list(dict.fromkeys(k for t in self.trials for k in t.arch))

    @property
    def stopped_early(self) -> list[TrialRecord]:
        """The trials the pruner stopped, in number order."""
        return [t for t in self.trials if t.stopped_early]

    @property
    def steps_saved(self) -> int:
        """Training steps the pruner saved: over the stopped trials, ``of - step`` of their early stop."""
        return sum(t.early_stop.steps_saved for t in self.stopped_early)

    @property
    def has_rungs(self) -> bool:
        """Whether some trial has rung records (the rung views are shown only then)."""
        return any(t.rungs for t in self.trials)

    @property
    def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t.state] = counts.get(t.state, 0) + 1
        return counts

    def best_first(self, trials: list[TrialRecord]) -> list[TrialRecord]:
        """``trials`` sorted best first in the first metric."""
        return sorted(trials, key=lambda t: t.values[0], reverse=self.metrics[0].higher_is_better)

    def state_reasons(self, lost_trial_ids: set[int] = frozenset()) -> dict[str, dict[str, int]]:
        """Why trials ended FAIL (their ``error_type``: ``WorkerLost``, an exception name...) or PRUNED
        (``duplicate``: another trial had the arch; ``stopped early``: the pruner stopped its training;
        ``discarded``: given up untrained in a race for the last budget slot), counted, so a status line
        can tell a crash from a trial that never trained; and which RUNNING trials have no live worker
        any more (``lost_trial_ids``: no heartbeat for a grace period)."""
        reasons: dict[str, dict[str, int]] = {}
        for t in self.trials:
            if t.state == "FAIL":
                why = str(t.attrs.get("error_type") or "unknown")
            elif t.state == "PRUNED":
                why = "duplicate" if "duplicate_of" in t.attrs else "stopped early" if t.stopped_early else \
                    "discarded" if "pruned_reason" in t.attrs else "pruned"
            elif t.state == "RUNNING" and t.trial_id in lost_trial_ids:
                why = "no heartbeat: worker lost"  # still RUNNING until a live worker's sweep fails it
            else:
                continue
            per_state = reasons.setdefault(t.state, {})
            per_state[why] = per_state.get(why, 0) + 1
        return reasons


# ----------------------------------------------------------------------------------------------- units
_UNIT_RULES: list[tuple[tuple[str, ...], str]] = [
    (("latency_ms", "latency", "time_ms", "inference_ms"), "ms"),
    (("model_size_mb", "size_mb", "model_size"), "MiB"),
    (("num_params", "n_params", "params", "parameters", "param_count"), "count"),
    (("flops", "macs"), "count"),
]


def metric_unit(name: str, values: Any = None, overrides: dict[str, str] | None = None) -> str | None:
    """The unit of a metric, from an explicit override or from its name.

    Accuracy-like metrics (``accuracy``, ``acc``, ``f1``, ``precision``, ``recall``) are a
    ``"fraction"`` when every observed value is within [0, 1], else ``"%"``. Unknown names get ``None``
    (the label is then the bare name).
    """
    if overrides and name in overrides:
        return str(overrides[name]) or None
    key = name.lower()
    for names, unit in _UNIT_RULES:
        if key in names or any(key.endswith("_" + n) or key.startswith(n + "_") for n in names):
            return unit
    if any(word in key for word in ("accuracy", "acc", "f1", "precision", "recall")):
        finite = [float(v) for v in (values or []) if v is not None and math.isfinite(float(v))]
        return "%" if finite and max(abs(v) for v in finite) > 1.0 else "fraction"
    return None


# ------------------------------------------------------------------------------------------------- read
def metric_names(study: optuna.Study) -> list[str]:
    """The study's metric names, else ``value_0``, ``value_1``... (one per direction)."""
    names = list(study.metric_names or [])
    return names if len(names) == len(study.directions) else [f"value_{i}" for i in range(len(study.directions))]


def _metric_infos(study: optuna.Study, trials: list[FrozenTrial]) -> list[MetricInfo]:
    overrides = study.user_attrs.get("metric_units")
    overrides = overrides if isinstance(overrides, dict) else None
    infos = []
    for i, (name, direction) in enumerate(zip(metric_names(study), study.directions)):
        observed = [t.values[i] for t in trials if t.state == TrialState.COMPLETE and t.values]
        infos.append(MetricInfo(name, direction.name.lower(), metric_unit(name, observed, overrides)))
    return infos


def _record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    arch = attrs.get("arch") if isinstance(attrs.get("arch"), dict) and attrs.get("arch") else trial.params
    error = None
    if attrs.get("error_type") or attrs.get("error"):
        error = ": ".join(str(x) for x in (attrs.get("error_type"), attrs.get("error")) if x)
    values = None
    if trial.state == TrialState.COMPLETE and trial.values is not None:
        values = [float(v) for v in trial.values]
    worker = attrs.get("worker")
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        arch=dict(arch),
        values=values,
        n_params=parameter_count(attrs),
        duration_s=trial.duration.total_seconds() if trial.duration is not None else None,
        worker=str(worker) if worker is not None else None,
        error=error,
        trial_id=optuna_internals.trial_id(trial),
        attrs=attrs,
        rungs=rungs_of(attrs, trial.number),
        early_stop=early_stop_of(attrs, trial.number) if trial.state == TrialState.PRUNED else None,
    )


def _mark_pareto(complete: list[TrialRecord], metrics: list[MetricInfo]) -> None:
    """Set ``pareto`` on the non-dominated complete trials (ties all kept, as ``study.best_trials``)."""
    if not complete:
        return
    signed = np.array([t.values for t in complete], dtype=np.float64) * np.array([m.sign for m in metrics])
    signed = np.where(np.isnan(signed), -np.inf, signed)
    for index in find_pareto_front(signed):
        complete[int(index)].pareto = True


def _stop_reason(attrs: Mapping[str, Any]) -> str | None:
    value = attrs.get("stopped")
    if not value:
        return None
    return str(value.get("reason")) if isinstance(value, Mapping) else str(value)


def read_study(study: optuna.Study) -> StudyRecords:
    """Read ``study`` (any Optuna study, trials in any state) into :class:`StudyRecords`, in one pass."""
    frozen = study.get_trials(deepcopy=False)
    trials = [_record(t) for t in sorted(frozen, key=lambda t: t.number)]
    metrics = _metric_infos(study, frozen)
    _mark_pareto([t for t in trials if t.complete], metrics)
    attrs = study.user_attrs
    return StudyRecords(study_name=study.study_name, metrics=metrics, trials=trials,
                        search_space=attrs.get("search_space"), config=attrs.get("config"),
                        stopped=_stop_reason(attrs))
