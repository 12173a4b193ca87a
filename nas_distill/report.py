"""Report of a study: one self-contained HTML page plus PNG copies of its plots, and CLI tables.

``write_report(study, out_dir)`` is what ``nas-distill report`` calls. It writes into ``out_dir``:

* ``report.html``: the Pareto front (best-so-far for one objective, a scatter for two, a scatter matrix
  for three or more; hover shows the architecture and every metric), the hypervolume over trials, the
  per-parameter importance per objective, and a sortable table of every trial (failed ones with their
  error). plotly.js is inlined, so the file works offline. The data behind it is embedded as JSON in
  ``<script type="application/json" id="nas-distill-data">`` (Pareto trial numbers, reference point,
  hypervolume history, every trial).
* the learning curves (when some trial has rung records, the pruner's partial evaluations): the first
  expensive metric against the training step, one line per trial, trials stopped early dashed.
* ``pareto.png``, ``hypervolume.png``, ``importance.png`` (when importances could be computed) and
  ``learning_curves.png`` (with rung records), drawn with matplotlib, so no browser is needed.

A study with no complete trial still gets a page that says so (and lists the trials it has), no PNGs.

The trial table of the page has the columns of the CLI's ``status`` and ``pareto`` tables
(:mod:`nas_distill.reporting.table`). See :mod:`nas_distill.reporting` for the parts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import optuna

from nas_distill.atomic_file import write_text_atomic
from nas_distill.reporting.data import StudyData, collect, format_arch

__all__ = ["write_report", "format_arch", "collect", "StudyData"]

_log = logging.getLogger(__name__)


def write_report(
    study: optuna.Study,
    out_dir: str | os.PathLike[str],
    *,
    filename: str = "report.html",
    png: bool = True,
    importances: bool = True,
) -> Path:
    """Write the HTML report of ``study`` (and PNG copies of its plots) into ``out_dir``.

    Args:
        study: the search's Optuna study (single- or multi-objective, trials in any state).
        out_dir: folder for the outputs; created if missing. Existing files of the same names are
            replaced.
        filename: name of the HTML file.
        png: also write ``pareto.png`` / ``hypervolume.png`` / ``importance.png`` (needs matplotlib;
            without it the page says so and the HTML is still written).
        importances: compute per-parameter importances (the slowest part on big studies).

    Returns:
        The path of the HTML file.
    """
    from nas_distill.arch_metrics import summary as arch_metrics_summary
    from nas_distill.reporting.figures import (
        hypervolume_figure,
        importance_figure,
        learning_curves_figure,
        pareto_figure,
    )
    from nas_distill.reporting.html import render_page

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = collect(study, importances=importances)
    data.architecture_metrics = arch_metrics_summary(study)
    figures = {}
    if data.complete:
        figures = {
            "pareto": pareto_figure(data),
            "hypervolume": hypervolume_figure(data),
            "importance": importance_figure(data),
        }
    if data.has_rungs:
        figures["learning_curves"] = learning_curves_figure(data)
    pngs: dict[str, str] = {}
    if png and (data.complete or data.has_rungs):
        try:
            from nas_distill.reporting.png import write_pngs

            pngs = {name: p.name for name, p in write_pngs(data, out).items()}
        except ImportError as exc:
            _log.warning("PNG copies skipped (%s); install the 'dashboard' extra for matplotlib", exc)
    path = out / filename
    write_text_atomic(path, render_page(data, figures, pngs))
    return path
