"""Plotly figures of a study, built from :class:`~nas_distill.reporting.data.StudyData`.

Used by the HTML report (interactive, plotly.js inlined) and by the dashboard push (the hypervolume
history, a view optuna-dashboard does not have). plotly is imported inside the functions so that
importing this module stays cheap.

Which Pareto plot:

* 1 objective: every trial's value against its number, the best-so-far as a step line.
* 2 objectives: a scatter of the two metrics; dominated trials grey, Pareto trials coloured and joined.
  A minimised metric (a cost such as latency) goes on the x axis when there is one.
* 3 or more: a scatter matrix of every pair of metrics, Pareto trials coloured.

Every point's hover text carries the trial number, the architecture and all metrics.

Learning curves (studies with rung records only): the first expensive metric against the training step,
one line per trial: its rung points, then its final value at the end of training for a COMPLETE trial.
A trial the pruner stopped is a grey dashed line ending with an ``x``.
"""

from __future__ import annotations

from typing import Any

from nas_distill.records import MetricInfo, TrialRecord
from nas_distill.reporting.data import Curve, StudyData, format_arch, format_value, learning_curves

__all__ = [
    "PARETO_COLOR",
    "DOMINATED_COLOR",
    "pareto_axes",
    "hover_text",
    "pareto_figure",
    "hypervolume_figure",
    "importance_figure",
    "learning_curves_figure",
    "curve_style",
    "reference_text",
]

PARETO_COLOR = "#d62728"
DOMINATED_COLOR = "#a0a0a0"
LINE_COLOR = "#1f77b4"
_LAYOUT = dict(template="plotly_white", font=dict(size=14), height=520, margin=dict(l=80, r=30, t=80, b=70))


def pareto_axes(metrics: list[MetricInfo]) -> tuple[int, int]:
    """``(x, y)`` metric indices of the 2-objective scatter: a minimised metric on x when there is one."""
    if metrics[0].direction == "minimize" and metrics[1].direction == "maximize":
        return 0, 1
    return 1, 0


def hover_text(row: TrialRecord, metrics: list[MetricInfo]) -> str:
    """``trial #n (Pareto)<br>arch<br>metric: value unit ...<br>params: count`` for one trial."""
    lines = [f"trial #{row.number}" + (" (Pareto)" if row.pareto else "")]
    lines.append(format_arch(row.arch, sep="<br>") if row.arch else "arch: -")
    for m, v in zip(metrics, row.values or []):
        lines.append(f"{m.name}: {format_value(v, m.unit)}" + (f" {m.unit}" if m.unit else ""))
    if row.n_params is not None:
        lines.append(f"params: {format_value(row.n_params, 'count')}")
    return "<br>".join(lines)


def reference_text(data: StudyData) -> str:
    """``accuracy=0.81 fraction, latency=9.1 ms``: the hypervolume reference point, for titles."""
    if data.reference is None:
        return "-"
    return ", ".join(
        f"{m.name}={format_value(v, m.unit)}" + (f" {m.unit}" if m.unit else "")
        for m, v in zip(data.metrics, data.reference)
    )


def _title(text: str, sub: str | None = None) -> dict[str, Any]:
    if sub:
        text = f"{text}<br><sup>{sub}</sup>"
    return dict(text=text, x=0.02, xanchor="left")


def pareto_figure(data: StudyData):
    """The Pareto plot for the study's number of objectives (see the module docstring)."""
    import plotly.graph_objects as go

    complete = data.complete
    metrics = data.metrics
    fig = go.Figure()
    if len(metrics) == 1:
        m = metrics[0]
        xs = [r.number for r in complete]
        ys = [r.values[0] for r in complete]
        best, best_so_far = None, []
        for y in ys:
            better = best is None or (y > best if m.direction == "maximize" else y < best)
            best = y if better else best
            best_so_far.append(best)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", name="trial",
            marker=dict(color=[PARETO_COLOR if r.pareto else DOMINATED_COLOR for r in complete], size=9),
            hovertext=[hover_text(r, metrics) for r in complete], hoverinfo="text",
        ))
        fig.add_trace(go.Scatter(
            x=xs, y=best_so_far, mode="lines", name="best so far", line=dict(color=LINE_COLOR, shape="hv"),
            hoverinfo="skip",
        ))
        fig.update_layout(
            title=_title(f"Best so far: {m.described}", data.study_name),
            xaxis_title="trial number", yaxis_title=m.label, **_LAYOUT,
        )
        return fig

    dominated = [r for r in complete if not r.pareto]
    front = [r for r in complete if r.pareto]
    if len(metrics) == 2:
        xi, yi = pareto_axes(metrics)
        mx, my = metrics[xi], metrics[yi]
        front_sorted = sorted(front, key=lambda r: (r.values[xi], r.values[yi]))
        fig.add_trace(go.Scatter(
            x=[r.values[xi] for r in dominated], y=[r.values[yi] for r in dominated], mode="markers",
            name="dominated", marker=dict(color=DOMINATED_COLOR, size=8, opacity=0.7),
            hovertext=[hover_text(r, metrics) for r in dominated], hoverinfo="text",
        ))
        fig.add_trace(go.Scatter(
            x=[r.values[xi] for r in front_sorted], y=[r.values[yi] for r in front_sorted],
            mode="lines+markers+text", name="Pareto front",
            text=[f"#{r.number}" for r in front_sorted], textposition="top center",
            marker=dict(color=PARETO_COLOR, size=11, line=dict(color="black", width=1)),
            line=dict(color=PARETO_COLOR, width=2),
            hovertext=[hover_text(r, metrics) for r in front_sorted], hoverinfo="text",
        ))
        fig.update_layout(
            title=_title(
                f"Pareto front: {my.described} vs {mx.described}",
                f"{data.study_name}: {len(front)} Pareto trials of {len(complete)} complete",
            ),
            xaxis_title=mx.label, yaxis_title=my.label, **_LAYOUT,
        )
        return fig

    dims_of = lambda rows: [  # noqa: E731
        dict(label=m.label, values=[r.values[i] for r in rows]) for i, m in enumerate(metrics)
    ]
    for rows, name, color, size in ((dominated, "dominated", DOMINATED_COLOR, 6), (front, "Pareto", PARETO_COLOR, 9)):
        fig.add_trace(go.Splom(
            dimensions=dims_of(rows), name=name, marker=dict(color=color, size=size),
            hovertext=[hover_text(r, metrics) for r in rows], hoverinfo="text", diagonal_visible=False,
        ))
    layout = dict(_LAYOUT)
    layout["height"] = 260 * len(metrics)
    fig.update_layout(
        title=_title(
            "Pareto front: " + ", ".join(f"{m.described}" for m in metrics),
            f"{data.study_name}: {len(front)} Pareto trials of {len(complete)} complete",
        ),
        **layout,
    )
    return fig


def hypervolume_figure(data: StudyData):
    """Hypervolume of the complete trials so far, against the trial number (a step line)."""
    import plotly.graph_objects as go

    xs = [n for n, _ in data.hv_history]
    ys = [hv for _, hv in data.hv_history]
    units = " x ".join(m.unit or m.name for m in data.metrics)
    fig = go.Figure(go.Scatter(
        x=xs, y=ys, mode="lines+markers", line=dict(color=LINE_COLOR, shape="hv"), name="hypervolume",
        hovertemplate="trial #%{x}<br>hypervolume %{y:.4g}<extra></extra>",
    ))
    fig.update_layout(
        title=_title(
            "Hypervolume over trials (" + ", ".join(m.name for m in data.metrics) + ")",
            f"reference point = worst observed value of each metric: {reference_text(data)}",
        ),
        xaxis_title="trial number", yaxis_title=f"hypervolume ({units})", **_LAYOUT,
    )
    return fig


#: Legend name, colour and line dash of each kind of learning curve (:class:`~nas_distill.reporting.data.Curve`).
_CURVE_KINDS = {"complete": ("complete", LINE_COLOR, "solid"),
                "stopped": ("stopped early", DOMINATED_COLOR, "dash"),
                "other": ("running or failed", DOMINATED_COLOR, "dot")}
CURVES_NOTE = ("rung points are measured on the rung slice of the evaluation set; a complete trial ends "
               "at its final evaluation; trials stopped early are dashed and end with x")


def curve_style(curve: Curve) -> tuple[str, str, str]:
    """``(legend name, colour, dash)`` of a curve; Pareto-optimal complete trials in the Pareto colour."""
    if curve.pareto:
        return "Pareto-optimal", PARETO_COLOR, "solid"
    return _CURVE_KINDS[curve.kind]


def _stop_note(curve: Curve) -> str:
    """The pruner's reason under a stopped trial's hover text, wrapped (plotly's hover is one line)."""
    if curve.reason is None:
        return ""
    import html
    import textwrap

    lines = textwrap.wrap("stopped early: " + curve.reason, 60)
    return "".join("<br>" + html.escape(line) for line in lines)


def learning_curves_figure(data: StudyData):
    """The learning curves of every trial with rung records; ``None`` when no trial has any."""
    metric, curves = learning_curves(data)
    if not curves:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    in_legend: set[str] = set()
    for curve in curves:
        name, color, dash = curve_style(curve)
        end = "x" if curve.kind == "stopped" else "circle"
        fig.add_trace(go.Scatter(
            x=curve.steps, y=curve.values, mode="lines+markers", name=name, legendgroup=name, meta=curve.number,
            showlegend=name not in in_legend, line=dict(color=color, dash=dash, width=1.5),
            marker=dict(color=color, size=[7] * (len(curve.steps) - 1) + [10],
                        symbol=["circle"] * (len(curve.steps) - 1) + [end]),
            hovertemplate=f"trial #%{{meta}}<br>step %{{x}}<br>{metric.name} %{{y:.4g}}{_stop_note(curve)}"
                          "<extra></extra>",
        ))
        in_legend.add(name)
    fig.update_layout(title=_title(f"Learning curves: {metric.described}", f"{data.study_name}: {CURVES_NOTE}"),
                      xaxis_title="training step", yaxis_title=metric.label, **_LAYOUT)
    return fig


def importance_figure(data: StudyData):
    """Per-parameter importance, one bar group per objective; ``None`` when there is none."""
    if not data.importances:
        return None
    import optuna
    import plotly.graph_objects as go

    params = sorted({p for imp in data.importances.values() for p in imp})
    fig = go.Figure()
    for m in data.metrics:
        imp = data.importances.get(m.name, {})
        fig.add_trace(go.Bar(
            y=params, x=[imp.get(p, 0.0) for p in params], orientation="h", name=m.label,
            hovertemplate="%{y}: %{x:.3f}<extra>" + m.name + "</extra>",
        ))
    layout = dict(_LAYOUT)
    layout["height"] = max(320, 90 + 40 * len(params) * len(data.metrics))
    fig.update_layout(
        title=_title("Parameter importance per objective",
                     f"Optuna {optuna.__version__} default importance evaluator, normalised to sum 1"),
        xaxis_title="importance (normalised, sum 1)", yaxis_title="architecture parameter",
        barmode="group", **layout,
    )
    return fig
