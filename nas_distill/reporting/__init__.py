"""Reporting: turn a finished (or running) study into tables, figures and a self-contained HTML page.

Modules, one job each:

* :mod:`~nas_distill.reporting.data`: the study's records (:func:`nas_distill.records.read_study`: metrics,
  units, trials, Pareto front) plus the hypervolume history and importances. No plotting library here.
* :mod:`~nas_distill.reporting.table`: the trial table: its columns (CLI and HTML) and its text form.
* :mod:`~nas_distill.reporting.figures`: plotly figures (the interactive HTML and the dashboard).
* :mod:`~nas_distill.reporting.png`: matplotlib PNG copies of the same plots (no browser needed).
* :mod:`~nas_distill.reporting.html`: the page itself (sortable table, embedded JSON data block).
* :mod:`~nas_distill.reporting.dashboard`: optuna-dashboard with the artifact store and pushed figures.

``nas_distill.report.write_report`` is the entry point the CLI calls.
"""
