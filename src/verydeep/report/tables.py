"""Markdown tables, the one format reports and the CLI print for people."""

from __future__ import annotations

from typing import Any, Sequence


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
) -> str:
    """A GitHub-style markdown table; ``align`` is one of ``l``/``r`` per column (default: text left, numbers right)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    if align is None:
        align = "".join("l" if i == 0 else "r" for i in range(len(header)))

    def fmt(row):
        return (
            "| "
            + " | ".join(
                c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)
            )
            + " |"
        )

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1))
            for w, a in zip(widths, align)
        )
        + "|"
    )
    return "\n".join([fmt(cells[0]), rule] + [fmt(r) for r in cells[1:]])
