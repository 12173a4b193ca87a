"""Rungs: a trial's student evaluated part-way through its training, and stopped there when the pruner
(:mod:`nas_distill.search.pruner`) finds it hopeless.

At each rung step (:meth:`~nas_distill.distill.base.FlashDistillerBase.rung_steps`: fractions
``search.rungs`` of the regular-distillation steps) the student is evaluated on a fixed slice, the first
``search.rung_examples`` examples of the evaluation set, for the objectives that need training (no
latency: the objectives fixed by the architecture are measured once per arch). Stored form, the trial's
user attr ``rungs``, one entry per rung reached, in order::

    [{"step": 200, "of": 600, "values": {"accuracy": 0.41}, "known": {"latency": 1.93}}, ...]

``values``: the metrics as measured (not sign-flipped); ``known``: the arch's architecture metrics as the
pruner compared them (``{}`` when no objective is one). A trial the pruner stops ends PRUNED, without
values, with the user attr ``early_stop``: ``{"by": "pareto-asha", "step": 200, "of": 600, "reason": ...,
"compared_with": [trial numbers whose records at that rung it was compared with], "finished": [those of
them that had finished then, whose final values showed the rung predicts]}``.
Every worker decides from what the study holds at that moment (the rung records of every trial, whatever
its state), so no worker waits for a rung to fill.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from optuna.trial import TrialState

from .errors import ConfigError, NasDistillError
from .records import rungs_of
from .search.pruner import NO_PRUNER, PARETO_ASHA, Decision, RungResult, decide
from .store import StudyStore
from .store.optuna_internals import trial_id
from .vocabulary import RUNGS_ATTR

log = logging.getLogger(__name__)



class StoppedEarly(NasDistillError):
    """The pruner stopped a student at a rung; the trial is recorded PRUNED with ``early_stop``."""

    def __init__(self, step: int, of: int, reason: str, compared_with: Sequence[RungResult] = ()):
        super().__init__(f"stopped early at step {step} of {of}: {reason}")
        self.record = {"by": PARETO_ASHA, "step": int(step), "of": int(of), "reason": reason,
                       "compared_with": sorted(r.number for r in compared_with),
                       "finished": sorted(r.number for r in compared_with if r.final is not None)}


def pruning_on(conf: Any) -> bool:
    return getattr(conf, "pruner", NO_PRUNER) == PARETO_ASHA


def check_pruning(ad) -> None:
    """ConfigError when ``search.pruner`` is on but cannot act: the students are trained by the user's
    own code (``train_func``, an overridden ``estimate``), which has no rungs to stop at."""
    if not pruning_on(ad.conf):
        return
    if ad.train_func is not None:
        raise ConfigError("search.pruner", f"{PARETO_ASHA!r} stops the built-in flash distillation at its "
                                           f"rungs; train_func is set, so set search.pruner: none")
    if ad._estimate_overridden():
        raise ConfigError("search.pruner", f"{PARETO_ASHA!r} stops the built-in flash distillation at its "
                                           f"rungs; estimate() is overridden, so set search.pruner: none")


def minimize_form(names: Sequence[str], values: Mapping[str, float], higher: Mapping[str, bool]) -> tuple:
    return tuple(-float(values[n]) if higher[n] else float(values[n]) for n in names)


def results_at(trials: Sequence[Any], step: int, of: int, partial_names: Sequence[str],
               known_names: Sequence[str], higher: Mapping[str, bool],
               value_names: Sequence[str] = ()) -> list[RungResult]:
    """Every trial's record at rung ``step`` of ``of`` (trials of another step budget are not compared;
    a record lacking one of the names is left out). ``value_names``: the names of a trial's values in
    order; with them, a COMPLETE trial's result carries its final values too."""
    found = []
    for t in trials:
        for rung in rungs_of(t.user_attrs, t.number):
            if rung.step != step or rung.of != of:
                continue
            if set(partial_names) <= set(rung.values) and set(known_names) <= set(rung.known):
                found.append(RungResult(t.number, minimize_form(partial_names, rung.values, higher),
                                        minimize_form(known_names, rung.known, higher),
                                        _final(t, partial_names, value_names, higher)))
            break
    return found


def _final(trial: Any, partial_names: Sequence[str], value_names: Sequence[str],
           higher: Mapping[str, bool]) -> tuple | None:
    values = getattr(trial, "values", None)
    if trial.state != TrialState.COMPLETE or not values or len(values) != len(value_names):
        return None
    named = dict(zip(value_names, values))
    if not set(partial_names) <= set(named):
        return None
    return minimize_form(partial_names, named, higher)


class RungMonitor:
    """The ``after_step`` callback of one trial: evaluates the student at the rung steps, records the
    values in the trial, and raises :class:`StoppedEarly` when the pruner stops it."""

    def __init__(self, ad, store: StudyStore, trial: Any, arch: Mapping[str, Any], model: Any, steps: Sequence[int]):
        self.ad = ad
        self.store = store
        self.trial = trial
        self.arch = dict(arch)
        self.model = model
        self.steps = set(steps)
        self.records: list[dict[str, Any]] = []
        self.known_names = list(ad.arch_metrics.names)
        self.partial_names = [m for m in ad.metrics if m not in self.known_names]
        self.higher = dict(zip(ad.metrics, ad.higher_is_better))
        self.eta = int(ad.conf.reduction_factor)
        self._known: dict[str, float] | None = None

    def __call__(self, done: int, total: int) -> None:
        if done not in self.steps:
            return
        values = self._partial_values()
        known = self._known_values()
        self.records.append({"step": done, "of": total, "values": values, "known": known})
        self.store.set_user_attrs(trial_id(self.trial), {RUNGS_ATTR: self.records})
        decision, others = self.decide(done, total, values, known)
        log.info("trial %d, step %d of %d: %s; %s", self.trial.number, done, total,
                 ", ".join(f"{k} {v:.4g}" for k, v in values.items()), decision.reason)
        if not decision.keep:
            raise StoppedEarly(done, total, decision.reason, others)

    def decide(self, step: int, of: int, values: Mapping[str, float],
               known: Mapping[str, float]) -> tuple[Decision, list[RungResult]]:
        """The pruner's decision from the rung records the study holds now, and the records compared."""
        own = RungResult(self.trial.number, minimize_form(self.partial_names, values, self.higher),
                         minimize_form(self.known_names, known, self.higher))
        others = [r for r in results_at(self.store.all_trials(), step, of, self.partial_names, self.known_names,
                                        self.higher, self.ad.metrics) if r.number != own.number]
        return decide(own, others, self.eta), others

    def _partial_values(self) -> dict[str, float]:
        measured = self.ad._evaluate(self.model, self.partial_names, data=self.ad.rung_data())
        if not isinstance(measured, Mapping):  # eval_func may answer a list in the config's metric order
            measured = dict(zip(self.ad.metrics, self.ad.raw_metric_values(measured)))
        return {n: float(measured[n]) for n in self.partial_names}

    def _known_values(self) -> dict[str, float]:
        """The arch's architecture metrics: stored for the arch, else measured now (they do not depend on
        the weights) and kept for the trial's later rungs."""
        if self._known is None:
            metrics = self.ad.arch_metrics
            self._known = (metrics.values(self.arch) or metrics.measure_model(self.model)) if self.known_names \
                else {}
        return dict(self._known)
