"""The self-contained HTML page of a study report.

Self-contained means one file that works offline: plotly.js is inlined once (in the first figure), the
CSS and the table-sorting script are inline, and the data behind the page is embedded as a JSON block
(``<script type="application/json" id="nas-distill-data">``) that scripts and tests can read back.

The trial table sorts on a header click with a few lines of plain JavaScript: every cell carries its raw
value in ``data-v`` (numbers sort numerically, the rest as text, empty cells last).
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from nas_distill.arch_metrics import summary_lines
from nas_distill.reporting.data import StudyData
from nas_distill.reporting.figures import CURVES_NOTE
from nas_distill.reporting.table import table_columns

__all__ = ["render_page", "DATA_BLOCK_ID"]

DATA_BLOCK_ID = "nas-distill-data"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.summary { color: #444; } .note { background: #fff8e1; border-left: 4px solid #f0ad4e; padding: 8px 12px; }
.empty { background: #eef4ff; border-left: 4px solid #1f77b4; padding: 16px; font-size: 1.2em; }
table.trials { border-collapse: collapse; font-size: 13px; }
table.trials th, table.trials td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; white-space: nowrap; }
table.trials th { background: #f4f4f4; cursor: pointer; position: sticky; top: 0; user-select: none; }
table.trials th.asc::after { content: " \\25B2"; } table.trials th.desc::after { content: " \\25BC"; }
table.trials td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.pareto td { background: #fdecea; font-weight: 600; } tr.FAIL td { color: #a00; }
td.err { max-width: 40em; white-space: pre-wrap; word-break: break-word; font-weight: normal; }
.tablewrap { overflow: auto; max-height: 80vh; }
"""

_SORT_JS = """
(function () {
  document.querySelectorAll("table.trials").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var asc = !th.classList.contains("asc");
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(asc ? "asc" : "desc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
          if (x === "" || x === null) { return (y === "" || y === null) ? 0 : 1; }
          if (y === "" || y === null) { return -1; }
          var nx = Number(x), ny = Number(y), cmp;
          if (!isNaN(nx) && !isNaN(ny)) { cmp = nx - ny; } else { cmp = x.localeCompare(y); }
          return asc ? cmp : -cmp;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any, shown: str | None = None, cls: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raw = "" if value is None else str(value)
    elif isinstance(value, bool):
        raw = "1" if value else "0"
    else:
        raw = str(value)
    text = shown if shown is not None else ("-" if value is None else str(value))
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-v="{_esc(raw)}">{_esc(text)}</td>'


def _table(data: StudyData) -> str:
    """Every trial, with the columns of the CLI's tables (:func:`~nas_distill.reporting.table.table_columns`);
    metric headers carry their units here."""
    trailing = ("time_s", "worker", "error") + (("rungs",) if data.has_rungs else ())
    columns = table_columns(data.trials, data.metrics, data.param_names, leading=("state", "pareto"),
                            trailing=trailing)
    units = {f"{m.name} {arrow}": f"{m.label} {arrow}" for m in data.metrics for arrow in "↑↓"}
    out = ['<div class="tablewrap"><table class="trials" id="trials"><thead><tr>']
    out += [f"<th>{_esc(units.get(c.title, c.title))}</th>" for c in columns]
    out.append("</tr></thead><tbody>")
    for r, t in enumerate(data.trials):
        cls = " ".join(c for c in (t.state, "pareto" if t.pareto else "") if c)
        out.append(f'<tr class="{cls}" data-trial="{t.number}">')
        for c in columns:
            css = "err" if c.title == "error" else "num" if c.numeric else ""
            value = c.values[r]
            shown = "" if c.title == "error" and value is None else c.texts[r]
            out.append(_cell(value, shown, cls=css))
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _figure_div(fig: Any, first: bool) -> str:
    return fig.to_html(
        full_html=False,
        include_plotlyjs=bool(first),
        config={"responsive": True, "displaylogo": False},
    )


def _json_block(data: StudyData) -> str:
    payload = json.dumps(_sanitize(data.to_json()), allow_nan=False, default=str, sort_keys=True,
                         separators=(",", ":"), ensure_ascii=True)
    # "</" would end the script element early; "<\/" is the same JSON string.
    payload = payload.replace("</", "<\\/")
    return f'<script type="application/json" id="{DATA_BLOCK_ID}">{payload}</script>'


def _sanitize(obj: Any) -> Any:
    """JSON has no inf / NaN: write them as strings so the block stays valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return obj


def render_page(data: StudyData, figures: dict[str, Any], pngs: dict[str, str]) -> str:
    """The full HTML document.

    Args:
        data: the collected study.
        figures: ``{"pareto": fig, "hypervolume": fig, "importance": fig or None}`` (plotly figures;
            absent when the study has no complete trial), plus ``"learning_curves"`` when some trial
            has rung records.
        pngs: ``{plot name: file name}`` of the PNG copies, linked from the page.
    """
    counts = data.state_counts
    n_complete = len(data.complete)
    metric_desc = ", ".join(f"<b>{_esc(m.label)}</b> ({m.direction})" for m in data.metrics)
    counts_desc = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "no trials"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>nas-distill report: {_esc(data.study_name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>nas-distill report: {_esc(data.study_name)}</h1>",
        f'<p class="summary">{len(data.trials)} trials ({_esc(counts_desc)}). Objectives: {metric_desc}.</p>',
    ]
    arch_lines = summary_lines(data.architecture_metrics)
    if arch_lines:
        parts.append('<p class="summary" id="architecture-metrics">'
                     + "<br>".join(_esc(line.strip()) for line in arch_lines) + "</p>")
    if n_complete == 0:
        parts.append(
            '<p class="empty" id="no-complete-trials">No complete trials yet: there is no Pareto front, '
            "hypervolume or parameter importance to show. The trials recorded so far are listed below "
            "(failed trials with their errors).</p>"
        )
    else:
        first = True
        pareto_list = ", ".join(f"#{n}" for n in data.pareto_numbers)
        parts.append("<h2>Pareto front</h2>")
        parts.append(f'<p>Pareto-optimal trials: <span id="pareto-trials">{_esc(pareto_list)}</span>.</p>')
        parts.append(_figure_div(figures["pareto"], first))
        first = False
        parts.append("<h2>Hypervolume over trials</h2>")
        parts.append(
            "<p>Hypervolume of the complete trials up to each trial number, with minimised metrics "
            "negated so that every metric is higher-is-better. Reference point: the worst observed "
            "value of each metric over all complete trials "
            f"(<span id=\"reference-point\">{_esc(_reference(data))}</span>); a trial that is worst in "
            "some metric adds no volume.</p>"
        )
        parts.append(_figure_div(figures["hypervolume"], first))
        parts.append("<h2>Parameter importance</h2>")
        if figures.get("importance") is not None:
            parts.append(_figure_div(figures["importance"], first))
        else:
            parts.append(f'<p class="note">{_esc(data.importance_note or "Not computed.")}</p>')
    if figures.get("learning_curves") is not None:
        parts.append("<h2>Learning curves</h2>")
        parts.append(f'<p id="learning-curves-note">{_esc(CURVES_NOTE.capitalize())}.</p>')
        parts.append(_figure_div(figures["learning_curves"], n_complete == 0))
    if pngs:
        links = " ".join(f'<a href="{_esc(f)}">{_esc(f)}</a>' for f in pngs.values())
        parts.append(f"<p>PNG copies: {links}</p>")
    parts.append("<h2>Trials</h2><p>Click a column header to sort. Pareto trials are highlighted.</p>")
    parts.append(_table(data))
    parts.append(_json_block(data))
    parts.append(f"<script>{_SORT_JS}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _reference(data: StudyData) -> str:
    from nas_distill.reporting.figures import reference_text

    return reference_text(data)
