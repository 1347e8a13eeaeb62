"""Merge the two experts' LoRA adapters into one adapter, then score MedMCQA like baseline-nextword.

Merging is the cheapest combiner of two adapters of one base: no training, one adapter at inference, one forward
pass per question. The base is loaded once with both experts (`features.load_experts`), peft's
`add_weighted_adapter` builds the adapter "merged" from them, and " A".." D" are scored at the answer position
exactly as baseline-nextword scores them.

    medminds submit merge-linear --dataset micro      # w_task * update_task + w_domain * update_domain, exactly
    medminds submit merge-ties --dataset micro        # TIES: trim to `density`, elect signs, average agreeing values
    medminds submit merge-dare --dataset micro        # DARE-TIES: random drop to `density` (seeded), rescale, TIES

Every method works on each projection's whole update, delta = scaling * B @ A (the experts' task vectors), never
on the LoRA factors one by one: two adapters trained apart share no basis for their A and B factors, so averaging
or trimming the factors (peft's `linear`, `ties`, `dare_ties`) mixes in the cross terms B_task A_domain and
B_domain A_task. `linear` is peft's `cat` (the exact weighted sum of the updates, rank r_task + r_domain); `ties`
and `dare-ties` are peft's `ties_svd` and `dare_ties_svd` (the method on the full updates, then an SVD back to
rank `svd_rank`, by default r_task + r_domain). The experts may differ in rank and in target projections.
Measured on the two-kind task of tests/test_combining.py with 12 cues per kind (tiny model, mix accuracy): the
factor-wise linear average scored 0.42 where the exact mean of the updates scored 0.71 (0.61 and 0.60 on two more
seeds).

Writes predictions.parquet, metrics.json and artifacts/merged (the merged adapter in peft format, loadable with
`attach_adapters`). Scoring holds no state worth a checkpoint: a preempted job merges again (seeded, so
identically) and scores from the start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from medminds_hpc import artifacts, fileio
from medminds_hpc.training.options import PROMPT_FITS, Relation, doc

if TYPE_CHECKING:
    from medminds_hpc.context import StageContext

MERGED = "merged"  # peft's name for the merged adapter
COMBINATION = {"linear": "cat", "ties": "ties_svd", "dare-ties": "dare_ties_svd"}  # method -> peft combination_type


@dataclass
class Config:
    method: Literal["linear", "ties", "dare-ties"] = field(default="linear", metadata=doc(
        "linear: weighted sum of the experts' updates; ties: trim, elect sign, average; dare-ties: random drop + "
        "rescale, then ties (all on each projection's whole update B @ A)"))
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5], metadata=doc(
        "weight of the task and the domain adapter, in that order ([0.5, 0.5] averages for linear; "
        "ties and dare-ties usually take [1.0, 1.0], as their sign election already averages)", length=2, ge=-100, le=100))
    density: float = field(default=0.5, metadata=doc("share of each adapter's values kept by ties and dare-ties, in (0, 1]", gt=0, le=1))
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc("prompt template"))
    eval_batch_size: int = field(default=32, metadata=doc("questions per forward pass", ge=1))
    max_length: int = field(default=512, metadata=doc("prompt tokens kept (left-truncated)", ge=2, le=131072))
    seed: int = field(default=3407, metadata=doc("seed of dare-ties' random drop", ge=0, le=2**32 - 1))
    svd_rank: int = field(default=0, metadata=doc(
        "rank of the merged adapter of ties and dare-ties (an SVD of the merged updates); 0: the experts' ranks summed", ge=0, le=65536))

    RELATIONS: ClassVar[tuple[Relation, ...]] = (PROMPT_FITS,)


def merge_adapters(model: Any, cfg: Config, names: list[str]) -> Any:
    """Add the adapter MERGED (cfg.method of `names` with cfg.weights) to the PeftModel `model` and make it active."""
    import torch

    from medminds_hpc.modeling.adapters import set_active_adapter

    torch.manual_seed(cfg.seed)  # dare-ties drops values at random
    combination = COMBINATION[cfg.method]
    extra: dict[str, Any] = {}
    if combination != "cat":
        ranks = sum(model.peft_config[name].r for name in names)
        # the reduced SVD: the full one of a 4,096 x 14,336 projection is most of a merge's time and memory
        extra = dict(density=cfg.density, svd_rank=cfg.svd_rank or ranks, svd_full_matrices=False)
    model.add_weighted_adapter(adapters=names, weights=list(cfg.weights), adapter_name=MERGED,
                               combination_type=combination, **extra)
    pad_to_rank(model, MERGED)
    set_active_adapter(model, MERGED)
    return model


def pad_to_rank(model: Any, name: str) -> None:
    """Zero-pad adapter `name`'s factors to its configured rank where a projection is narrower than that rank.

    The reduced SVD of an (out x in) update has min(out, in) components: peft then leaves A and B with that many
    rows and columns while the adapter's config says r, which would not load back. Zero rows add nothing."""
    import torch

    rank = model.peft_config[name].r
    for module in model.modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if lora_a is None or name not in lora_a:
            continue
        a, b = lora_a[name].weight, lora_b[name].weight
        if a.shape[0] < rank:
            missing = rank - a.shape[0]
            a.data = torch.cat([a.data, a.data.new_zeros(missing, a.shape[1])])
            b.data = torch.cat([b.data, b.data.new_zeros(b.shape[0], missing)], dim=1)


def save_merged(model: Any, directory: Path) -> None:
    """The merged adapter alone, in peft format at `directory` (peft puts a non-default adapter in a subfolder)."""
    model.save_pretrained(str(directory), selected_adapters=[MERGED])
    for item in (directory / MERGED).iterdir():
        item.rename(directory / item.name)
    (directory / MERGED).rmdir()


def run(ctx: "StageContext", cfg: Config) -> dict[str, Any]:
    """Merge the two experts, save the merged adapter, score MedMCQA validation with it."""
    import numpy as np

    from medminds_hpc.modeling.features import EXPERTS, load_experts
    from medminds_hpc.modeling.scoring import letter_logprobs
    from medminds_hpc.stages.baseline import expert_adapter, load_rows, model_name, scoring_progress, write_results

    model_name(ctx)  # a run without --model stops here, before anything loads
    rows = load_rows(ctx, "medmcqa_validation")
    for name in EXPERTS:
        expert_adapter(ctx, name)  # each expert was trained on this run's base
    started = time.time()
    model, tokenizer = load_experts({name: ctx.need(f"expert-{name}") for name in EXPERTS})
    merge_adapters(model, cfg, list(EXPERTS))
    model.eval()
    merge_seconds = time.time() - started
    merged_dir = artifacts.path(ctx.run, artifacts.MERGED)
    if ctx.is_rank_zero:
        fileio.replace_dir(merged_dir, lambda tmp: save_merged(model, tmp))
    started = time.time()
    logprobs = letter_logprobs(model, tokenizer, rows, cfg.prompt, batch_size=cfg.eval_batch_size,
                               max_length=cfg.max_length, progress=scoring_progress(ctx, stoppable=True))
    eval_seconds = time.time() - started
    extra = {"method": f"merge-{cfg.method}", "model": ctx.model, "weights": list(cfg.weights),
             "density": None if cfg.method == "linear" else cfg.density, "prompt": cfg.prompt,
             "combination": COMBINATION[cfg.method], "merged_rank": model.peft_config[MERGED].r,
             "merge_seconds": round(merge_seconds, 3), "merged_adapter": str(merged_dir),
             "letter_mass_mean": float(np.exp(logprobs).sum(axis=1).mean()) if len(rows) else None,
             "questions_per_second": len(rows) / eval_seconds if eval_seconds > 0 else None}
    result = write_results(ctx, rows, logprobs, "logprob", train_seconds=0.0, eval_seconds=eval_seconds, extra=extra)
    return {"accuracy": result["accuracy"], "n": result["n"], "eval_seconds": round(eval_seconds, 3)}
