"""The feature cache of the two frozen experts on MedMCQA train and validation, for the ensembles to train from.

One extraction pass per expert replaces one pass per epoch per ensemble head: the three `ensemble-*` experiments
all need this run and read its cache (`artifacts/features/<split>/`, format in `modeling/features.py`) plus the
base's frozen LM head (`artifacts/features/lm_head.safetensors`), so none of them loads the 7B base again.

    medminds submit features --dataset mini                   # one job
    medminds submit features --dataset mega -o shards=8       # a job array: task i computes shards i, i+8, ...

The base is loaded once with both adapters attached by name. The cache is its own checkpoint: a preempted or
timed-out task keeps every finished shard and continues at the next one; shards already valid are never
recomputed, and a stale or damaged shard is (see `features.load`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, Sequence

from medminds_hpc import artifacts
from medminds_hpc.training.options import PROMPT_FITS, Relation, doc

if TYPE_CHECKING:
    from medminds_hpc.context import StageContext
    from medminds_hpc.modeling.features import CacheSpec
    from medminds_hpc.runs import Run

SPLITS: tuple[str, ...] = ("medmcqa_train", "medmcqa_validation")
HEADLINE = "questions_per_second"


@dataclass
class Config:
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc("prompt template the experts read"))
    max_length: int = field(default=512, metadata=doc("prompt tokens kept (left-truncated)", ge=2, le=131072))
    eval_batch_size: int = field(default=32, metadata=doc("questions per forward pass", ge=1))
    rows_per_shard: int = field(default=1000, metadata=doc("questions per cache file (the unit of resume and of a job array's work)", ge=1))

    RELATIONS: ClassVar[tuple[Relation, ...]] = (PROMPT_FITS,)


def cache_root(run: "Run") -> Path:
    return artifacts.path(run, artifacts.FEATURES)


def build(root: Path, expert_runs: Mapping[str, "Run"], rows: Mapping[str, Sequence[Mapping[str, Any]]], cfg: Config, *,
          shard: int = 0, num_shards: int = 1, on_step: Callable[[int, int], None] | None = None,
          device: str | None = None) -> tuple[dict[str, "CacheSpec"], int]:
    """Bring the caches of `rows` (split -> rows) under `root` up to date for task `shard` of `num_shards`; returns
    the specs and how many questions this call computed (0: the cache was already valid). The base is loaded
    only when something must be computed.

    `on_step(done, total)` runs after each shard is committed (steps counted over every split of this task)."""
    from medminds_hpc.modeling import features

    specs = {split: features.cache_spec(expert_runs, split_rows, split=split, template=cfg.prompt,
                                         max_length=cfg.max_length, rows_per_shard=cfg.rows_per_shard)
             for split, split_rows in rows.items()}
    experts = next(iter(specs.values())).experts
    owed = {split: sorted(set(features.missing_shards(root / split, spec)) & set(features.my_shards(spec, shard, num_shards)))
            for split, spec in specs.items()}
    mine = [i for split, spec in specs.items() for i in features.my_shards(spec, shard, num_shards)]
    head_missing = shard == 0 and features.load_lm_head(root, experts) is None
    if not any(owed.values()) and not head_missing:
        return specs, 0
    model, tokenizer = features.load_experts(expert_runs, device=device)
    if head_missing:
        features.save_lm_head(root, model, tokenizer, experts)
    done = len(mine) - sum(len(v) for v in owed.values())
    computed = 0
    for split, spec in specs.items():
        def shard_done(index: int, spec: "CacheSpec" = spec) -> None:
            nonlocal done, computed
            start, end = spec.shard_rows(index)
            done, computed = done + 1, computed + end - start
            if on_step is not None:
                on_step(done, len(mine))

        features.extract(root / split, spec, rows[split], model, tokenizer, batch_size=cfg.eval_batch_size,
                         shard=shard, num_shards=num_shards, on_shard=shard_done)
    return specs, computed


def expert_runs_of(ctx: "StageContext") -> dict[str, "Run"]:
    """The two finished expert runs this run needs, each checked to be an adapter of this run's base."""
    from medminds_hpc.modeling.features import EXPERTS
    from medminds_hpc.stages.baseline import expert_adapter, model_name

    model_name(ctx)  # a run without --model stops here, before anything loads
    for name in EXPERTS:
        expert_adapter(ctx, name)
    return {name: ctx.need(f"expert-{name}") for name in EXPERTS}


def run(ctx: "StageContext", cfg: Config) -> dict[str, Any]:
    """Compute this task's missing shards of both splits; the cache is whole once every task of the array is done."""
    from medminds_hpc.stages.baseline import load_rows

    expert_runs = expert_runs_of(ctx)
    rows = {split: load_rows(ctx, split) for split in SPLITS}
    started = time.time()
    specs, computed_rows = build(cache_root(ctx.run), expert_runs, rows, cfg, shard=ctx.shard, num_shards=ctx.num_shards,
                            on_step=lambda done, total: ctx.step_done(done, dict, total))
    seconds = time.time() - started
    result: dict[str, Any] = {f"rows_{split}": spec.rows for split, spec in specs.items()}
    result.update(rows_computed=computed_rows, extract_seconds=round(seconds, 3))
    if computed_rows and seconds > 0:
        result[HEADLINE] = round(computed_rows / seconds, 3)
    return result
