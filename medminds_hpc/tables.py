"""Plain-text tables for commands that may list thousands of rows.

rich renders a 1,000-row table in ~0.7 s on a login node, longer than the whole rest of `medminds status`;
aligned columns of plain text take milliseconds and still read well in a terminal, a pipe or a log.
"""

from __future__ import annotations

import textwrap
from typing import Sequence


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> str:
    """Columns left-aligned to their widest cell, a rule under the header; empty columns are kept."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    out = [title] if title else []
    out += [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def plain_duration(seconds: int) -> str:
    """Slurm's elapsed format: [D-]HH:MM:SS (a 48 h mega run must not wrap to 00:00:00)."""
    days, rest = divmod(int(seconds), 86400)
    hms = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{hms}" if days else hms


def _floors(headers: Sequence[str], cells: list[list[str]], whole: int) -> list[int]:
    """Each column's narrowest width: whole columns their longest line, the others their longest word."""
    def pieces(i: int, text: str) -> list[str]:
        return text.splitlines() if i < whole else text.split()

    return [max([len(h), *(len(p) for r in cells for p in pieces(i, r[i]))]) for i, h in enumerate(headers)]


def table_width(headers: Sequence[str], rows: Sequence[Sequence[str]], whole: int = 1) -> int:
    """The narrowest width `wrapped_table` lays these columns out in without breaking a word."""
    return sum(_floors(headers, [[str(c) for c in r] for r in rows], whole)) + 2 * (len(headers) - 1)


def wrapped_table(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, whole: int = 1) -> str:
    """Columns fitted to `width`: the first `whole` columns (names to type) never wrap; the others wrap at spaces,
    the widest first, down to their longest word. A newline in a cell starts a new line."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(line) for r in cells for line in r[i].splitlines())]) for i, h in enumerate(headers)]
    floor = _floors(headers, cells, whole)
    while sum(widths) + 2 * (len(headers) - 1) > width:
        shrinkable = [i for i in range(len(headers)) if widths[i] > floor[i]]
        if not shrinkable:
            break
        widths[max(shrinkable, key=lambda i: widths[i])] -= 1

    def wrap(text: str, w: int) -> list[str]:
        out = []
        for line in text.splitlines() or [""]:
            out += textwrap.wrap(line, w, break_long_words=False, break_on_hyphens=False) or [""]
        return out

    def block(values: Sequence[str]) -> list[str]:
        wrapped = [wrap(v, w) for v, w in zip(values, widths)]
        return ["  ".join((c[k] if k < len(c) else "").ljust(w) for c, w in zip(wrapped, widths)).rstrip()
                for k in range(max(len(c) for c in wrapped))]

    out = block(headers) + ["  ".join("-" * w for w in widths)]
    for r in cells:
        out += block(r)
    return "\n".join(out)
