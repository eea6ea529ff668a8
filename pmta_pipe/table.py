"""Aligned plain-text tables for a terminal: no dependency, no colours.

``format_table`` takes the column names, rows of already formatted cells and which
columns are numeric (right-aligned); every other column is left-aligned. Columns are
separated by two spaces and the header is underlined with dashes, like ``psql``'s
aligned output without the borders.
"""

from __future__ import annotations

from collections.abc import Sequence


def format_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]
) -> str:
    """The table as text, one line per row plus two header lines, ending with a newline."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in rows)
    return "\n".join(out) + "\n"
