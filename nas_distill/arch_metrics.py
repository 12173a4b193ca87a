"""Metrics fixed by the architecture: measured once per arch on an untrained student, kept in the study.

Latency, parameter count and model size do not depend on the weights, so a Bayesian searcher can know
them for every candidate before any training, and model only the metrics that need a trial. Which
metrics: the objectives named ``latency``, ``params`` or ``model_size_mb`` (``eval_`` prefix allowed) and
those the config declares in ``search.architecture_metrics``.

Stored form (any Optuna storage, shared by every worker and machine): one study *system* attr per
architecture, key ``nas_distill:arch_metrics:<sha1 of the arch's sorted JSON, 20 hex digits>``, value::

    {"arch": {...}, "metrics": {"latency": 1.93, "params": 52810}, "trained": false,
     "host": "node-3", "worker": "w0", "started": <unix s>, "ended": <unix s>}

or, when the student could not be built or measured, ``{"arch": ..., "error_type": ..., "error": ...}``
(never measured again). ``trained: true`` marks a value taken from a finished trial's evaluation.

When the searcher can use them (``bo``), a worker measures before its first suggestion, holding the
machine's measurement lock (:mod:`nas_distill.machine_lock`) for the whole batch: every point of a space
of up to :data:`MEASURE_ALL_LIMIT` points, else a seeded sample of :data:`INITIAL_SAMPLE` points (the
same for every worker), skipping what the study already holds. Each finished trial adds its own
measurement when its arch had none. For archs never measured, :class:`~nas_distill.latency_predictor.
MetricPredictor` predicts each metric, refitted whenever new measurements arrive.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .latency_predictor import MIN_SAMPLES, MetricPredictor
from .store import optuna_internals
from .vocabulary import architecture_metric_names, base_metric

log = logging.getLogger(__name__)

#: Prefix of the study system attrs holding one architecture's measurements.
ATTR_PREFIX = "nas_distill:arch_metrics:"
#: Spaces up to this many points are measured whole before the first suggestion.
MEASURE_ALL_LIMIT = 256
#: Larger spaces: this many seeded random points first, to fit the predictor on.
INITIAL_SAMPLE = 32
#: Measured students between two garbage collections: a model whose layers hold reference cycles (Keras)
#: is freed only by a collection, and one collection costs ~50 ms next to a large torch heap.
GC_EVERY = 16


def timed_metric_names(metrics: Sequence[str], declared: Iterable[str] = ()) -> list[str]:
    """The metrics among ``metrics`` measured by timing (``latency``, and any declared one, whose nature
    is the user's): they are taken under the machine's measurement lock."""
    declared = set(declared)
    return [m for m in metrics if base_metric(m) == "latency" or m in declared]


def arch_key(arch: Mapping[str, Any]) -> str:
    """The study attr key of ``arch``'s measurements (a digest: attr keys are limited in length)."""
    digest = hashlib.sha1(json.dumps(dict(arch), sort_keys=True).encode("utf-8")).hexdigest()[:20]
    return ATTR_PREFIX + digest


def read_entries(study) -> dict[str, dict[str, Any]]:
    """Every stored measurement of the study: ``{attr key: entry}`` (one read of the storage)."""
    attrs = optuna_internals.study_storage(study).get_study_system_attrs(optuna_internals.study_id(study))
    return {k: v for k, v in attrs.items() if k.startswith(ATTR_PREFIX) and isinstance(v, dict)}


def fit_predictors(entries: Iterable[Mapping[str, Any]], metrics: Sequence[str],
                   search_space: Mapping[str, Sequence[Any]]) -> dict[str, MetricPredictor]:
    """A predictor per metric with at least :data:`~nas_distill.latency_predictor.MIN_SAMPLES` measured
    students (oldest first, so a capped fit keeps the newest)."""
    measured = sorted((e for e in entries if isinstance(e.get("metrics"), dict)),
                      key=lambda e: e.get("ended") or 0)
    out = {}
    for name in metrics:
        pairs = [(e["arch"], e["metrics"][name]) for e in measured
                 if isinstance(e["metrics"].get(name), (int, float))]
        if len(pairs) >= MIN_SAMPLES:
            archs, values = zip(*pairs)
            try:
                out[name] = MetricPredictor(search_space).fit(archs, values)
            except ValueError as exc:  # too few positive values (a metric that can be 0)
                log.debug("no predictor for %s: %s", name, exc)
    return out


def summary(study) -> dict[str, Any] | None:
    """What ``status`` and the report say: ``{measured, failed, predictors: {metric: figures}}``, or
    None when the study holds no architecture measurement."""
    entries = list(read_entries(study).values())
    if not entries:
        return None
    attrs = study.user_attrs
    space = attrs.get("search_space") or {}
    metrics = architecture_metric_names(list(study.metric_names or []), _declared(attrs.get("config")))
    measured = [e for e in entries if isinstance(e.get("metrics"), dict)]
    predictors = fit_predictors(measured, metrics, space) if space else {}
    return {
        "measured": len(measured),
        "failed": len(entries) - len(measured),
        "predictors": {name: p.summary() for name, p in predictors.items()},
    }


def summary_lines(info: Mapping[str, Any] | None) -> list[str]:
    """``summary()`` as text lines (empty when there is nothing to say)."""
    if not info:
        return []
    failed = f", {info['failed']} could not be built" if info.get("failed") else ""
    lines = [f"architecture metrics: {info['measured']} students measured untrained{failed}"]
    for name, s in (info.get("predictors") or {}).items():
        lines.append(
            f"  {name} predictor, leave-one-out over {s['n']} students: median error {s['median_abs_pct']}%, "
            f"mean {s['mean_abs_pct']}%, max {s['max_abs_pct']}%, {round(100 * s['within_10pct'])}% within +-10%")
    return lines


def _declared(config: Any) -> list[str]:
    search = (((config or {}).get("auto_distillation") or {}).get("search") or {}) if isinstance(config, dict) \
        else {}
    return list(search.get("architecture_metrics") or [])


class ArchMetrics:
    """The pipeline's architecture metrics for one worker (an :class:`AutoDistillation` ``ad``).

    ``enabled``: the searcher can use them (``bo``) and some objective is one. ``measure_untrained``:
    untrained students may be measured too (the built-in evaluator, or an ``eval_func`` whose metrics the
    config declares in ``search.architecture_metrics``; never an overridden ``estimate``); otherwise only
    finished trials' values are stored. :meth:`refresh` (before each suggestion) measures the first time,
    then reads new measurements and refits the predictors; :meth:`known_objectives` is the searcher's
    ``known_objectives=`` callable; :meth:`record_trained` stores a finished trial's values.
    """

    def __init__(self, ad, *, enabled: bool = True, measure_untrained: bool = True):
        self.ad = ad
        declared = list(getattr(ad.conf, "architecture_metrics", None) or [])
        self.names = architecture_metric_names(ad.metrics, declared)
        self.enabled = bool(enabled and self.names)
        self.measure_untrained = measure_untrained
        self.measured_here = 0  # students this worker measured (untrained)
        self._entries: dict[str, dict[str, Any]] = {}
        self._by_arch: dict[tuple, dict[str, Any]] = {}  # the same entries, by a key cheaper than a digest
        self._predictors: dict[str, MetricPredictor] = {}
        self._fitted_on = -1
        self._predicted: dict[tuple, dict[int, float]] = {}
        self._prepared = False
        self._index = {name: ad.metrics.index(name) for name in self.names}
        self._sign = {name: 1.0 if ad.higher_is_better[i] else -1.0 for name, i in self._index.items()}

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Measure the initial candidates (first call), then take in what other workers stored."""
        if not self.enabled:
            return
        if not self._prepared and self.measure_untrained:
            self._prepared = True
            self.measure(self.initial_candidates())
            return
        self._take(read_entries(self.ad.study))
        self._refit()

    def _take(self, entries: Mapping[str, dict[str, Any]]) -> None:
        self._entries = dict(entries)
        self._by_arch = {_arch_tuple(e["arch"]): e for e in entries.values() if isinstance(e.get("arch"), dict)}

    def _remember(self, key: str, entry: dict[str, Any]) -> None:
        self._entries[key] = entry
        self._by_arch[_arch_tuple(entry["arch"])] = entry

    def _refit(self) -> None:
        measured = [e for e in self._entries.values() if isinstance(e.get("metrics"), dict)]
        if len(measured) == self._fitted_on:
            return
        self._fitted_on = len(measured)
        self._predictors = fit_predictors(measured, self.names, self.ad.search_space)
        self._predicted.clear()

    def values(self, arch: Mapping[str, Any]) -> dict[str, float] | None:
        """The stored measurements of ``arch`` (None: not measured, or it failed)."""
        entry = self._by_arch.get(_arch_tuple(arch))
        return dict(entry["metrics"]) if entry and isinstance(entry.get("metrics"), dict) else None

    def known_objectives(self, arch: Mapping[str, Any]) -> dict[int, float]:
        """``{objective index: value}``, higher-is-better (minimised metrics negated): measured values,
        else predicted ones; ``{}`` for an arch whose student could not be built."""
        key = _arch_tuple(arch)
        entry = self._by_arch.get(key)
        if entry is not None:
            stored = entry.get("metrics")
            if not isinstance(stored, dict):
                return {}
            return {self._index[n]: self._sign[n] * float(stored[n]) for n in self.names if n in stored}
        if not self._predictors:
            return {}
        if key not in self._predicted:
            # every predictor of the study has the same features: compute them once
            features = next(iter(self._predictors.values())).features([arch])
            self._predicted[key] = {self._index[n]: self._sign[n] * float(p.predict_features(features)[0])
                                    for n, p in self._predictors.items()}
        return dict(self._predicted[key])

    # ------------------------------------------------------------------ measuring
    def initial_candidates(self) -> list[dict[str, Any]]:
        """Every point of a small space, else a sample seeded by the config's seed (the same in every
        worker, so the first measures it and the others find it measured)."""
        from .search.space import SearchSpace

        space = SearchSpace(self.ad.search_space)
        if len(space) <= MEASURE_ALL_LIMIT:
            return [space.point(i) for i in range(len(space))]
        rng = np.random.default_rng(self.ad.seed or 0)
        picks = rng.choice(len(space), size=INITIAL_SAMPLE, replace=False)
        return [space.point(int(i)) for i in sorted(picks)]

    def measure(self, archs: Sequence[Mapping[str, Any]]) -> int:
        """Measure, on untrained students, the archs the study does not hold yet, under the machine's
        measurement lock (held for the whole batch); returns how many this call measured."""
        from .machine_lock import measurement_lock

        self._take(read_entries(self.ad.study))
        todo = [dict(a) for a in archs if arch_key(a) not in self._entries]
        started = time.perf_counter()
        count = 0
        if not todo:  # all measured already: no need to queue for the lock
            self._refit()
            return 0
        with measurement_lock():
            self._take(read_entries(self.ad.study))  # what others measured while we waited
            todo = [a for a in todo if arch_key(a) not in self._entries]
            if todo:
                from .console import step_started

                step_started("architecture metrics", f"measuring {', '.join(self.names)} of {len(todo)} "
                                                     "untrained students")
            for arch in todo:
                key = arch_key(arch)
                entry = self._measure_one(arch)
                self._store(key, entry)
                self._remember(key, entry)
                count += 1
                if count % GC_EVERY == 0:
                    gc.collect()
        if count:
            log.info("measured %d untrained students in %.1f s", count, time.perf_counter() - started)
        self.measured_here += count
        self._refit()
        return count

    def _measure_one(self, arch: dict[str, Any]) -> dict[str, Any]:
        model = None
        entry: dict[str, Any] = {"arch": arch, **_who(), "started": time.time()}
        try:
            model = self.ad.model_builder(dict(arch))
            entry["metrics"] = self.measure_model(model)
            entry["trained"] = False
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot be built is known, not fatal
            entry["error_type"] = type(exc).__name__
            entry["error"] = str(exc)[:500] or type(exc).__name__
        finally:
            entry["ended"] = time.time()
            del model
        return entry

    def measure_model(self, model: Any) -> dict[str, float]:
        """This worker's architecture metrics of ``model``, by the trial's own evaluator (the built-in
        one of the framework, or ``eval_func``)."""
        measured = self.ad._evaluate(model, self.names)
        if not isinstance(measured, Mapping):  # eval_func may answer a list in the config's metric order
            measured = dict(zip(self.ad.metrics, self.ad.raw_metric_values(measured)))
        return {n: float(measured[n]) for n in self.names}

    def record_trained(self, arch: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Store a finished trial's measurements for an arch the study holds none of."""
        if not self.enabled or arch_key(arch) in self._entries:
            return
        values = {n: float(metrics[n]) for n in self.names if n in metrics}
        if len(values) != len(self.names):
            return
        entry = {"arch": dict(arch), "metrics": values, "trained": True, **_who(), "ended": time.time()}
        self._store(arch_key(arch), entry)
        self._remember(arch_key(arch), entry)

    def _store(self, key: str, entry: dict[str, Any]) -> None:
        study = self.ad.study
        optuna_internals.study_storage(study).set_study_system_attr(optuna_internals.study_id(study), key, entry)


def _who() -> dict[str, Any]:
    from .study import worker_identity

    ident = worker_identity()
    return {"host": ident["host"], "worker": ident.get("worker") or f"pid{ident['pid']}"}


def _arch_tuple(arch: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, type(v).__name__, v) for k, v in arch.items()))
