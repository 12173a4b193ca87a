"""The one trial table: its columns (shared by the CLI's text and the HTML report) and its text form.

Columns, in order: ``#``, then what the view asks for (``state``, ``pareto``), **one column per
architecture key**, one per metric, ``params`` (the parameter count; left out when ``params`` is itself
an objective, so it never shows twice, and when no trial has one), then the view's trailing extras
(``time_s``, ``worker``, ``error``, ``rungs``). Every architecture key gets its column whether or not its values
differ, so no difference is ever hidden inside a clipped ``key=value`` string.

The ``rungs`` column (:func:`rung_text`) shows a trial's partial evaluations as ``value@step`` per
expensive metric, e.g. ``accuracy 0.41@22 0.55@67``, and ends with ``stopped at 67/200`` on a trial
the pruner stopped.

Numbers are plain (:func:`plain_number`): integers in full, other values to 4 significant digits, never
``1.2e-03`` nor ``12.3k``.

Text form (:func:`render_text`), for ``status``, ``pareto`` and the results text file:

1. Full headers when the table fits ``width`` (the terminal's width, ``$COLUMNS``, else 100).
2. Otherwise architecture keys get short unique headers (initials of their words: ``hidden_size`` ->
   ``hs``), with a legend line under the table.
3. Still too wide: the columns wrap into blocks stacked one under the other, each repeating ``#``, so
   every column stays whole. A single cell wider than ``width`` is the only thing ever cut (``...``).
"""

from __future__ import annotations

import math
import numbers
import shutil
import textwrap
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from nas_distill.records import MetricInfo, TrialRecord

__all__ = ["Column", "key_abbreviations", "plain_number", "render_text", "rung_text", "table_columns",
           "terminal_width", "trials_table"]

_SEP = "  "
_ELLIPSIS = "..."
DEFAULT_WIDTH = 100
#: The columns a view may add: before the architecture keys, and after the metrics.
LEADING = ("state", "pareto")
TRAILING = ("time_s", "worker", "error", "rungs")


@dataclass
class Column:
    """One column: ``title`` (full header), ``short`` (header when abbreviated), cell ``values`` (raw) and
    ``texts`` (what is shown), ``numeric`` (right-aligned, sorts as numbers), ``key`` (an arch key)."""

    title: str
    values: list[Any]
    texts: list[str]
    numeric: bool
    short: str | None = None
    key: bool = False


def plain_number(value: Any) -> str:
    """A table cell: integers in full, floats to 4 significant digits in positional notation, ``-`` for
    nothing; anything else as its ``str``."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return " ".join(str(value).split())  # one line per cell
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    decimals = max(0, 3 - math.floor(math.log10(abs(value))))
    text = f"{round(value, decimals):.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def rung_text(row: TrialRecord) -> str | None:
    """A trial's rung records in one cell (see the module docstring); None without any."""
    parts = []
    for name in dict.fromkeys(name for rung in row.rungs for name in rung.values):
        points = " ".join(f"{plain_number(r.values[name])}@{r.step}" for r in row.rungs if name in r.values)
        parts.append(f"{name} {points}")
    text = "; ".join(parts)
    if row.stopped_early:
        text += f" stopped at {row.early_stop.step}/{row.early_stop.of}"
    return text.strip() or None


def key_abbreviations(keys: Sequence[str]) -> dict[str, str]:
    """Short, unique headers: the initials of each key's ``_`` / ``-`` separated words (one-word keys:
    their first 4 letters); a clash takes more letters of the last word, then a number."""
    def candidates(key: str):
        words = [w for w in key.replace("-", "_").split("_") if w] or [key]
        if len(words) == 1:
            yield from (key[:n] for n in range(4, len(key) + 1))
        else:
            head = "".join(w[0] for w in words[:-1])
            yield from (head + words[-1][:n] for n in range(1, len(words[-1]) + 1))
        yield key

    out: dict[str, str] = {}
    for key in keys:
        for short in candidates(key):
            if short not in out.values() and short not in keys or short == key:
                break
        n = 2
        while short in out.values():
            short, n = f"{short}{n}", n + 1
        out[key] = short
    return out


def table_columns(rows: Sequence[TrialRecord], metrics: Sequence[MetricInfo], keys: Sequence[str],
                  *, leading: Iterable[str] = (), trailing: Iterable[str] = ()) -> list[Column]:
    """The table's columns for ``rows`` (see the module docstring for the order)."""
    def column(title: str, values: list[Any], numeric: bool = True, **kw: Any) -> Column:
        return Column(title, values, [plain_number(v) for v in values], numeric, **kw)

    cols = [column("#", [r.number for r in rows])]
    extra_leading = {"state": lambda: column("state", [r.state for r in rows], numeric=False),
                     "pareto": lambda: Column("pareto", [r.pareto for r in rows],
                                              ["*" if r.pareto else "" for r in rows], False)}
    cols += [extra_leading[name]() for name in leading]
    shorts = key_abbreviations(list(keys))
    for key in keys:
        values = [r.arch.get(key) for r in rows]
        numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values if v is not None)
        cols.append(column(key, values, numeric, short=shorts[key], key=True))
    for i, m in enumerate(metrics):
        arrow = "↑" if m.direction == "maximize" else "↓"
        cols.append(column(f"{m.name} {arrow}", [r.values[i] if r.values else None for r in rows]))
    if "params" not in {m.name for m in metrics} and any(r.n_params is not None for r in rows):
        cols.append(column("params", [r.n_params for r in rows]))
    extra_trailing = {
        "time_s": lambda: column("time_s", [None if r.duration_s is None else round(r.duration_s, 1)
                                            for r in rows]),
        "worker": lambda: column("worker", [r.worker for r in rows], numeric=False),
        "error": lambda: column("error", [r.error for r in rows], numeric=False),
        "rungs": lambda: column("rungs", [rung_text(r) for r in rows], numeric=False),
    }
    cols += [extra_trailing[name]() for name in trailing]
    return cols


def terminal_width() -> int:
    """The terminal's width (``$COLUMNS`` first), else :data:`DEFAULT_WIDTH` off a terminal."""
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


def _cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[:width] if width <= len(_ELLIPSIS) else text[: width - len(_ELLIPSIS)] + _ELLIPSIS


def render_text(columns: Sequence[Column], width: int | None = None) -> str:
    """The columns as a fixed-width text table no wider than ``width`` (see the module docstring)."""
    width = width or terminal_width()
    if not columns:
        return ""
    nrows = len(columns[0].texts)

    def header(c: Column, short: bool) -> str:
        return c.short if short and c.short else c.title

    def natural(c: Column, short: bool) -> int:
        return max([len(header(c, short))] + [len(t) for t in c.texts])

    # A column never gets wider than what is left beside the repeated "#" column.
    room = max(len(_ELLIPSIS) + 1, width - natural(columns[0], False) - len(_SEP))

    def col_width(c: Column, short: bool) -> int:
        return natural(c, short) if c is columns[0] else min(room, natural(c, short))

    def total(cols: Sequence[Column], short: bool) -> int:
        return sum(col_width(c, short) for c in cols) + len(_SEP) * (len(cols) - 1)

    short = total(columns, False) > width
    first, rest = columns[0], list(columns[1:])
    blocks: list[list[Column]] = []
    while rest:  # greedy: as many whole columns per block as fit next to the repeated "#"
        block = [first, rest.pop(0)]
        while rest and total(block + [rest[0]], short) <= width:
            block.append(rest.pop(0))
        blocks.append(block)
    if not blocks:
        blocks = [[first]]

    lines: list[str] = []
    for b, block in enumerate(blocks):
        widths = [col_width(c, short) for c in block]

        def line(cells: list[str], block=block, widths=widths) -> str:
            parts = [(_cut(t, w).rjust(w) if c.numeric else _cut(t, w).ljust(w))
                     for c, t, w in zip(block, cells, widths)]
            return _SEP.join(parts)[:width].rstrip()

        if b:
            lines.append("")
        lines.append(line([header(c, short) for c in block]))
        lines.append(_SEP.join("-" * w for w in widths)[:width])
        lines += [line([c.texts[r] for c in block]) for r in range(nrows)]
    legend = [f"{c.short}={c.title}" for c in columns if short and c.key and c.short and c.short != c.title]
    if legend:
        lines += textwrap.wrap("keys: " + ", ".join(legend), width=width, break_long_words=True)
    return "\n".join(lines)


def trials_table(rows: Sequence[TrialRecord], metrics: Sequence[MetricInfo], keys: Sequence[str] | None = None,
                 *, leading: Iterable[str] = (), trailing: Iterable[str] = (), width: int | None = None) -> str:
    """:func:`render_text` of :func:`table_columns`; ``keys`` default to every arch key of ``rows``."""
    if keys is None:
        keys = list(dict.fromkeys(k for r in rows for k in r.arch))
    return render_text(table_columns(rows, metrics, keys, leading=leading, trailing=trailing), width)
