"""What `submit` refuses about a planned run beyond its parameters' own domains, before anything is written:
a model that cannot be loaded, and a training stage whose training split is empty, smaller than one batch, or
too short for its warm-up. Each problem is one line naming the experiment and the option or file to change.

Training data is judged where it is known: from the card of a finished `prepare` run (its rows per file), or,
before that run, from a local source's file names (a MedMCQA source with a validation file only has no training rows).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from medminds_hpc import paths
from medminds_hpc.errors import UserError

if TYPE_CHECKING:
    from medminds_hpc.submit import PlannedRun


def problems(planned: list["PlannedRun"], models: Iterable[str]) -> list[str]:
    """Every problem of the models the command names and of every planned run that will run (finished and active
    runs are left as they are)."""
    out = [line for model in dict.fromkeys(models) for line in model_problems(model)]
    prepared = _prepared_rows(planned)
    for p in planned:
        if p.action not in ("new", "fresh", "resume"):
            continue
        rows = prepared.get(p.needs.get("prepare", ""))
        if rows is not None:
            out += [f"experiment {p.name}: {line}" for line in training_problems(p, rows)]
    return out


def model_notes(planned: list["PlannedRun"]) -> list[str]:
    """What submit says about models it cannot check here (Hub ids, fetched by the job on the compute node)."""
    from medminds_hpc.modeling.loading import is_hub_id

    models = dict.fromkeys(p.resolved.model for p in planned if p.resolved.model and p.action in ("new", "fresh", "resume"))
    return [f"--model {m}: a Hugging Face Hub id, not checked here; the job fetches it on the compute node"
            for m in models if is_hub_id(m)]


def model_problems(model: str) -> list[str]:
    from medminds_hpc.modeling.loading import resolve_model  # imports no ML library itself
    from medminds_hpc.modeling.tokenizer import is_tokenizer_dir

    try:
        spec = resolve_model(model)
    except UserError as e:
        return [f"--model {model}: {line}" for line in e.problems]
    if spec.kind == "local" and not is_tokenizer_dir(spec.path):
        return [f"--model {model}: {spec.path} holds a model but no tokenizer (tokenizer.json or tokenizer.model): "
                "save the tokenizer beside it (tokenizer.save_pretrained(DIR))"]
    return []


def _prepared_rows(planned: list["PlannedRun"]) -> dict[str, dict[str, int]]:
    """Rows per prepared file, as far as known, for each prepare run of the plan."""
    from medminds_hpc.data.prepare import medmcqa_splits, prepared_rows  # card and file names only: no data read

    out: dict[str, dict[str, int]] = {}
    for p in planned:
        if p.resolved.experiment.stage != "prepare":
            continue
        if p.action == "done":
            rows = prepared_rows(paths.prepared_dir(p.run_id))
            if rows is not None:  # else the stage itself will say what is wrong with its data
                out[p.run_id] = rows
        elif p.resolved.config.source not in ("hub", "synthetic"):
            try:
                if "train" not in medmcqa_splits(p.resolved.config.source):
                    out[p.run_id] = {"medmcqa_train": 0}
            except UserError:
                continue  # the prepare run's own check says what is wrong with its source
    return out


def training_problems(p: "PlannedRun", rows: Mapping[str, int]) -> list[str]:
    """An empty training split, one smaller than a batch, or fewer optimizer steps than warm-up steps."""
    plan = p.resolved.experiment.stage_info.planned_training(p.resolved.config, rows)
    if plan is None:
        return []
    split, n = plan
    if split not in rows:
        return []  # not known before the data is prepared
    from medminds_hpc.data.prepare import training_hint

    cfg: Any = p.resolved.config
    folder = paths.prepared_dir(p.needs["prepare"])
    data = folder / f"{split}.parquet"
    if rows[split] == 0:
        how = training_hint(folder) if split == "medmcqa_train" else "add its data to the prepare source and submit again"
        return [f"trains on {split}, but its prepare source gives no rows of it: {how} (scoring stages, such as "
                "baseline-nextword and the merges, need none)"]
    if n < cfg.batch_size:
        return [f"batch_size={cfg.batch_size}: the training split has {n} rows after held-out rows and max_train_rows "
                f"({data}), less than one batch; lower batch_size or train on more rows"]
    steps = math.ceil(n / cfg.batch_size) * cfg.epochs
    steps = min(int(steps), cfg.max_steps) if cfg.max_steps else int(steps)
    if cfg.warmup_steps > steps:
        return [f"warmup_steps={cfg.warmup_steps}: more than the {steps} optimizer steps planned ({n} rows, batch_size "
                f"{cfg.batch_size}, epochs {cfg.epochs:g}{f', max_steps {cfg.max_steps}' if cfg.max_steps else ''}); "
                "the learning rate would never reach its peak: lower warmup_steps"]
    return []
