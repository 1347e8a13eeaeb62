"""The paper's published accuracies (its Tables 2 and 3), which `medminds report` puts beside ours.

One file holds them: `results/paper.csv` at the top of the repository, shipped inside the package as
`medminds_hpc/paper.csv` (a link to it, which a wheel stores as the file itself), so an installed `medminds`
reads the same numbers. Columns: table, experiment (ours, or empty for a result no experiment reproduces),
method (the paper's name), accuracy (percent, empty when the paper gives none), note.

    python -c "from medminds_hpc import paper; print(paper.load())"
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medminds_hpc.errors import UserError

COLUMNS = ("table", "experiment", "method", "accuracy", "note")


@dataclass(frozen=True)
class PaperResult:
    table: str
    experiment: str  # "" when no experiment of ours reproduces it
    method: str
    accuracy: float | None  # a fraction 0-1, like ours; None when the paper gives no number
    note: str


def source() -> Path | None:
    """Where the numbers are read from: the package's copy (a real path for a source checkout or a wheel)."""
    path = resources.files("medminds_hpc").joinpath("paper.csv")
    return Path(str(path)) if path.is_file() else None


def load(path: Path | str | None = None) -> list[PaperResult]:
    """The paper's results, in file order; a malformed file names its row and field."""
    where = Path(path) if path is not None else source()
    if where is None:
        raise UserError("medminds_hpc/paper.csv is missing from the installed package; reinstall medminds-hpc")
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{where}: cannot read the paper's numbers ({e.strerror}); restore it with `git checkout results/paper.csv`") from None
    return parse(text, str(where))


def parse(text: str, where: str) -> list[PaperResult]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise UserError(f"{where}: header is {','.join(reader.fieldnames or [])!r}, expected {','.join(COLUMNS)!r}")
    out = []
    for row_number, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise UserError(f"{where}, row {row_number}: expected {len(COLUMNS)} fields ({', '.join(COLUMNS)})")
        if not row["table"].strip() or not row["method"].strip():
            raise UserError(f"{where}, row {row_number}: 'table' and 'method' must not be empty")
        out.append(PaperResult(row["table"].strip(), row["experiment"].strip(), row["method"].strip(),
                               _percent(row["accuracy"], where, row_number), row["note"].strip()))
    experiments = [r.experiment for r in out if r.experiment]
    twice = sorted({e for e in experiments if experiments.count(e) > 1})
    if twice:
        raise UserError(f"{where}: experiment {twice[0]!r} appears in more than one row; keep one number per experiment")
    return out


def _percent(text: str, where: str, row_number: int) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 100.0:
        raise UserError(f"{where}, row {row_number}, field 'accuracy': {text!r} is not a percentage 0-100 (or empty)")
    return round(value / 100.0, 10)  # 26.03 -> 0.2603, not 0.26030000000000003


def by_experiment(results: list[PaperResult]) -> dict[str, PaperResult]:
    return {r.experiment: r for r in results if r.experiment}
