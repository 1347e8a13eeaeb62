"""LoRA SFT of one expert on the shared base: the task expert (ARC) or the domain expert (medical instruct).

The loss is on the answer tokens only (a letter for ARC, the answer text for instruct): loss on the prompt too is
a known way to teach a model to always say "A". Each epoch is judged on a seeded sample of `holdout_rows` training
rows, never trained on (selection=dev: the expert's development split), or by next-word letter accuracy on MedMCQA
validation (selection=validation, the paper's protocol); MedMCQA validation is scored at the end either way. The
adapter is saved as `artifacts/adapter` (safetensors, `PeftModel.from_pretrained`-loadable),
which later stages find as `artifacts.path(run, artifacts.ADAPTER)`. An over-long example keeps its whole prompt
and loses the end of its answer; a row whose prompt alone does not fit max_length is dropped; metrics.json counts
both (`sft_examples`). The held-out rows also measure the expert on its own task (`task_accuracy`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

from medminds_hpc.errors import UserError
from medminds_hpc.training.options import PROMPT_FITS, Relation, TrainOptions, doc


@dataclass
class Config(TrainOptions):
    data: Literal["arc", "medical-instruct"] = field(default="arc", metadata=doc("training data of this expert"))
    lora_r: int = field(default=16, metadata=doc("LoRA rank", ge=1, le=4096))
    lora_alpha: int = field(default=16, metadata=doc("LoRA alpha", gt=0, le=65536))
    lora_dropout: float = field(default=0.0, metadata=doc("LoRA dropout", ge=0, lt=1))
    loss_on: Literal["answer", "all"] = field(default="answer", metadata=doc("tokens that carry loss; 'all' teaches the prompt too"))
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc("multiple-choice prompt template (ARC and validation)"))
    eval_rows: int = field(default=0, metadata=doc("validate on at most this many MedMCQA validation rows (0: all)", ge=0))
    holdout_rows: int = field(default=200, metadata=doc("training rows held out to measure the expert on its own task", ge=0))
    epochs: float = 3.0
    optimizer: Literal["adamw", "adamw_8bit", "adam"] = "adamw_8bit"

    RELATIONS: ClassVar[tuple[Relation, ...]] = (PROMPT_FITS,)


HEADLINE = "task_accuracy"  # held-out accuracy on its own training task: the number that says the expert learned


def split_holdout(rows: list[dict[str, Any]], n: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(holdout, train): `n` rows drawn by a seeded shuffle, so the held-out slice spans every source and split
    (prepared rows come grouped by file: the last rows would all be one split); both keep the prepared order."""
    import random

    chosen = set(random.Random(f"holdout:{seed}").sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i in chosen], [r for i, r in enumerate(rows) if i not in chosen]


def sft_example(cfg: Config, row: dict[str, Any], tokenizer: Any) -> Any:
    """The tokenised example of one row (`prompts.SFTExample`), or None when its prompt leaves no room for an answer
    within max_length."""
    from medminds_hpc.data import prompts

    prompt, completion = prompts.mcq_parts(row, cfg.prompt) if cfg.data == "arc" else prompts.instruct_parts(row, tokenizer)
    return prompts.encode_completion(tokenizer, prompt, completion, max_length=cfg.max_length)


def training_rows(cfg: Config, rows: list[dict[str, Any]], tokenizer: Any) -> tuple[Any, dict[str, int]]:
    """Tokenised SFT examples with labels on the answer only (or on everything with loss_on='all'), and counts:
    rows whose prompt alone does not fit max_length are dropped, rows whose answer lost its end are counted."""
    import datasets

    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    counts = {"rows": len(rows), "kept": 0, "dropped_prompt_too_long": 0, "answer_cut": 0, "max_length": cfg.max_length}
    for row in rows:
        ex = sft_example(cfg, row, tokenizer)
        if ex is None:
            counts["dropped_prompt_too_long"] += 1
            continue
        counts["kept"] += 1
        counts["answer_cut"] += int(ex.answer_cut)
        features = ex.features()
        if cfg.loss_on == "all":
            features["labels"] = list(features["input_ids"])
        for key in columns:
            columns[key].append(features[key])
    if rows and not counts["kept"]:
        raise UserError(f"max_length={cfg.max_length}: none of the {len(rows):,} {cfg.data} rows fits, every prompt alone "
                        f"leaves no room for an answer; raise it (e.g. -o max_length=256, the paper's)")
    return datasets.Dataset.from_dict(columns), counts


def validate(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: Config) -> tuple[dict[str, Any], Any]:
    """Next-word letter accuracy (and the rest of the evaluation) on MedMCQA validation rows, and the (N, 4) raw
    letter log-probabilities it was computed from."""
    from medminds_hpc.modeling.scoring import letter_logprobs
    from medminds_hpc.training.metrics import evaluate_predictions

    logprobs = letter_logprobs(model, tokenizer, rows, cfg.prompt, batch_size=cfg.eval_batch_size)
    result = evaluate_predictions([r["id"] for r in rows], [r["answer"] for r in rows], logprobs,
                                  subjects=[r["subject"] for r in rows], choice_types=[r["choice_type"] for r in rows])
    return result, logprobs


def own_task_accuracy(model: Any, tokenizer: Any, holdout: list[dict[str, Any]], cfg: Config) -> float:
    """How well the expert does what it was trained for, on held-out training rows.

    ARC: next-word letter accuracy. Instruct: teacher-forced accuracy of the answer tokens.
    """
    if not holdout:
        return float("nan")
    if cfg.data == "arc":
        from medminds_hpc.modeling.scoring import letter_logprobs

        scores = letter_logprobs(model, tokenizer, holdout, cfg.prompt, batch_size=cfg.eval_batch_size)
        return float((scores.argmax(axis=1) == [r["answer"] for r in holdout]).mean())
    import torch

    from medminds_hpc.data import prompts

    device = next(model.parameters()).device
    right = total = 0
    for row in holdout:
        ex = sft_example(cfg, row, tokenizer)
        if ex is None:  # its prompt alone fills max_length: not trainable, not measurable
            continue
        ids = torch.tensor([ex.input_ids], device=device)
        labels = torch.tensor(ex.labels[1:], device=device)
        predicted = model(input_ids=ids).logits[0, :-1].argmax(-1)
        keep = labels != prompts.IGNORE_INDEX
        right += int((predicted[keep] == labels[keep]).sum())
        total += int(keep.sum())
    return right / max(1, total)


def epoch_metrics(model: Any, tokenizer: Any, val_rows: list[dict[str, Any]], holdout: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """What judges an epoch ("accuracy"): own-task accuracy on the held-out training rows (selection=dev), or
    MedMCQA validation accuracy (selection=validation, with the own-task figure beside it)."""
    task_accuracy = own_task_accuracy(model, tokenizer, holdout, cfg)
    if cfg.selection == "dev":
        return {"accuracy": task_accuracy, "task_accuracy": task_accuracy}
    result, _ = validate(model, tokenizer, val_rows, cfg)
    return {"accuracy": result["accuracy"], "task_accuracy": task_accuracy}


TRAIN_FILE = {"arc": "arc_train", "medical-instruct": "instruct_train"}  # prepared file each expert trains on


def held_out(cfg: Config, total: int) -> int:
    return min(cfg.holdout_rows, total // 10)


def planned_training(cfg: Config, rows: Mapping[str, int]) -> tuple[str, int]:
    """The prepared file the expert trains on and how many rows it trains on (checked at submit)."""
    total = rows.get(TRAIN_FILE[cfg.data], 0)
    n = total - held_out(cfg, total)
    return TRAIN_FILE[cfg.data], min(n, cfg.max_train_rows) if cfg.max_train_rows else n


def run(ctx: Any, cfg: Config) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    from medminds_hpc import artifacts, compat, fileio
    from medminds_hpc.data.prepare import load_prepared
    from medminds_hpc.modeling.gpu import cuda_available
    from medminds_hpc.modeling.loading import load_model
    from medminds_hpc.modeling.lora import add_lora, checkpointing_wanted
    from medminds_hpc.training import engine, metrics

    if not cuda_available() and not compat.sft_trains_without_triton():
        import trl

        raise UserError(f"trl {trl.__version__} trains experts with Triton kernels, which need a CUDA GPU: submit the expert "
                        "to a GPU, or install the CPU lock here (MEDMINDS_LOCK=cpu bash install.sh)")

    train_rows = load_prepared(ctx.dataset, TRAIN_FILE[cfg.data], ctx.data_dir()).to_list()
    holdout, train_rows = split_holdout(train_rows, held_out(cfg, len(train_rows)), cfg.seed)
    if cfg.max_train_rows:
        train_rows = train_rows[: cfg.max_train_rows]
    val_rows = load_prepared(ctx.dataset, "medmcqa_validation", ctx.data_dir()).to_list()
    if cfg.eval_rows:
        val_rows = val_rows[: cfg.eval_rows]

    base, tokenizer = load_model(ctx.model)
    model = add_lora(base, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, seed=cfg.seed,
                     gradient_checkpointing=checkpointing_wanted(cfg.gradient_checkpointing))  # unsloth decides it here
    train_dataset, sft_counts = training_rows(cfg, train_rows, tokenizer)
    print(f"SFT examples at max_length {cfg.max_length}: {sft_counts['kept']:,} of {sft_counts['rows']:,} rows kept, "
          f"{sft_counts['dropped_prompt_too_long']:,} dropped (prompt alone too long), "
          f"{sft_counts['answer_cut']:,} with the end of the answer cut", flush=True)
    plan = engine.TrainPlan(
        model=model,
        train_dataset=train_dataset,
        options=cfg,
        evaluate=lambda m: epoch_metrics(m, tokenizer, val_rows, holdout, cfg),
        save_best=lambda m, d: m.save_pretrained(str(d)),
        trainer_class=SFTTrainer,
        args_class=SFTConfig,
        args_extra={"max_length": cfg.max_length, "dataset_num_proc": None, "packing": False},
        trainer_extra={"processing_class": tokenizer},
    )
    outcome = engine.train(ctx, plan)

    adapter_dir = artifacts.path(ctx.run, artifacts.ADAPTER)
    if ctx.is_rank_zero:
        fileio.replace_dir(adapter_dir, lambda tmp: model.save_pretrained(str(tmp)))
    started = time.time()
    model.eval()
    result, logprobs = validate(model, tokenizer, val_rows, cfg)
    eval_seconds = time.time() - started
    if ctx.is_rank_zero:
        metrics.write_predictions(ctx.run_dir, [r["id"] for r in val_rows], [r["subject"] for r in val_rows],
                                  [r["answer"] for r in val_rows], scores=logprobs, score_kind="logprob",
                                  choice_types=[r["choice_type"] for r in val_rows])
    result.update(steps=outcome.steps, train_rows=len(train_rows), best=outcome.best, epochs=outcome.history,
                  task_accuracy=own_task_accuracy(model, tokenizer, holdout, cfg), holdout_rows=len(holdout),
                  sft_examples=sft_counts, adapter=str(adapter_dir), selection=cfg.selection,
                  dev_rows=len(holdout) if cfg.selection == "dev" else 0)
    ctx.write_metrics(result, train_seconds=outcome.train_seconds, eval_seconds=eval_seconds)
    if ctx.is_rank_zero:
        fileio.atomic_write_json(artifacts.path(ctx.run, artifacts.EXPERT_INFO), {"data": cfg.data, "model": ctx.model, "adapter": artifacts.ADAPTER})
    return {"accuracy": result["accuracy"], "steps": outcome.steps}

