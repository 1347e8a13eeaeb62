"""Ensembles of the two experts over their last-token outputs (paper section 6.2), trained from the feature cache.

A head (`modeling/ensemble_heads.py`: weighted, transformer, late-fusion; each expert's output reduced by a learned
32,000 -> 4 projection, as in the paper, or read at the letters " A".." D") learns on MedMCQA train from the
`features` run's cached states and the base's frozen LM head, through the shared training engine (checkpoints,
resume, each epoch judged as `selection` says: dev rows come out of the cached train split), and is scored on
MedMCQA validation. The base is never loaded: an epoch costs a few matrix products, not two passes of a 7B model.

    medminds submit ensemble-late-fusion --dataset micro                  # features, then the head
    medminds submit ensemble-weighted --dataset micro -o reduce=letters   # start from the next-word prior
    medminds submit ensemble-transformer --dataset micro -o freeze_experts=false   # adapters train too (no cache)

`cache=false` recomputes both frozen experts at every step instead (the original design, slower, the same
result); `freeze_experts=false` trains both adapters with the head, through the one shared base. Writes
predictions.parquet, metrics.json and artifacts/ensemble (head.safetensors, ensemble.json, and the two trained
adapters in peft format under adapters/ when they trained).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, Sequence

from medminds_hpc import artifacts, fileio
from medminds_hpc.errors import UserError
from medminds_hpc.training.selection import planned_training  # noqa: F401  (StageInfo.trains)
from medminds_hpc.training.options import PROMPT_FITS, Relation, TrainOptions, doc

if TYPE_CHECKING:
    import numpy as np

    from medminds_hpc.context import StageContext
    from medminds_hpc.runs import Run

HEAD_FILE = "head.safetensors"
INFO_FILE = "ensemble.json"
ADAPTERS_DIR = "adapters"


@dataclass
class Config(TrainOptions):
    method: Literal["weighted", "transformer", "late-fusion"] = field(default="weighted", metadata=doc(
        "weighted: two learned expert weights + Linear 4->4; transformer: one self-attention block over the two "
        "experts as two tokens; late-fusion: one Linear over both outputs concatenated"))
    reduce: Literal["learned", "letters"] = field(default="learned", metadata=doc(
        "each expert's 32,000-wide output to 4: a learned projection (the paper) or the logits of ' A'..' D' "
        "(the next-word prior; far better from few examples)"))
    freeze_experts: bool = field(default=True, metadata=doc("false: both experts' adapters train with the head (no cache)"))
    cache: bool = field(default=True, metadata=doc(
        "read the frozen experts' states from the features run; false: recompute both experts at every step "
        "(the original design: same result, one model pass per expert per step)"))
    amp: bool = field(default=True, metadata=doc("mixed precision on CUDA (false: fp32)"))
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc(
        "prompt template when the experts are recomputed; the cache keeps its features run's"))
    max_length: int = field(default=512, metadata=doc(
        "prompt tokens kept (left-truncated) when the experts are recomputed; the cache keeps its features run's", ge=2, le=131072))
    eval_rows: int = field(default=0, metadata=doc("validate on at most this many MedMCQA validation rows (0: all)", ge=0))
    keep: Literal["last", "best"] = field(default="last", metadata=doc(
        "weights reported and saved: after the last epoch, or the epoch judged best (on the split `selection` names)"))
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: Literal["linear", "cosine", "constant"] = "constant"
    batch_size: int = 32
    epochs: float = 10.0
    optimizer: Literal["adamw", "adamw_8bit", "adam"] = "adam"
    max_grad_norm: float = 0.0  # the paper's ensembles train with plain Adam steps, gradients unclipped

    RELATIONS: ClassVar[tuple[Relation, ...]] = (PROMPT_FITS,)

    @property
    def cached(self) -> bool:
        return self.cache and self.freeze_experts


# the experts' states -----------------------------------------------------------------------------------------
def feature_source(ctx: "StageContext", cfg: Config) -> tuple["Run", Any]:
    """(the run that owns the cache, its features.Config): the `features` run this run needs, else this run itself
    with this run's prompt and max_length (an ensemble experiment without a features run builds its own cache)."""
    from medminds_hpc.stages import features as features_stage

    if "features" in ctx.record.get("needs", {}):
        source = ctx.need("features")
        known = {f.name for f in dataclasses.fields(features_stage.Config)}
        params = {k: v for k, v in source.data.get("params", {}).items() if k in known}
        return source, features_stage.Config(**params)
    return ctx.run, features_stage.Config(prompt=cfg.prompt, max_length=cfg.max_length, eval_batch_size=cfg.eval_batch_size)


def cached_states(ctx: "StageContext", cfg: Config, expert_runs: Mapping[str, "Run"],
                  rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[dict[str, Any], Any, list[int]]:
    """({split: Features}, float32 LM-head weight, letter ids), from a valid cache. A missing, stale or damaged cache
    is rebuilt first (only what is not valid; the base is loaded only then), never used as it is."""
    from medminds_hpc.modeling import features
    from medminds_hpc.stages import features as features_stage

    source, fcfg = feature_source(ctx, cfg)
    root = features_stage.cache_root(source)
    specs, rebuilt = features_stage.build(root, expert_runs, rows, fcfg)
    if rebuilt:
        ctx.log({"event": "feature cache rebuilt", "run": source.id, "rows": rebuilt})
    loaded = {split: features.load(root / split, spec) for split, spec in specs.items()}
    head = features.load_lm_head(root, next(iter(specs.values())).experts)
    broken = [split for split, f in loaded.items() if f is None] + (["lm_head"] if head is None else [])
    if broken:  # written a moment ago: only a concurrent writer or a failing disk gets here
        raise UserError(f"the feature cache in {root} is still not valid for {', '.join(broken)} after rebuilding; "
                        f"check the disk and that no other job writes there, then resubmit")
    return loaded, head[0], head[1]


class StatesDataset:
    """Rows `rows` of cached states, with their labels, as the Trainer reads them (the cache is not copied)."""

    def __init__(self, task: "np.ndarray", domain: "np.ndarray", labels: Sequence[int], rows: Sequence[int]) -> None:
        self.task, self.domain, self.labels, self.rows = task, domain, list(labels), list(rows)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"task_states": self.task[self.rows[i]], "domain_states": self.domain[self.rows[i]], "labels": self.labels[i]}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        """A whole batch in one indexing of the cache: torch's DataLoader calls this instead of __getitem__ per
        row, which at a head's step of a few milliseconds is worth saving."""
        import numpy as np

        rows = np.asarray([self.rows[i] for i in indices], dtype=np.int64)
        return {"task_states": self.task[rows], "domain_states": self.domain[rows],
                "labels": [self.labels[i] for i in indices]}


def states_collator(features: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """Tensors of a batch: from `StatesDataset.__getitems__` (one dict of stacked rows) or from rows one by one."""
    import numpy as np
    import torch

    if isinstance(features, dict):
        task, domain, labels = features["task_states"], features["domain_states"], features["labels"]
    else:
        task, domain = np.stack([f["task_states"] for f in features]), np.stack([f["domain_states"] for f in features])
        labels = [f["labels"] for f in features]
    return {"task_states": torch.from_numpy(np.ascontiguousarray(task)),
            "domain_states": torch.from_numpy(np.ascontiguousarray(domain)),
            "labels": torch.tensor([int(label) for label in labels], dtype=torch.long)}


# saving ------------------------------------------------------------------------------------------------------
def save_ensemble(model: Any, directory: Path, info: dict[str, Any]) -> None:
    """The head's weights (head.safetensors), what it was trained from (ensemble.json), and the two adapters in
    peft format (adapters/task, adapters/domain) when they trained."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(directory / HEAD_FILE))
    if getattr(model, "train_experts", False):
        model.lm.save_pretrained(str(directory / ADAPTERS_DIR), selected_adapters=list(model.names))
    fileio.atomic_write_json(directory / INFO_FILE, info)


# the stage ---------------------------------------------------------------------------------------------------
def run(ctx: "StageContext", cfg: Config) -> dict[str, Any]:
    """Train the head (and the adapters, with freeze_experts=false) on MedMCQA train, then score validation."""
    import numpy as np
    import torch

    from medminds_hpc.modeling.ensemble_heads import CachedEnsemble, LiveEnsemble, build_head
    from medminds_hpc.stages import features as features_stage
    from medminds_hpc.stages.baseline import load_rows, scoring_progress, write_results
    from medminds_hpc.training import engine, metrics, selection

    expert_runs = features_stage.expert_runs_of(ctx)
    train_rows = load_rows(ctx, "medmcqa_train")
    val_rows = load_rows(ctx, "medmcqa_validation")
    if not train_rows:
        raise UserError(f"no MedMCQA training rows for dataset {ctx.dataset!r}; rerun `medminds prepare --dataset {ctx.dataset}`")
    split = selection.split(cfg, [r["answer"] for r in train_rows], cfg.max_train_rows)
    val_n = min(len(val_rows), cfg.eval_rows) if cfg.eval_rows else len(val_rows)
    options = dataclasses.replace(cfg, precision=cfg.precision if cfg.amp else "fp32",
                                  gradient_checkpointing=False if cfg.cached else cfg.gradient_checkpointing)
    labels = [int(r["answer"]) for r in selection.pick(train_rows, split.train)]
    # which rows judge each epoch, as (split, indices): dev rows come out of the training split (and its cache)
    judged = ("medmcqa_train", split.dev) if split.on_dev else ("medmcqa_validation", list(range(val_n)))
    scored = {"medmcqa_train": train_rows, "medmcqa_validation": val_rows}
    info: dict[str, Any] = {"method": cfg.method, "reduce": cfg.reduce, "freeze_experts": cfg.freeze_experts,
                            "cache": cfg.cached, "model": ctx.model,
                            "experts": {name: run.id for name, run in expert_runs.items()}}

    if cfg.cached:
        loaded, lm_head, letters = cached_states(ctx, cfg, expert_runs, {"medmcqa_train": train_rows,
                                                                         "medmcqa_validation": val_rows})
        source, fcfg = feature_source(ctx, cfg)
        info.update(features_run=source.id, prompt=fcfg.prompt, max_length=fcfg.max_length)
        cached = loaded["medmcqa_train"].states
        model = CachedEnsemble(build_head(cfg.method, cfg.reduce, lm_head, letters, seed=cfg.seed))
        train_data: Any = StatesDataset(cached["task"], cached["domain"], labels, split.train)
        collator: Callable = states_collator

        def score(m: Any, which: tuple[str, list[int]], progress: Callable[[int, int], None] | None = None) -> "np.ndarray":
            states = loaded[which[0]].states
            task, domain, n = torch.from_numpy(states["task"][which[1]]), torch.from_numpy(states["domain"][which[1]]), len(which[1])
            device = next(m.head.parameters()).device
            out = [m.head(task[i:i + cfg.eval_batch_size].to(device), domain[i:i + cfg.eval_batch_size].to(device)).float().cpu()
                   for i in range(0, n, cfg.eval_batch_size)]
            if progress is not None:
                progress(n, n)
            return torch.cat(out).numpy() if out else np.zeros((0, 4), dtype=np.float32)
    else:
        import datasets

        from medminds_hpc.data.prompts import encode_prompts, letter_token_ids, mcq_prompt
        from medminds_hpc.modeling.features import lm_head_layer, load_experts
        from medminds_hpc.stages.baseline import prompt_collator

        lm, tokenizer = load_experts(expert_runs)
        head = build_head(cfg.method, cfg.reduce, lm_head_layer(lm).weight.detach().float(), letter_token_ids(tokenizer), seed=cfg.seed)
        model = LiveEnsemble(lm, head, train_experts=not cfg.freeze_experts)
        info.update(prompt=cfg.prompt, max_length=cfg.max_length)
        train_data = datasets.Dataset.from_dict({"prompt": [mcq_prompt(r, cfg.prompt) for r in selection.pick(train_rows, split.train)],
                                                 "label": labels})
        collator = prompt_collator(tokenizer, cfg.max_length)

        def score(m: Any, which: tuple[str, list[int]], progress: Callable[[int, int], None] | None = None) -> "np.ndarray":
            prompts, n, out = [mcq_prompt(r, cfg.prompt) for r in selection.pick(scored[which[0]], which[1])], len(which[1]), []
            with torch.no_grad():
                for i in range(0, n, cfg.eval_batch_size):
                    batch = encode_prompts(tokenizer, prompts[i:i + cfg.eval_batch_size], max_length=cfg.max_length,
                                           padding_side="right")
                    task, domain = m.expert_states(batch["input_ids"], batch["attention_mask"])
                    out.append(m.head(task, domain).float().cpu())
                    if progress is not None:
                        progress(min(i + cfg.eval_batch_size, n), n)
            return torch.cat(out).numpy() if out else np.zeros((0, 4), dtype=np.float32)

    judged_rows = selection.pick(scored[judged[0]], judged[1])

    def evaluate(m: Any) -> dict[str, Any]:
        return metrics.evaluate_predictions([r["id"] for r in judged_rows], [r["answer"] for r in judged_rows], score(m, judged))

    plan = engine.TrainPlan(model=model, train_dataset=train_data, options=options, collator=collator,
                            evaluate=evaluate, save_best=engine.save_trainable)
    outcome = engine.train(ctx, plan)

    kept = engine.keep_weights(ctx, model, outcome, cfg.keep)
    model.eval()
    weights = [round(float(w), 6) for w in model.head.expert_weights.detach().cpu()] if cfg.method == "weighted" else None
    info.update(kept=kept, expert_weights=weights)
    if ctx.is_rank_zero:
        fileio.replace_dir(artifacts.path(ctx.run, artifacts.ENSEMBLE), lambda tmp: save_ensemble(model, tmp, info))
    started = time.time()
    with torch.no_grad():
        logits = score(model, ("medmcqa_validation", list(range(val_n))), scoring_progress(ctx, stoppable=False))
    eval_seconds = time.time() - started
    extra = {**{k: v for k, v in info.items() if k != "experts"}, "method": f"ensemble-{cfg.method}",
             "experts": info["experts"], "steps": outcome.steps, "train_rows": len(split.train), **split.record(),
             "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
             "epochs": outcome.history, "best": outcome.best, "ensemble": str(artifacts.path(ctx.run, artifacts.ENSEMBLE))}
    result = write_results(ctx, val_rows[:val_n], logits, "logit", train_seconds=outcome.train_seconds,
                           eval_seconds=eval_seconds, extra=extra)
    return {"accuracy": result["accuracy"], "n": result["n"], "steps": outcome.steps}
