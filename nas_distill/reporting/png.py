"""PNG copies of the report's plots, drawn with matplotlib.

Why matplotlib and not plotly's image export: kaleido needs a browser it may download, and the machines
that run reports can be offline. matplotlib's Agg canvas draws straight to a file with no display, no
browser and no global state (we use ``matplotlib.figure.Figure`` directly, never ``pyplot``, so this is
safe in threads and never opens a window).

The PNGs mirror the HTML figures of :mod:`~nas_distill.reporting.figures`: same titles, axis labels
(metric names with units), colours and Pareto trials.
"""

from __future__ import annotations

from pathlib import Path

from nas_distill.reporting.data import StudyData, learning_curves
from nas_distill.reporting.figures import (
    CURVES_NOTE,
    DOMINATED_COLOR,
    LINE_COLOR,
    PARETO_COLOR,
    curve_style,
    pareto_axes,
    reference_text,
)

__all__ = ["write_pngs"]

_DPI = 120


def _figure(width: float = 9.0, height: float = 6.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _pareto_png(data: StudyData, path: Path) -> None:
    complete, metrics = data.complete, data.metrics
    front = [r for r in complete if r.pareto]
    dominated = [r for r in complete if not r.pareto]
    if len(metrics) == 1:
        m = metrics[0]
        fig = _figure()
        ax = fig.add_subplot()
        xs = [r.number for r in complete]
        ys = [r.values[0] for r in complete]
        best, steps = None, []
        for y in ys:
            if best is None or (y > best if m.direction == "maximize" else y < best):
                best = y
            steps.append(best)
        ax.scatter(xs, ys, c=[PARETO_COLOR if r.pareto else DOMINATED_COLOR for r in complete], s=30,
                   label="trial", zorder=3)
        ax.step(xs, steps, where="post", color=LINE_COLOR, label="best so far")
        ax.set(title=f"Best so far: {m.described}\n{data.study_name}", xlabel="trial number",
               ylabel=m.label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
        ax.grid(alpha=0.3)
    elif len(metrics) == 2:
        xi, yi = pareto_axes(metrics)
        mx, my = metrics[xi], metrics[yi]
        fig = _figure()
        ax = fig.add_subplot()
        ax.scatter([r.values[xi] for r in dominated], [r.values[yi] for r in dominated],
                   color=DOMINATED_COLOR, s=30, alpha=0.7, label="dominated", zorder=2)
        front = sorted(front, key=lambda r: (r.values[xi], r.values[yi]))
        ax.plot([r.values[xi] for r in front], [r.values[yi] for r in front], "-o", color=PARETO_COLOR,
                markeredgecolor="black", markersize=7, label="Pareto front", zorder=3)
        for r in front:
            ax.annotate(f"#{r.number}", (r.values[xi], r.values[yi]), textcoords="offset points",
                        xytext=(4, 6), fontsize=9)
        ax.set(title=f"Pareto front: {my.described} vs {mx.described}\n"
                     f"{data.study_name}: {len(front)} Pareto trials of {len(complete)} complete",
               xlabel=mx.label, ylabel=my.label)
        ax.legend()
        ax.grid(alpha=0.3)
    else:
        n = len(metrics)
        fig = _figure(3.2 * n, 3.2 * n)
        axes = fig.subplots(n, n, squeeze=False)
        for i in range(n):
            for j in range(n):
                ax = axes[i][j]
                if i == j:
                    ax.text(0.5, 0.5, metrics[i].described.replace(" (", "\n("), ha="center", va="center",
                            transform=ax.transAxes, fontsize=11)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    continue
                ax.scatter([r.values[j] for r in dominated], [r.values[i] for r in dominated],
                           color=DOMINATED_COLOR, s=12)
                ax.scatter([r.values[j] for r in front], [r.values[i] for r in front],
                           color=PARETO_COLOR, s=20, edgecolors="black", linewidths=0.5)
                if i == n - 1:
                    ax.set_xlabel(metrics[j].label)
                if j == 0:
                    ax.set_ylabel(metrics[i].label)
        fig.suptitle(f"Pareto front: {len(front)} of {len(complete)} complete trials (red)\n{data.study_name}")
    fig.savefig(path)


def _hypervolume_png(data: StudyData, path: Path) -> None:
    fig = _figure(9.0, 5.0)
    ax = fig.add_subplot()
    xs = [n for n, _ in data.hv_history]
    ys = [hv for _, hv in data.hv_history]
    ax.step(xs, ys, where="post", color=LINE_COLOR)
    ax.plot(xs, ys, "o", color=LINE_COLOR, markersize=4)
    units = " x ".join(m.unit or m.name for m in data.metrics)
    ax.set(title="Hypervolume over trials (" + ", ".join(m.name for m in data.metrics) + ")\n"
                 f"reference point = worst observed: {reference_text(data)}",
           xlabel="trial number", ylabel=f"hypervolume ({units})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    fig.savefig(path)


def _importance_png(data: StudyData, path: Path) -> None:
    import numpy as np

    params = sorted({p for imp in data.importances.values() for p in imp})
    k = len(data.metrics)
    fig = _figure(9.0, max(3.5, 1.2 + 0.45 * len(params) * k))
    ax = fig.add_subplot()
    height = 0.8 / k
    base = np.arange(len(params))
    for j, m in enumerate(data.metrics):
        imp = data.importances.get(m.name, {})
        ax.barh(base + j * height, [imp.get(p, 0.0) for p in params], height=height, label=m.label)
    ax.set_yticks(base + height * (k - 1) / 2, params)
    ax.set(title="Parameter importance per objective (Optuna default evaluator, normalised)",
           xlabel="importance (normalised, sum 1)", ylabel="architecture parameter")
    ax.legend()
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)


_DASHES = {"solid": "-", "dash": "--", "dot": ":"}


def _learning_curves_png(data: StudyData, path: Path) -> None:
    import textwrap

    metric, curves = learning_curves(data)
    fig = _figure(9.0, 5.5)
    ax = fig.add_subplot()
    in_legend: set[str] = set()
    for curve in curves:
        name, color, dash = curve_style(curve)
        ax.plot(curve.steps, curve.values, _DASHES[dash], color=color, marker="o", markersize=4, linewidth=1.2,
                label=None if name in in_legend else name)
        if curve.kind == "stopped":
            ax.plot(curve.steps[-1:], curve.values[-1:], "x", color=color, markersize=9, markeredgewidth=2)
        in_legend.add(name)
    ax.set(title=f"Learning curves: {metric.described}\n" + textwrap.fill(f"{data.study_name}: {CURVES_NOTE}", 100),
           xlabel="training step", ylabel=metric.label)
    ax.title.set_fontsize(10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path)


def write_pngs(data: StudyData, out_dir: Path) -> dict[str, Path]:
    """Write ``pareto.png``, ``hypervolume.png``, (when computed) ``importance.png`` and (when some trial
    has rung records) ``learning_curves.png`` into ``out_dir``.

    Returns ``{plot name: path}`` of the files written; the first three need a complete trial.
    """
    written: dict[str, Path] = {}
    out_dir = Path(out_dir)
    jobs = [("pareto", _pareto_png), ("hypervolume", _hypervolume_png)] if data.complete else []
    if data.importances and data.complete:
        jobs.append(("importance", _importance_png))
    if data.has_rungs:
        jobs.append(("learning_curves", _learning_curves_png))
    for name, draw in jobs:
        path = out_dir / f"{name}.png"
        draw(data, path)
        written[name] = path
    return written
