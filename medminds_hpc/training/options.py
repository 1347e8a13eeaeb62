"""Training fields every trainable stage shares (a stage's Config inherits them), each with its domain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from medminds_hpc.config import Relation, doc  # noqa: F401  (doc: what stages declare their fields with)
from medminds_hpc.data.prompts import TEMPLATE_TOKENS

# a scored or trained prompt keeps at least its template (the paper's, around a one-letter question, is 72 tokens)
PROMPT_FITS = Relation(("max_length", "prompt"), lambda c: c.max_length > TEMPLATE_TOKENS[c.prompt],
                       "max_length must exceed the prompt template's own tokens (paper: "
                       f"{TEMPLATE_TOKENS['paper']}, harness: {TEMPLATE_TOKENS['harness']}) to leave room for a question")


@dataclass
class TrainOptions:
    learning_rate: float = field(default=2e-4, metadata=doc("peak learning rate", gt=0))
    weight_decay: float = field(default=0.01, metadata=doc("AdamW weight decay", ge=0))
    warmup_steps: int = field(default=5, metadata=doc("linear warm-up steps", ge=0))
    lr_scheduler: Literal["linear", "cosine", "constant"] = field(default="linear", metadata=doc("schedule after warm-up"))
    optimizer: Literal["adamw", "adamw_8bit", "adam"] = field(default="adamw", metadata=doc("adamw_8bit needs CUDA + bitsandbytes; falls back to adamw on CPU"))
    batch_size: int = field(default=16, metadata=doc("examples per optimizer step (after accumulation)", ge=1))
    grad_accum: int = field(default=1, metadata=doc("micro-batches per optimizer step", ge=1))
    max_grad_norm: float = field(default=1.0, metadata=doc("clip the gradients' global norm to this before each step (0: no clipping)", ge=0))
    max_length: int = field(default=256, metadata=doc("tokens per example: a training example keeps its whole prompt and loses the end of its answer; a scored prompt loses its start", ge=2, le=131072))
    epochs: float = field(default=1.0, metadata=doc("passes over the training split", gt=0, le=10000))
    max_steps: int = field(default=0, metadata=doc("stop after this many optimizer steps (0: no limit)", ge=0))
    seed: int = field(default=3407, metadata=doc("seed for init, shuffling and dropout", ge=0, le=2**32 - 1))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata=doc("auto: bf16 on Ampere+, fp16 on older CUDA, fp32 on CPU"))
    gradient_checkpointing: Literal["auto"] | bool = field(default="auto", metadata=doc(
        "recompute each layer in the backward instead of keeping its activations: ~25% slower, a fraction of the "
        "memory; auto: on when training on CUDA, off on CPU; false: off (submit refuses a run that no longer fits)"))
    checkpoint_every_steps: int = field(default=200, metadata=doc("save trainable state every N steps ...", ge=1))
    checkpoint_every_minutes: float = field(default=20.0, metadata=doc("... or every M minutes, whichever comes first", gt=0))
    keep_checkpoints: int = field(default=2, metadata=doc("checkpoints kept on disk (newest first)", ge=1, le=1000))
    eval_batch_size: int = field(default=32, metadata=doc("batch size for evaluation", ge=1))
    max_train_rows: int = field(default=0, metadata=doc("train on at most this many training rows (0: all; the dev split comes out first)", ge=0))
    report_to: Literal["none", "tensorboard", "wandb"] = field(default="none", metadata=doc("also log to TensorBoard or W&B"))
    selection: Literal["dev", "validation"] = field(default="dev", metadata=doc(
        "what judges each epoch (and so the best one): dev, a seeded development split carved from the training "
        "rows, with the MedMCQA validation set scored once at the end; validation, the validation set itself every "
        "epoch (the paper's protocol: its best epoch is optimistic, and `medminds report` marks such rows)"))
    dev_rows: int = field(default=0, metadata=doc(
        "selection=dev: training rows held out as the development split, by answer letter (0: 10%, at most 2,000; "
        "an expert judges epochs on its holdout_rows instead)", ge=0))

    RELATIONS: ClassVar[tuple[Relation, ...]] = (
        Relation(("batch_size", "grad_accum"), lambda c: c.batch_size % c.grad_accum == 0,
                 "batch_size must be a multiple of grad_accum (each optimizer step is grad_accum equal micro-batches)"),
        Relation(("max_train_rows", "batch_size"), lambda c: c.max_train_rows == 0 or c.max_train_rows >= c.batch_size,
                 "max_train_rows must be 0 (all) or at least one batch"),
    )
