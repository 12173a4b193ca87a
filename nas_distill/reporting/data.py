"""What the report, its figures and the dashboard show beyond the study's records: the hypervolume history
and the parameter importances, computed once so the figures, the table and the embedded JSON block agree.

The trials, metrics and Pareto front come from :func:`nas_distill.records.read_study` (the one reading of
a study). This module keeps plotting libraries out (it imports only numpy and optuna).

Hypervolume reference point: the **worst observed value of each metric** over all complete trials (the
minimum of a maximised metric, the maximum of a minimised one). It needs no user input and makes the last
value of the history comparable between runs of the same space only loosely; a trial that is worst in
some metric adds no volume (a point must be strictly better than the reference in every metric), so the
history starts at 0 and grows as better trade-offs appear.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import optuna

from nas_distill.records import MetricInfo, StudyRecords, TrialRecord, metric_unit, read_study
from nas_distill.search.pareto import find_pareto_front, hypervolume

__all__ = ["Curve", "StudyData", "collect", "curve_metric", "format_value", "format_arch", "learning_curves"]


@dataclass
class StudyData(StudyRecords):
    """The study's records plus what the report adds, computed once by :func:`collect`."""

    #: Hypervolume reference point in raw metric units (one value per metric), ``None`` without data.
    reference: list[float] | None = None
    #: ``(trial number, hypervolume of the complete trials up to it)`` in trial-number order.
    hv_history: list[tuple[int, float]] = field(default_factory=list)
    #: ``{metric name: {param: importance}}`` (normalised to sum 1); empty when not computed (see
    #: ``importance_note``). Evaluator: ``optuna.importance.get_param_importances``' default.
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_note: str | None = None

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


# ------------------------------------------------------------------------------------- learning curves
@dataclass(frozen=True)
class Curve:
    """One trial's learning curve: its rung points, then (COMPLETE trials) the final value at the end of
    training. ``kind``: ``"complete"``, ``"stopped"`` (by the pruner) or ``"other"`` (running, failed)."""

    number: int
    kind: str
    steps: list[int]
    values: list[float]
    pareto: bool = False
    #: Why the pruner stopped it (``"stopped"`` curves), else None.
    reason: str | None = None


def curve_metric(records: StudyRecords) -> MetricInfo | None:
    """The metric the learning curves show: the first of the study's metrics measured at the rungs (the
    first expensive one), else the first name in the rung records; None without rung records."""
    measured = list(dict.fromkeys(name for t in records.trials for r in t.rungs for name in r.values))
    for m in records.metrics:
        if m.name in measured:
            return m
    if not measured:
        return None
    observed = [r.values[measured[0]] for t in records.trials for r in t.rungs if measured[0] in r.values]
    return MetricInfo(measured[0], "maximize", metric_unit(measured[0], observed))


def learning_curves(records: StudyRecords) -> tuple[MetricInfo | None, list[Curve]]:
    """The metric of :func:`curve_metric` and one :class:`Curve` per trial that measured it at a rung."""
    metric = curve_metric(records)
    if metric is None:
        return None, []
    index = next((i for i, m in enumerate(records.metrics) if m.name == metric.name), None)
    curves = []
    for t in records.trials:
        points = [(r.step, r.values[metric.name]) for r in t.rungs if metric.name in r.values]
        if not points:
            continue
        if t.complete and index is not None:
            points.append((t.rungs[-1].of, t.values[index]))
        kind = "complete" if t.complete else "stopped" if t.stopped_early else "other"
        reason = t.early_stop.reason if t.stopped_early else None
        curves.append(Curve(t.number, kind, [s for s, _ in points], [v for _, v in points], t.pareto, reason))
    return metric, curves


# -------------------------------------------------------------------------------------------- collect
def _hypervolume_history(
    rows: list[TrialRecord], metrics: list[MetricInfo]
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
    study: optuna.Study, rows: list[TrialRecord], metrics: list[MetricInfo]
) -> tuple[dict[str, dict[str, float]], str | None]:
    """Importances per objective with Optuna's default evaluator, or a note saying why there are none."""
    if len(rows) < 2:
        return {}, f"Parameter importance needs at least 2 complete trials; this study has {len(rows)}."
    varied = [
        name
        for name in {k for r in rows for k in r.arch}
        if len({repr(r.arch.get(name)) for r in rows}) > 1
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
        importances: compute per-parameter importances (Optuna's default evaluator, per objective); ``False``
            for the dashboard's figures, which do not show them.
    """
    records = read_study(study)
    data = StudyData(**{f.name: getattr(records, f.name) for f in fields(StudyRecords)})
    complete = data.complete
    data.reference, data.hv_history = _hypervolume_history(complete, data.metrics)
    if importances:
        data.importances, data.importance_note = _importances(study, complete, data.metrics)
    return data
