"""Merge the two experts' LoRA adapters into one adapter, then score MedMCQA like baseline-nextword.

Merging is the cheapest combiner of two adapters of one base: no training, one adapter at inference, one forward
pass per question. The base is loaded once with both experts (`features.load_experts`), peft's
`add_weighted_adapter` builds the adapter "merged" from them, and " A".." D" are scored at the answer position
exactly as baseline-nextword scores them.

    medminds submit merge-linear --dataset micro      # weighted sum of the LoRA factors (both experts' ranks equal)
    medminds submit merge-ties --dataset micro        # TIES: trim to `density`, elect signs, average agreeing values
    medminds submit merge-dare --dataset micro        # DARE-TIES: random drop to `density` (seeded), rescale, TIES

peft merges the A and the B factors separately: `linear` with weights [w, 0] is exactly w times the task expert's
update, but [0.5, 0.5] is not the mean of the two updates (it adds the cross terms B_task A_domain and
B_domain A_task); all three methods need both experts to have the same LoRA rank (the projections may differ). Writes predictions.parquet, metrics.json and artifacts/merged (the merged
adapter in peft format, loadable with `attach_adapters`). Scoring holds no state worth a checkpoint: a preempted
job merges again (seeded, so identically) and scores from the start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medminds_hpc import artifacts, fileio
from medminds_hpc.errors import UserError
from medminds_hpc.training.options import doc

if TYPE_CHECKING:
    from medminds_hpc.context import StageContext

MERGED = "merged"  # peft's name for the merged adapter
COMBINATION = {"linear": "linear", "ties": "ties", "dare-ties": "dare_ties"}  # method -> peft combination_type


@dataclass
class Config:
    method: Literal["linear", "ties", "dare-ties"] = field(default="linear", metadata=doc(
        "linear: weighted sum of the LoRA factors; ties: trim, elect sign, merge; dare-ties: random drop + rescale, then ties"))
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5], metadata=doc(
        "weight of the task and the domain adapter, in that order ([0.5, 0.5] averages for linear; "
        "ties and dare-ties usually take [1.0, 1.0], as their sign election already averages)"))
    density: float = field(default=0.5, metadata=doc("share of each adapter's values kept by ties and dare-ties, in (0, 1]"))
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc("prompt template"))
    eval_batch_size: int = field(default=32, metadata=doc("questions per forward pass"))
    max_length: int = field(default=512, metadata=doc("prompt tokens kept (left-truncated)"))
    seed: int = field(default=3407, metadata=doc("seed of dare-ties' random drop"))

    def __post_init__(self) -> None:
        problems = []
        if len(self.weights) != 2:
            problems.append(f"weights: expected 2 numbers (task, domain adapter), got {len(self.weights)} {self.weights!r}; "
                            "give e.g. -o weights=1,1")
        if not 0 < self.density <= 1:
            problems.append(f"density: expected a share in (0, 1], got {self.density!r}; give e.g. -o density=0.5")
        if problems:
            raise ValueError("; ".join(problems))


def check_equal_ranks(model: Any, names: list[str]) -> None:
    """peft's linear, ties and dare-ties merges need one LoRA rank across the adapters: say so before peft fails."""
    ranks = {name: model.peft_config[name].r for name in names}
    if len(set(ranks.values())) != 1:
        listed = ", ".join(f"{name} r={r}" for name, r in ranks.items())
        raise UserError(f"merging needs experts of the same LoRA rank, got {listed}; retrain one expert with "
                        f"-o lora_r={ranks[names[0]]}")


def merge_adapters(model: Any, cfg: Config, names: list[str]) -> Any:
    """Add the adapter MERGED (cfg.method of `names` with cfg.weights) to the PeftModel `model` and make it active."""
    import torch

    from medminds_hpc.modeling.adapters import set_active_adapter

    check_equal_ranks(model, names)
    torch.manual_seed(cfg.seed)  # dare-ties drops values at random
    density = None if cfg.method == "linear" else cfg.density
    model.add_weighted_adapter(adapters=names, weights=list(cfg.weights), adapter_name=MERGED,
                               combination_type=COMBINATION[cfg.method], density=density)
    set_active_adapter(model, MERGED)
    return model


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
             "merge_seconds": round(merge_seconds, 3), "merged_adapter": str(merged_dir),
             "letter_mass_mean": float(np.exp(logprobs).sum(axis=1).mean()) if len(rows) else None,
             "questions_per_second": len(rows) / eval_seconds if eval_seconds > 0 else None}
    result = write_results(ctx, rows, logprobs, "logprob", train_seconds=0.0, eval_seconds=eval_seconds, extra=extra)
    return {"accuracy": result["accuracy"], "n": result["n"], "eval_seconds": round(eval_seconds, 3)}
