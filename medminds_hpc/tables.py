"""Plain-text tables for commands that may list thousands of rows.

rich renders a 1,000-row table in ~0.7 s on a login node, longer than the whole rest of `medminds status`;
aligned columns of plain text take milliseconds and still read well in a terminal, a pipe or a log.
"""

from __future__ import annotations

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
