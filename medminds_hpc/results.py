"""metrics.json: a run's evaluation results, with the run's identity inside, checked against one schema.

Only evaluation results go there (a stage's own reports have their own files: `card.json` for prepare,
`doctor.json` for doctor). Each record names the run it came from, so `medminds report` reads a folder of them
with no join against run.json and no guessing:

    {"format": 1,
     "run": {"run_id", "experiment", "stage", "dataset", "model", "seed", "config_hash"},
     "accuracy", "accuracy_ci95", "n", "confusion_matrix", "per_subject", ...   # training/metrics.evaluate_predictions
     "train_seconds", "eval_seconds", ...                                       # and whatever the stage adds

Light on purpose (no numpy, no torch): `status` and `report` import it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medminds_hpc import fileio

if TYPE_CHECKING:
    from medminds_hpc.runs import Run

FILE = "metrics.json"
FORMAT = 1
NUMBER = (int, float)
IDENTITY: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "experiment": (str,), "stage": (str,), "dataset": (str,),
    "model": (str, type(None)), "seed": (int, type(None)), "config_hash": (str,),
}
REQUIRED: dict[str, tuple[type, ...]] = {
    "format": (int,), "run": (dict,),
    "accuracy": (*NUMBER, type(None)), "accuracy_ci95": (list, type(None)), "n": (int,),
    "confusion_matrix": (list,), "per_subject": (dict,), "train_seconds": NUMBER, "eval_seconds": NUMBER,
}


def identity(run: "Run") -> dict[str, Any]:
    """Who produced a result: the run's id, experiment, stage, dataset, model, seed and config hash."""
    d = run.data
    seed = (d.get("params") or {}).get("seed")
    return {"run_id": run.id, "experiment": d.get("experiment", ""), "stage": d.get("stage", ""),
            "dataset": d.get("dataset", ""), "model": d.get("model"), "seed": seed if isinstance(seed, int) else None,
            "config_hash": d.get("config_hash") or run.id.rsplit("-", 1)[-1]}


def problems(record: Any) -> list[str]:
    """What is wrong with a metrics record (empty when it fits the schema)."""
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    out = []
    for key, types in REQUIRED.items():
        if key not in record:
            out.append(f"missing {key!r}")
        elif not isinstance(record[key], types) or isinstance(record[key], bool):
            out.append(f"{key!r} is {type(record[key]).__name__}, expected {' or '.join(t.__name__ for t in types)}")
    if record.get("format") not in (None, FORMAT) and isinstance(record.get("format"), int):
        out.append(f"format {record['format']} is not {FORMAT}")
    run = record.get("run")
    if isinstance(run, dict):
        for key, types in IDENTITY.items():
            if key not in run:
                out.append(f"missing run.{key}")
            elif not isinstance(run[key], types) or isinstance(run[key], bool):
                out.append(f"run.{key} is {type(run[key]).__name__}, expected {' or '.join(t.__name__ for t in types)}")
    accuracy = record.get("accuracy")
    if isinstance(accuracy, NUMBER) and not (0.0 <= accuracy <= 1.0 and math.isfinite(accuracy)):
        out.append(f"accuracy {accuracy} is outside [0, 1]")
    return out


def write(run: "Run", evaluation: dict[str, Any], *, train_seconds: float, eval_seconds: float) -> Path:
    """Write `run`'s metrics.json atomically: `evaluation` (evaluate_predictions' dict plus the stage's extras),
    the timings `medminds report` turns into GPU-hours, and the run's identity. A record that does not fit the
    schema is a bug in the stage: it raises instead of writing."""
    record = {**_plain(evaluation), "format": FORMAT, "run": identity(run),
              "train_seconds": float(train_seconds), "eval_seconds": float(eval_seconds)}
    wrong = problems(record)
    if wrong:
        raise ValueError(f"metrics of run {run.id} do not fit the metrics.json schema: {'; '.join(wrong)}")
    path = run.dir / FILE
    fileio.atomic_write_json(path, record)
    return path


def read(run_dir: Path | str) -> dict[str, Any] | None:
    """A run's metrics.json, or None when it has none (yet) or it cannot be read."""
    path = Path(run_dir) / FILE
    try:
        return fileio.read_json(path) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return None


def _plain(obj: Any) -> Any:
    """numpy scalars and arrays -> Python numbers and lists, so json never writes a number as a string."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":
        return _plain(obj.tolist())
    return obj
