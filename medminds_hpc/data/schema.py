"""The two canonical schemas every later stage reads, whatever the data came from.

MCQ (MedMCQA and ARC):  id, question, options (4 strings), answer (0-3, or -1 unlabelled), subject, topic, choice_type
instruct (SFT):         id, instruction, input, output, source

MedMCQA's `exp` is deliberately absent: ~26% of explanations start with "Ans..." and would leak the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import datasets

Kind = Literal["mcq", "instruct"]

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
NUM_OPTIONS = 4
UNLABELLED = -1

MCQ_COLUMNS: tuple[str, ...] = ("id", "question", "options", "answer", "subject", "topic", "choice_type")
INSTRUCT_COLUMNS: tuple[str, ...] = ("id", "instruction", "input", "output", "source")
CHOICE_TYPES: tuple[str, ...] = ("single", "multi")


def columns(kind: Kind) -> tuple[str, ...]:
    return MCQ_COLUMNS if kind == "mcq" else INSTRUCT_COLUMNS


def features(kind: Kind) -> "datasets.Features":
    """The `datasets.Features` of a canonical table (imported lazily: `datasets` is heavy)."""
    from datasets import Features, List, Value

    if kind == "mcq":
        return Features(
            {
                "id": Value("string"),
                "question": Value("string"),
                "options": List(Value("string")),
                "answer": Value("int64"),
                "subject": Value("string"),
                "topic": Value("string"),
                "choice_type": Value("string"),
            }
        )
    return Features({c: Value("string") for c in INSTRUCT_COLUMNS})


def empty_columns(kind: Kind) -> dict[str, list[Any]]:
    return {c: [] for c in columns(kind)}


def to_dataset(cols: dict[str, list[Any]], kind: Kind) -> "datasets.Dataset":
    """Column lists -> a `datasets.Dataset` with the canonical features (fails loudly on a wrong column set)."""
    from datasets import Dataset

    expected = columns(kind)
    if tuple(cols) != expected:
        raise ValueError(f"canonical {kind} columns must be {expected}, got {tuple(cols)}")
    return Dataset.from_dict(cols, features=features(kind))


def rows_to_columns(rows: list[dict[str, Any]], kind: Kind) -> dict[str, list[Any]]:
    cols = empty_columns(kind)
    for row in rows:
        for c in cols:
            cols[c].append(row[c])
    return cols


class Loaded:
    """What a loader returns: canonical datasets by split, plus a report for the data card.

    `report` holds: source, inputs (paths or Hub ids), conventions (MedMCQA `cop` convention seen per input),
    read / kept rows per split, dropped counts by reason, and notes (things a user should know).
    """

    def __init__(self, splits: dict[str, "datasets.Dataset"], report: dict[str, Any]) -> None:
        self.splits = splits
        self.report = report

    def __getitem__(self, split: str) -> "datasets.Dataset":
        if split not in self.splits:
            raise KeyError(f"no {split!r} split; this source has {sorted(self.splits)}")
        return self.splits[split]

    def __repr__(self) -> str:
        return f"Loaded({ {k: len(v) for k, v in self.splits.items()} })"
