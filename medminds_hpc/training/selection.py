"""How a trainable stage chooses its best epoch without peeking at the set it is scored on.

selection="dev" (the default): a seeded development split, stratified by answer letter, is carved from the stage's
training rows and never trained on; every epoch is judged on it, and the MedMCQA validation set is scored once, at
the end, with the weights kept. selection="validation": every epoch is judged on the validation set itself, the
paper's protocol, whose best epoch is an optimistic estimate (`medminds report` marks such rows).

    medminds submit baseline-classifier-task --dataset mini -o keep=best                 # best epoch on dev
    medminds submit baseline-classifier-task --dataset mini -o selection=validation      # as the paper
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

from medminds_hpc.training.options import TrainOptions

DEV_SHARE = 0.1  # of the training rows, when dev_rows is 0
DEV_MAX_ROWS = 2_000  # enough to rank epochs (a 95% interval of about +-2 points); more only costs evaluation time

T = TypeVar("T")


@dataclass(frozen=True)
class Split:
    """Which of a stage's training rows it trains on and which judge its epochs (indices into those rows)."""

    selection: str
    train: list[int]
    dev: list[int]

    @property
    def on_dev(self) -> bool:
        return self.selection == "dev"

    def judged(self, train_rows: Sequence[T], validation_rows: Sequence[T]) -> list[T]:
        """The rows each epoch is judged on: the dev rows of `train_rows`, or `validation_rows`."""
        return pick(train_rows, self.dev) if self.on_dev else list(validation_rows)

    def record(self) -> dict[str, Any]:
        """What metrics.json says about the selection (the report marks selection="validation")."""
        return {"selection": self.selection, "dev_rows": len(self.dev)}


def dev_size(total: int, asked: int) -> int:
    """Rows to hold out of `total`: `asked`, or DEV_SHARE of them up to DEV_MAX_ROWS; always leaves one to train on."""
    if total < 2:
        return 0
    wanted = asked if asked > 0 else min(DEV_MAX_ROWS, max(1, round(total * DEV_SHARE)))
    return min(wanted, total - 1)


def planned_rows(options: TrainOptions, total: int) -> int:
    """How many of `total` training rows `split` leaves to train on (what submit checks before the job runs)."""
    held = dev_size(total, options.dev_rows) if options.selection == "dev" else 0
    return min(total - held, options.max_train_rows) if options.max_train_rows else total - held


def planned_training(options: TrainOptions, rows: Mapping[str, int]) -> tuple[str, int]:
    """The MedMCQA-trained stages (classifier, ensembles, mixtures): their prepared file and rows trained on."""
    return "medmcqa_train", planned_rows(options, rows.get("medmcqa_train", 0))


def split(options: TrainOptions, answers: Sequence[Any], max_train_rows: int = 0) -> Split:
    """The dev split of training rows whose answers are `answers`, seeded by the run's seed (selection="dev"), then
    at most `max_train_rows` (0: all) of the rest, in their order, to train on. selection="validation": no dev rows."""
    from medminds_hpc.data.splits import carve_dev

    if options.selection == "dev":
        train, dev = carve_dev([str(a) for a in answers], dev_size(len(answers), options.dev_rows), options.seed)
    else:
        train, dev = list(range(len(answers))), []
    return Split(options.selection, train[:max_train_rows] if max_train_rows else train, dev)


def pick(rows: Sequence[T], indices: Sequence[int]) -> list[T]:
    return [rows[i] for i in indices]
