"""What a report reads: the finished runs with valid metrics (and, for the others, why they are left out), and
which questions each run got right (predictions.parquet), for the paired tests.

Reads run directories and never writes into them; never imports pandas (a second on a login node).

    python -c "from medminds_hpc import finished; print(len(finished.collect()[0]))"   # finished runs here
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medminds_hpc import fileio, results, runs
from medminds_hpc.errors import UserError

PREDICTIONS = "predictions.parquet"
# stages whose runs evaluate nothing: listed as skipped with what they write instead
NOT_EVALUATIONS = {"prepare": "card.json", "doctor": "doctor.json", "features": "the feature cache"}


# reading runs -------------------------------------------------------------------------------------------------
@dataclass
class Finished:
    """A finished run with valid metrics: what every table is made of."""

    run: runs.Run
    metrics: dict[str, Any]

    @property
    def id(self) -> str:
        return self.run.id

    @property
    def identity(self) -> dict[str, Any]:
        return self.metrics["run"]

    @property
    def recency(self) -> tuple[str, str]:
        d = self.run.data
        return (str(d.get("finished_at") or d.get("updated_at") or d.get("created_at") or ""), self.id)


@dataclass(frozen=True)
class Skipped:
    run: str
    reason: str


def collect() -> tuple[list[Finished], list[Skipped]]:
    """Every run directory under $MEDMINDS_HOME/runs: the finished runs with valid metrics, and the others with why."""
    finished, skipped = [], []
    for run_dir in runs.iter_run_dirs():
        try:
            run = runs.load(run_dir)
        except UserError as e:
            skipped.append(Skipped(run_dir.name, str(e)))
            continue
        outcome = _finished(run)
        (finished if isinstance(outcome, Finished) else skipped).append(outcome)
    return finished, skipped


def _finished(run: runs.Run) -> Finished | Skipped:
    d = run.data
    state = run.state
    if state != runs.COMPLETED:
        if state == runs.FAILED:
            error = str(d.get("error") or "no error recorded").strip().splitlines()[0][:200]
            return Skipped(run.id, f"failed ({error}); see `medminds logs {run.id}`")
        if state == runs.CANCELLED:
            return Skipped(run.id, "cancelled; submit it again to resume it")
        return Skipped(run.id, f"not finished (run.json says {state})")
    path = run.dir / results.FILE
    if not path.exists():
        stage = str(d.get("stage", ""))
        if stage in NOT_EVALUATIONS:
            return Skipped(run.id, f"not an evaluation (stage {stage} writes {NOT_EVALUATIONS[stage]}, not metrics.json)")
        return Skipped(run.id, "finished without metrics.json; submit it again with --force to evaluate it")
    try:
        record = fileio.read_json(path)
    except json.JSONDecodeError as e:
        return Skipped(run.id, f"metrics.json is not valid JSON (line {e.lineno}); submit it again with --force")
    except OSError as e:
        return Skipped(run.id, f"metrics.json cannot be read ({e.strerror}); check its permissions")
    wrong = results.problems(record)
    if wrong:
        return Skipped(run.id, f"metrics.json does not fit the schema ({'; '.join(wrong[:3])}); submit it again with --force")
    if record["run"]["run_id"] != run.id:
        return Skipped(run.id, f"metrics.json belongs to run {record['run']['run_id']} (copied from another run?); "
                               "submit it again with --force")
    if record["accuracy"] is None:
        return Skipped(run.id, "no labelled questions were evaluated (accuracy is empty)")
    return Finished(run, record)


# which questions each run got right (predictions.parquet) ------------------------------------------------------
@dataclass(frozen=True)
class Answers:
    """A run's labelled questions, sorted by id: `key` names the question set, `correct` is 1/0 per question."""

    key: str
    correct: Any  # numpy int8 array
    accuracy: float = 0.0  # correct's mean, computed once: every pair of rows asks for it


class AnswerReader:
    """Reads predictions.parquet into Answers. Sorting question ids costs more than reading the file, so each
    distinct id list (runs on the same split share one) is sorted once. Only pyarrow's buffers and lists are used:
    its numpy conversions and table operations import pandas (a second on a login node)."""

    def __init__(self) -> None:
        self._orders: dict[str, tuple[str, Any] | str] = {}

    def __call__(self, run_dir: Path) -> Answers | str:
        """Answers, or a sentence saying why there are none (missing, unreadable, repeated ids)."""
        path = run_dir / PREDICTIONS
        if not path.exists():
            return f"no {PREDICTIONS}"
        import hashlib

        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path).read(columns=["id", "gold", "predicted"], use_threads=False)
            gold, predicted = _integers(table.column("gold")), _integers(table.column("predicted"))
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a damaged or foreign file
            return f"{PREDICTIONS} cannot be read ({type(e).__name__}: {str(e)[:120]})"
        labelled = gold != -1
        ids = table.column("id").combine_chunks()
        raw = hashlib.sha256(f"{ids.type}|{ids.offset}|{len(ids)}|".encode() + labelled.tobytes())
        for buffer in ids.buffers()[1:]:
            raw.update(b"|" if buffer is None else memoryview(buffer))
        order = self._orders.get(raw.hexdigest())
        if order is None:
            order = self._orders[raw.hexdigest()] = _sorted_order(ids.to_pylist(), labelled)
        if isinstance(order, str):
            return order
        key, permutation = order
        correct = (predicted[labelled] == gold[labelled]).astype("int8")[permutation]
        return Answers(key, correct, float(correct.mean()))


def _integers(column: Any) -> Any:
    """An int64 column as a numpy array, straight from its buffer."""
    import numpy as np

    array = column.combine_chunks()
    if array.null_count:
        raise ValueError(f"{array.null_count} missing values")
    if str(array.type) != "int64":
        return np.asarray(array.to_pylist(), dtype=np.int64)
    return np.frombuffer(array.buffers()[1], dtype=np.int64, count=len(array), offset=array.offset * 8)


def _sorted_order(ids: list[Any], labelled: Any) -> tuple[str, Any] | str:
    """(a name for the set of labelled question ids, the permutation sorting them), or why there is none."""
    import hashlib

    import numpy as np

    kept = np.asarray([str(i) for i in ids])[labelled]
    permutation = np.argsort(kept, kind="stable")
    kept = kept[permutation]
    if len(kept) > 1 and (kept[1:] == kept[:-1]).any():
        return f"{PREDICTIONS} repeats question ids"
    return hashlib.sha256("\n".join(kept.tolist()).encode()).hexdigest(), permutation
