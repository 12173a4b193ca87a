"""Read a study once into plain data that every output (HTML, PNG, dashboard, CLI table) shares.

Why a separate step: the figures, the table and the embedded JSON block must agree on which trials are
on the Pareto front and on the hypervolume; computing them once here keeps them consistent, and keeps
plotting libraries out of this module (it imports only numpy and optuna).

Conventions:

* Metric values are kept *raw*, in the study's own directions (as the study stores them). Only the
  Pareto front and the hypervolume flip the sign of minimised metrics, because
  :mod:`nas_distill.search.pareto` works on "higher is better" vectors.
* Hypervolume reference point: the **worst observed value of each metric** over all complete trials
  (the minimum of a maximised metric, the maximum of a minimised one). It needs no user input and
  makes the last value of the history comparable between runs of the same space only loosely; a trial
  that is worst in some metric adds no volume (a point must be strictly better than the reference in
  every metric), so the history starts at 0 and grows as better trade-offs appear.
* Units come from the metric name (``accuracy`` -> fraction or %, ``latency`` -> ms, ``params`` ->
  count, ``model_size_mb`` -> MiB) unless the study's user attr ``metric_units`` (a ``{name: unit}``
  dict) says otherwise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_distill.search.pareto import find_pareto_front, hypervolume

__all__ = [
    "MetricInfo",
    "TrialRow",
    "StudyData",
    "collect",
    "metric_unit",
    "format_value",
    "format_arch",
]


@dataclass(frozen=True)
class MetricInfo:
    """One objective of the study: its name, direction and unit, and the axis label built from them."""

    name: str
    direction: str  # "maximize" or "minimize"
    unit: str | None

    @property
    def sign(self) -> float:
        """+1 for a maximised metric, -1 for a minimised one ("higher is better" after multiplying)."""
        return 1.0 if self.direction == "maximize" else -1.0

    @property
    def label(self) -> str:
        """Axis label, e.g. ``"latency (ms)"``."""
        return f"{self.name} ({self.unit})" if self.unit else self.name

    @property
    def arrow(self) -> str:
        return "higher is better" if self.direction == "maximize" else "lower is better"

    @property
    def described(self) -> str:
        """Label with the direction, for titles: ``"latency (ms, lower is better)"``."""
        inside = f"{self.unit}, {self.arrow}" if self.unit else self.arrow
        return f"{self.name} ({inside})"


@dataclass
class TrialRow:
    """What the report shows of one trial, whatever its state."""

    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    n_params: int | None
    duration_s: float | None
    worker: str | None
    error: str | None
    pareto: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "params": self.params,
            "values": self.values,
            "n_params": self.n_params,
            "duration_s": self.duration_s,
            "worker": self.worker,
            "error": self.error,
            "pareto": self.pareto,
        }


@dataclass
class StudyData:
    """Everything the outputs need, computed once by :func:`collect`."""

    study_name: str
    metrics: list[MetricInfo]
    param_names: list[str]
    trials: list[TrialRow]
    pareto_numbers: list[int]
    #: Hypervolume reference point in raw metric units (one value per metric), ``None`` without data.
    reference: list[float] | None
    #: ``(trial number, hypervolume of the complete trials up to it)`` in trial-number order.
    hv_history: list[tuple[int, float]]
    #: ``{metric name: {param: importance}}`` (normalised to sum 1); empty when not computed (see
    #: ``importance_note``). Evaluator: ``optuna.importance.get_param_importances``' default.
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_note: str | None = None
    #: :func:`nas_distill.arch_metrics.summary` (students measured untrained, predictor errors) or None.
    architecture_metrics: dict[str, Any] | None = None

    @property
    def complete(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.values is not None]

    @property
    def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t.state] = counts.get(t.state, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        """The JSON block embedded in the HTML page (tests and scripts read it back)."""
        return {
            "study_name": self.study_name,
            "metrics": [
                {"name": m.name, "direction": m.direction, "unit": m.unit, "label": m.label}
                for m in self.metrics
            ],
            "param_names": self.param_names,
            "pareto_trial_numbers": self.pareto_numbers,
            "reference_point": self.reference,
            "hypervolume_history": [[n, hv] for n, hv in self.hv_history],
            "importances": self.importances,
            "importance_note": self.importance_note,
            "state_counts": self.state_counts,
            "architecture_metrics": self.architecture_metrics,
            "trials": [t.to_json() for t in self.trials],
        }


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


# ----------------------------------------------------------------------------------------- formatting
def format_value(value: Any, unit: str | None = None) -> str:
    """A short human string for a metric or count: 4 significant digits, thousands as k / M."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)) and unit == "count":
        v = int(value)
        if abs(v) >= 1_000_000:
            return f"{v / 1e6:.3g}M"
        if abs(v) >= 10_000:
            return f"{v / 1e3:.3g}k"
        return str(v)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if unit == "count" and math.isfinite(value) and float(value).is_integer():
            return format_value(int(value), unit)
        return f"{float(value):.4g}"
    return str(value)


def format_arch(arch: dict[str, Any] | None, *, sep: str = ", ") -> str:
    """``{'hidden_size': 256, 'num_hidden_layers': 2}`` -> ``"hidden_size=256, num_hidden_layers=2"``."""
    if not arch:
        return "-"
    return sep.join(f"{key}={format_value(value)}" for key, value in arch.items())


# -------------------------------------------------------------------------------------------- collect
def _metric_infos(study: optuna.Study, trials: list[FrozenTrial]) -> list[MetricInfo]:
    directions = [d.name.lower() for d in study.directions]
    names = list(study.metric_names or [])
    if len(names) != len(directions):
        names = ["value"] if len(directions) == 1 else [f"objective_{i}" for i in range(len(directions))]
    overrides = study.user_attrs.get("metric_units")
    overrides = overrides if isinstance(overrides, dict) else None
    infos = []
    for i, (name, direction) in enumerate(zip(names, directions)):
        observed = [t.values[i] for t in trials if t.state == TrialState.COMPLETE and t.values]
        infos.append(MetricInfo(name, direction, metric_unit(name, observed, overrides)))
    return infos


def _row(trial: FrozenTrial) -> TrialRow:
    attrs = trial.user_attrs
    arch = trial.params or (attrs.get("arch") if isinstance(attrs.get("arch"), dict) else {})
    error = None
    if attrs.get("error_type") or attrs.get("error"):
        error = ": ".join(str(x) for x in (attrs.get("error_type"), attrs.get("error")) if x)
    n_params = attrs.get("params")
    try:
        n_params = int(n_params) if n_params is not None else None
    except (TypeError, ValueError):
        n_params = None
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    values = None
    if trial.state == TrialState.COMPLETE and trial.values is not None:
        values = [float(v) for v in trial.values]
    worker = attrs.get("worker")
    return TrialRow(
        number=trial.number,
        state=trial.state.name,
        params=dict(arch),
        values=values,
        n_params=n_params,
        duration_s=duration,
        worker=str(worker) if worker is not None else None,
        error=error,
    )


def _hypervolume_history(
    rows: list[TrialRow], metrics: list[MetricInfo]
) -> tuple[list[float] | None, list[tuple[int, float]]]:
    """Reference point (raw units) and the hypervolume after each complete trial (number order)."""
    if not rows:
        return None, []
    signs = np.array([m.sign for m in metrics])
    signed = np.array([r.values for r in rows], dtype=np.float64) * signs
    finite = np.where(np.isfinite(signed), signed, np.nan)
    if np.isnan(finite).all(axis=0).any():
        return None, []
    reference = np.nanmin(finite, axis=0)  # worst observed, "higher is better" signs
    history: list[tuple[int, float]] = []
    front = np.empty((0, len(metrics)))
    for row, point in zip(rows, signed):
        front = np.vstack([front, point[None, :]])
        front = front[find_pareto_front(front)]
        history.append((row.number, float(hypervolume(front, reference))))
    return [float(v) for v in reference * signs], history


def _importances(
    study: optuna.Study, rows: list[TrialRow], metrics: list[MetricInfo]
) -> tuple[dict[str, dict[str, float]], str | None]:
    """Importances per objective with Optuna's default evaluator, or a note saying why there are none."""
    if len(rows) < 2:
        return {}, f"Parameter importance needs at least 2 complete trials; this study has {len(rows)}."
    varied = [
        name
        for name in {k for r in rows for k in r.params}
        if len({repr(r.params.get(name)) for r in rows}) > 1
    ]
    if not varied:
        return {}, "Parameter importance needs complete trials whose parameters differ; all are equal."
    out: dict[str, dict[str, float]] = {}
    try:
        for i, metric in enumerate(metrics):
            # The default evaluator (PED-ANOVA in Optuna 5) ranks params by how they reach LOW target
            # values, so a maximised metric is negated; it warns whenever a target is given.
            sign = -metric.sign
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*computes the importances of params.*")
                warnings.filterwarnings("ignore", message=".*too small to compute importances.*")
                imp = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, sign=sign: sign * t.values[i]
                )
            out[metric.name] = {k: float(v) for k, v in imp.items()}
    except Exception as exc:  # importance is a nicety: never let it break the report
        return {}, f"Parameter importance could not be computed: {type(exc).__name__}: {exc}"
    return out, None


def collect(study: optuna.Study, *, importances: bool = True) -> StudyData:
    """Read ``study`` into a :class:`StudyData` (one pass over its trials).

    Args:
        study: any Optuna study; single- or multi-objective, with trials in any state.
        importances: compute per-parameter importances (Optuna's default evaluator, per objective); ``False`` for the CLI tables, which do not show them.
    """
    frozen = study.get_trials(deepcopy=False)
    metrics = _metric_infos(study, frozen)
    rows = [_row(t) for t in sorted(frozen, key=lambda t: t.number)]
    param_names: list[str] = []
    for r in rows:
        for k in r.params:
            if k not in param_names:
                param_names.append(k)
    complete = [r for r in rows if r.state == "COMPLETE" and r.values is not None]
    pareto_numbers: list[int] = []
    if complete:
        signs = np.array([m.sign for m in metrics])
        signed = np.array([r.values for r in complete], dtype=np.float64) * signs
        signed = np.where(np.isnan(signed), -np.inf, signed)
        for idx in find_pareto_front(signed):
            complete[int(idx)].pareto = True
            pareto_numbers.append(complete[int(idx)].number)
    reference, history = _hypervolume_history(complete, metrics)
    data = StudyData(
        study_name=study.study_name,
        metrics=metrics,
        param_names=param_names,
        trials=rows,
        pareto_numbers=sorted(pareto_numbers),
        reference=reference,
        hv_history=history,
    )
    if importances:
        data.importances, data.importance_note = _importances(study, complete, metrics)
    return data
