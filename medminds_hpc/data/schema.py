"""The two canonical schemas every later stage reads, whatever the data came from.

MCQ (MedMCQA and ARC):  id, question, options (4 strings), answer (0-3, or -1 unlabelled), subject, topic, choice_type
instruct (SFT):         id, instruction, input, output, source

MedMCQA's `exp` is deliberately absent: ~26% of explanations start with "Ans..." and would leak the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    from datasets import Features, Value

    try:
        from datasets import List  # datasets >= 4
    except ImportError:  # datasets 3 (unsloth's pins): Sequence of a plain feature is a list
        from datasets import Sequence as List

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
    """Column lists -> a `datasets.Dataset` with the canonical features (fails loudly on a wrong column set).

    Built through one pyarrow table: `Dataset.from_dict(features=...)` encodes row by row, ~15x slower at 200k rows.
    """
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo
    from datasets.table import InMemoryTable

    expected = columns(kind)
    if tuple(cols) != expected:
        raise ValueError(f"canonical {kind} columns must be {expected}, got {tuple(cols)}")
    feats = features(kind)
    return Dataset(InMemoryTable(pa.table(cols, schema=feats.arrow_schema)), info=DatasetInfo(features=feats))


def column(ds: "datasets.Dataset", name: str) -> list[Any]:
    """One column as a Python list, fast (datasets 5's `ds[name]` is a lazy column that decodes row by row)."""
    return ds.with_format("arrow")[name].to_pylist()


@dataclass
class Loaded:
    """What a loader returns: canonical datasets by split, plus a report for the data card.

    `report` holds: source, inputs (paths or Hub ids), conventions (MedMCQA `cop` convention seen per input),
    read / kept rows per split, dropped counts by reason, and notes (things a user should know).
    """

    splits: dict[str, "datasets.Dataset"]
    report: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> "datasets.Dataset":
        if split not in self.splits:
            raise KeyError(f"no {split!r} split; this source has {sorted(self.splits)}")
        return self.splits[split]

    def __repr__(self) -> str:
        return f"Loaded({ {k: len(v) for k, v in self.splits.items()} })"
