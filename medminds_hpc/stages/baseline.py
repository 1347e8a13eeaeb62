"""MedMCQA baselines: next-word letter scoring, and a 4-way classifier head with LoRA.

baseline-nextword scores " A".." D" at the answer position of the base (or of an expert: the base + its LoRA
adapter, found through the run registry) in ONE forward pass per question. baseline-classifier puts a 4-way head
on the last real token of the base, of an expert (merged into the base; kept as a frozen active adapter under a
4-bit base, which cannot be merged exactly) or of BioMistral, and trains it with a fresh LoRA (the paper: r=16,
alpha=8, dropout 0.05 on all seven projections) through the shared training engine.

    medminds submit baseline-nextword --dataset micro
    medminds submit baseline-classifier-task --dataset micro -o head_init=letters

Both write predictions.parquet and metrics.json; the classifier also writes artifacts/classifier (LoRA in peft
format + head.safetensors + classifier.json). Torch & co. are imported inside the functions: the CLI imports this
module for its Config classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from medminds_hpc import artifacts, fileio
from medminds_hpc.errors import UserError
from medminds_hpc.training.selection import planned_training  # noqa: F401  (StageInfo.trains)
from medminds_hpc.training.options import PROMPT_FITS, Relation, TrainOptions, doc

if TYPE_CHECKING:
    from medminds_hpc.context import StageContext
    from medminds_hpc.modeling.heads import LastTokenClassifier

TRAINABLE_LORA = "default"  # peft's name for the classifier's own LoRA


@dataclass
class NextWordConfig:
    adapter: Literal["none", "task", "domain"] = field(default="none", metadata=doc("expert adapter applied to the base"))
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc("prompt template"))
    eval_batch_size: int = field(default=32, metadata=doc("questions per forward pass", ge=1))
    max_length: int = field(default=512, metadata=doc("prompt tokens kept (left-truncated)", ge=2, le=131072))

    RELATIONS: ClassVar[tuple[Relation, ...]] = (PROMPT_FITS,)


@dataclass
class ClassifierConfig(TrainOptions):
    adapter: Literal["none", "task", "domain"] = field(default="none", metadata=doc("expert adapter under the head"))
    head_init: Literal["random", "letters"] = field(default="random", metadata=doc("random (paper) or the LM-head rows of ' A'..' D'"))
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc("prompt template"))
    lora_r: int = field(default=16, metadata=doc("LoRA rank", ge=1, le=4096))
    lora_alpha: int = field(default=8, metadata=doc("LoRA alpha", gt=0, le=65536))
    lora_dropout: float = field(default=0.05, metadata=doc("LoRA dropout", ge=0, lt=1))
    learning_rate: float = 1e-4
    batch_size: int = 32
    eval_rows: int = field(default=0, metadata=doc("validate on at most this many MedMCQA validation rows (0: all)", ge=0))
    keep: Literal["last", "best"] = field(default="last", metadata=doc(
        "weights reported and saved: after the last epoch, or the epoch judged best (on the split `selection` names)"))

    RELATIONS: ClassVar[tuple[Relation, ...]] = (PROMPT_FITS,)


# shared by both stages -------------------------------------------------------------------------------------------
def model_name(ctx: "StageContext") -> str:
    if not ctx.model:
        raise UserError(f"run {ctx.run.id} names no model; submit it with --model NAME (e.g. tiny, mistral-7b-instruct)")
    return ctx.model


def expert_adapter(ctx: "StageContext", adapter: str) -> tuple[str, Path] | None:
    """(name, directory) of the expert adapter this run builds on, or None for the bare base.

    The expert must have been trained on this run's base model: an adapter loaded onto another base is silently wrong.
    """
    if adapter == "none":
        return None
    upstream = ctx.need(f"expert-{adapter}")
    trained_on = upstream.data.get("model")
    if trained_on and ctx.model and trained_on != ctx.model:
        raise UserError(f"expert-{adapter} run {upstream.id} was trained on {trained_on!r} but this run uses {ctx.model!r}; "
                        f"submit both with the same --model")
    return adapter, artifacts.path(upstream, artifacts.ADAPTER)


def load_rows(ctx: "StageContext", split: str, limit: int = 0) -> list[dict[str, Any]]:
    from medminds_hpc.data.prepare import load_prepared

    rows = load_prepared(ctx.dataset, split, ctx.data_dir()).to_list()
    return rows[:limit] if limit else rows


def scoring_progress(ctx: "StageContext", stoppable: bool) -> Callable[[int, int], None]:
    """Report questions scored; when `stoppable`, honour the stop flag between batches (scoring restarts on requeue:
    it holds no state worth a checkpoint)."""
    from medminds_hpc.context import StopRequested

    def report(done: int, total: int) -> None:
        ctx.progress(done, total)
        if stoppable and done < total and ctx.stop_requested():
            ctx.progress(done, total, force=True)
            raise StopRequested(f"stopped after scoring {done}/{total} questions; scoring restarts when requeued")

    return report


def write_results(ctx: "StageContext", rows: list[dict[str, Any]], scores: Any, score_kind: str, *, train_seconds: float,
                  eval_seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    """predictions.parquet (the raw (N, 4) `scores`, of `score_kind` "logprob" or "logit", and their softmax) +
    metrics.json for `rows`; returns the metrics."""
    from medminds_hpc.training import metrics

    ids, subjects, gold = [r["id"] for r in rows], [r["subject"] for r in rows], [r["answer"] for r in rows]
    choice_types = [r.get("choice_type") for r in rows]
    result = metrics.evaluate_predictions(ids, gold, scores, subjects=subjects, choice_types=choice_types)
    result.update(extra)
    if ctx.is_rank_zero:
        metrics.write_predictions(ctx.run_dir, ids, subjects, gold, scores=scores, score_kind=score_kind,
                                  choice_types=choice_types)
    ctx.write_metrics(result, train_seconds=train_seconds, eval_seconds=eval_seconds)
    return result


# baseline-nextword -----------------------------------------------------------------------------------------------
def run_nextword(ctx: "StageContext", cfg: NextWordConfig) -> dict[str, Any]:
    """Zero-shot: log P(" A".." D" | prompt) in one forward pass per question, on MedMCQA validation."""
    import numpy as np

    from medminds_hpc.modeling.adapters import attach_adapters
    from medminds_hpc.modeling.loading import load_model
    from medminds_hpc.modeling.scoring import letter_logprobs

    rows = load_rows(ctx, "medmcqa_validation")
    expert = expert_adapter(ctx, cfg.adapter)
    model, tokenizer = load_model(model_name(ctx))
    if expert is not None:
        model = attach_adapters(model, {expert[0]: expert[1]})
    started = time.time()
    logprobs = letter_logprobs(model, tokenizer, rows, cfg.prompt, batch_size=cfg.eval_batch_size,
                               max_length=cfg.max_length, progress=scoring_progress(ctx, stoppable=True))
    eval_seconds = time.time() - started
    extra = {"method": "nextword", "model": ctx.model, "adapter": cfg.adapter, "prompt": cfg.prompt,
             # how much of the next-word distribution falls on the four letters at all (low: the model wants to say something else)
             "letter_mass_mean": float(np.exp(logprobs).sum(axis=1).mean()) if len(rows) else None,
             "questions_per_second": len(rows) / eval_seconds if eval_seconds > 0 else None}
    result = write_results(ctx, rows, logprobs, "logprob", train_seconds=0.0, eval_seconds=eval_seconds, extra=extra)
    return {"accuracy": result["accuracy"], "n": result["n"], "eval_seconds": round(eval_seconds, 3)}


# baseline-classifier ---------------------------------------------------------------------------------------------
def lora_backbone(base: Any, cfg: ClassifierConfig, expert: tuple[str, Path] | None, merge: bool | None = None) -> Any:
    """`base` (+ the expert) with a fresh trainable LoRA on all seven projections; everything else frozen.

    The expert is merged into the weights when the base is not quantized (merge=None: decide by that), else kept as
    a frozen active adapter with the trainable LoRA stacked on top (merging into 4-bit weights would round them).
    """
    from medminds_hpc.modeling.lora import add_lora, is_quantized

    lora = dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, seed=cfg.seed)
    if expert is None:
        return add_lora(base, **lora)
    name, path = expert
    if merge is None:
        merge = not is_quantized(base)
    if merge:
        from medminds_hpc.modeling.adapters import attach_adapters

        return add_lora(attach_adapters(base, {name: path}).merge_and_unload(), **lora)
    return _stack_lora(base, name, path, cfg)


def _stack_lora(base: Any, expert_name: str, expert_path: Path, cfg: ClassifierConfig) -> Any:
    import torch
    from peft import LoraConfig, prepare_model_for_kbit_training

    from medminds_hpc.modeling.adapters import attach_adapters
    from medminds_hpc.modeling.arch import lora_targets
    from medminds_hpc.modeling.lora import NON_REENTRANT, checkpointing_wanted, is_quantized

    targets = lora_targets(base)
    if is_quantized(base):
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing_wanted(cfg.gradient_checkpointing),
                                               gradient_checkpointing_kwargs=dict(NON_REENTRANT))
    model = attach_adapters(base, {expert_name: expert_path})  # frozen
    torch.manual_seed(cfg.seed)
    model.add_adapter(TRAINABLE_LORA, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=list(targets), task_type="CAUSAL_LM"))
    model.base_model.set_adapter([expert_name, TRAINABLE_LORA])  # both act in every forward pass
    for name, param in model.named_parameters():
        param.requires_grad = f".{TRAINABLE_LORA}." in name  # peft just made the expert trainable too: undo that
    return model


def build_classifier(name: str, cfg: ClassifierConfig, expert: tuple[str, Path] | None = None,
                     merge: bool | None = None, **load: Any) -> tuple["LastTokenClassifier", Any]:
    """(classifier, tokenizer): model `name` (+ expert) + trainable LoRA + the 4-way head, as the stage trains it."""
    from medminds_hpc.data.prompts import letter_token_ids
    from medminds_hpc.modeling.heads import LastTokenClassifier
    from medminds_hpc.modeling.loading import load_model

    base, tokenizer = load_model(name, **load)
    backbone = lora_backbone(base, cfg, expert, merge)
    letters = letter_token_ids(tokenizer) if cfg.head_init == "letters" else None
    return LastTokenClassifier(backbone, cfg.head_init, letters, seed=cfg.seed), tokenizer


def prompt_collator(tokenizer: Any, max_length: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Rows {prompt, label} -> a right-padded batch (input_ids, attention_mask, labels), tokenised as in scoring."""
    import torch

    from medminds_hpc.data.prompts import encode_prompts

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = encode_prompts(tokenizer, [f["prompt"] for f in features], max_length=max_length, padding_side="right")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "labels": torch.tensor([int(f["label"]) for f in features], dtype=torch.long)}

    return collate


def run_classifier(ctx: "StageContext", cfg: ClassifierConfig) -> dict[str, Any]:
    """Train head + LoRA on MedMCQA train (each epoch judged as `selection` says), then score validation once and
    save the classifier."""
    import datasets

    from medminds_hpc.data.prompts import mcq_prompt
    from medminds_hpc.modeling.heads import load_classifier_state, save_classifier
    from medminds_hpc.modeling.scoring import head_logits
    from medminds_hpc.training import engine, metrics, selection

    all_train = load_rows(ctx, "medmcqa_train")
    val_rows = load_rows(ctx, "medmcqa_validation", cfg.eval_rows)
    if not all_train:
        raise UserError(f"no MedMCQA training rows for dataset {ctx.dataset!r}; rerun `medminds prepare --dataset {ctx.dataset}`")
    split = selection.split(cfg, [r["answer"] for r in all_train], cfg.max_train_rows)
    train_rows, judged_rows = selection.pick(all_train, split.train), split.judged(all_train, val_rows)
    expert = expert_adapter(ctx, cfg.adapter)
    classifier, tokenizer = build_classifier(model_name(ctx), cfg, expert)
    stacked = len(getattr(classifier.lm, "peft_config", {})) > 1  # the expert kept as an adapter (4-bit base)
    info = {"model": ctx.model, "adapter": cfg.adapter, "expert_adapter": str(expert[1]) if expert else None,
            "expert_mode": None if expert is None else ("stacked" if stacked else "merged"),
            "head_init": cfg.head_init, "prompt": cfg.prompt, "max_length": cfg.max_length,
            "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout}}

    def score(model: Any, rows: list[dict[str, Any]], progress: Callable[[int, int], None] | None = None) -> Any:
        return head_logits(model, tokenizer, rows, cfg.prompt, batch_size=cfg.eval_batch_size,
                           max_length=cfg.max_length, progress=progress)

    def evaluate(model: Any) -> dict[str, Any]:
        return metrics.evaluate_predictions([r["id"] for r in judged_rows], [r["answer"] for r in judged_rows],
                                            score(model, judged_rows))

    train_data = datasets.Dataset.from_dict({"prompt": [mcq_prompt(r, cfg.prompt) for r in train_rows],
                                             "label": [int(r["answer"]) for r in train_rows]})
    plan = engine.TrainPlan(model=classifier, train_dataset=train_data, options=cfg,
                            collator=prompt_collator(tokenizer, cfg.max_length), evaluate=evaluate,
                            save_best=lambda model, directory: save_classifier(model, directory, info))
    outcome = engine.train(ctx, plan)

    kept = "last"
    if cfg.keep == "best" and outcome.best is not None:
        load_classifier_state(classifier, artifacts.path(ctx.run, artifacts.BEST))
        kept = f"best (epoch {outcome.best['epoch']})"
    classifier.eval()
    if ctx.is_rank_zero:
        fileio.replace_dir(artifacts.path(ctx.run, artifacts.CLASSIFIER), lambda tmp: save_classifier(classifier, tmp, {**info, "kept": kept}))
    started = time.time()
    logits = score(classifier, val_rows, scoring_progress(ctx, stoppable=True))
    eval_seconds = time.time() - started
    extra = {"method": "classifier", "model": ctx.model, "adapter": cfg.adapter, "head_init": cfg.head_init,
             "prompt": cfg.prompt, "kept": kept, "steps": outcome.steps, "train_rows": len(train_rows),
             "trainable_parameters": sum(p.numel() for p in classifier.parameters() if p.requires_grad),
             "epochs": outcome.history, "best": outcome.best, **split.record(),
             "classifier": str(artifacts.path(ctx.run, artifacts.CLASSIFIER))}
    result = write_results(ctx, val_rows, logits, "logit", train_seconds=outcome.train_seconds,
                           eval_seconds=eval_seconds, extra=extra)
    return {"accuracy": result["accuracy"], "n": result["n"], "steps": outcome.steps}
