"""Fixed-width text tables that fit a terminal (the CLI's ``status`` and ``pareto`` commands).

Why not a library: the only hard requirement is "no line longer than ``max_width``", with architecture
dicts shortened sensibly rather than cut at a random character. The rule:

1. Render every cell (dicts as ``key=value, ...``, floats with 4 significant digits, ``None`` as ``-``).
2. If the table is too wide, dict columns switch to their abbreviated form (``hs=256,nah=4``:
   initials of the ``_``-separated key words).
3. Still too wide: shrink, one character at a time and the column with most slack first, free-text
   columns (errors) to 12 characters, numeric columns' headers to the width of their numbers, and
   dict columns to 24 characters; then any column down to 3. A cell longer than its column is cut
   and ends in ``...``.
4. If even that does not fit (very many columns), each line is cut at ``max_width``.

When keys were abbreviated, a wrapped legend line (``arch keys: hs=hidden_size, ...``) follows the table.

Numbers are right-aligned, everything else left-aligned; columns are separated by two spaces.
"""

from __future__ import annotations

import numbers
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from nas_distill.reporting.data import abbreviate_key, format_arch, format_value

__all__ = ["format_table"]

_SEP = "  "
_ELLIPSIS = "..."
_MIN_WIDTH = 3
_TEXT_WIDTH = 12
_DICT_WIDTH = 24


def _render(value: Any, *, abbreviate: bool) -> str:
    if isinstance(value, dict):
        return format_arch(value, abbreviate=abbreviate, sep="," if abbreviate else ", ")
    text = format_value(value)
    return " ".join(text.split())  # no newlines / tabs inside a cell


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    if width <= len(_ELLIPSIS):
        return text[:width]
    return text[: width - len(_ELLIPSIS)] + _ELLIPSIS


def format_table(
    rows: Iterable[Sequence[Any]], headers: Sequence[str], max_width: int = 100
) -> str:
    """Format ``rows`` under ``headers`` as a text table whose lines are at most ``max_width`` chars.

    Args:
        rows: one sequence of cell values per row (numbers, strings, ``None``, arch dicts). Short rows
            are padded with empty cells.
        headers: column titles.
        max_width: the longest allowed line (the CLI uses 100).

    Returns:
        The table as one string: header line, a dashed rule, then one line per row (no trailing
        newline).
    """
    if max_width < 1:
        raise ValueError(f"max_width: expected a positive int, got {max_width!r}")
    headers = [str(h) for h in headers]
    raw_rows = [list(r) + [""] * (len(headers) - len(r)) for r in rows]
    ncols = len(headers)
    if ncols == 0:
        return ""
    is_dict_col = [any(isinstance(r[c], dict) for r in raw_rows) for c in range(ncols)]
    is_num_col = [
        bool(raw_rows) and all(_is_number(r[c]) or r[c] is None for r in raw_rows)
        for c in range(ncols)
    ]
    abbreviated = [False] * ncols

    def cells(col: int) -> list[str]:
        return [_render(r[col], abbreviate=abbreviated[col]) for r in raw_rows]

    columns = [cells(c) for c in range(ncols)]
    widths = [max([len(headers[c])] + [len(x) for x in columns[c]]) for c in range(ncols)]

    def total() -> int:
        return sum(widths) + len(_SEP) * (ncols - 1)

    if total() > max_width:  # 1. arch dicts switch to their abbreviated form
        for c in range(ncols):
            if is_dict_col[c]:
                abbreviated[c] = True
                columns[c] = cells(c)
                widths[c] = max([len(headers[c])] + [len(x) for x in columns[c]])
    # 3. Shrink in stages, one character at a time, the column with most slack first: free text
    #    (errors) down to _TEXT_WIDTH, then numeric headers down to their numbers, then arch dicts down
    #    to _DICT_WIDTH, then anything down to _MIN_WIDTH.
    natural = [max([len(x) for x in columns[c]] or [0]) for c in range(ncols)]
    kinds = ["num" if is_num_col[c] else "dict" if is_dict_col[c] else "text" for c in range(ncols)]
    stages = [
        ("text", lambda c: min(widths[c], _TEXT_WIDTH)),
        ("num", lambda c: max(natural[c], _MIN_WIDTH)),
        ("dict", lambda c: min(widths[c], _DICT_WIDTH)),
        (None, lambda c: _MIN_WIDTH),
    ]
    for kind, floor_of in stages:
        floor = [floor_of(c) if kind in (None, kinds[c]) else widths[c] for c in range(ncols)]
        while total() > max_width:
            candidates = [c for c in range(ncols) if widths[c] > floor[c]]
            if not candidates:
                break
            widest = max(candidates, key=lambda c: (widths[c] - floor[c], widths[c]))
            widths[widest] -= 1

    def line(values: list[str], numeric: list[bool]) -> str:
        parts = []
        for c, text in enumerate(values):
            text = _cut(text, widths[c])
            parts.append(text.rjust(widths[c]) if numeric[c] else text.ljust(widths[c]))
        return _SEP.join(parts)[:max_width].rstrip()

    lines = [line(headers, is_num_col), _SEP.join("-" * w for w in widths)[:max_width].rstrip()]
    for r in range(len(raw_rows)):
        lines.append(line([columns[c][r] for c in range(ncols)], is_num_col))
    keys = sorted({str(k) for c in range(ncols) if abbreviated[c] for r in raw_rows
                   if isinstance(r[c], dict) for k in r[c]})
    if keys:  # a legend of the abbreviations, wrapped to the same width
        legend = ", ".join(f"{abbreviate_key(k)}={k}" for k in keys if abbreviate_key(k) != k)
        if legend:
            lines += textwrap.wrap("arch keys: " + legend, width=max_width, break_long_words=True)
    return "\n".join(lines)
