"""Training fields every trainable stage shares (a stage's Config inherits them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def doc(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainOptions:
    learning_rate: float = field(default=2e-4, metadata=doc("peak learning rate"))
    weight_decay: float = field(default=0.01, metadata=doc("AdamW weight decay"))
    warmup_steps: int = field(default=5, metadata=doc("linear warm-up steps"))
    lr_scheduler: Literal["linear", "cosine", "constant"] = field(default="linear", metadata=doc("schedule after warm-up"))
    optimizer: Literal["adamw", "adamw_8bit", "adam"] = field(default="adamw", metadata=doc("adamw_8bit needs CUDA + bitsandbytes; falls back to adamw on CPU"))
    batch_size: int = field(default=16, metadata=doc("examples per optimizer step (after accumulation)"))
    grad_accum: int = field(default=1, metadata=doc("micro-batches per optimizer step"))
    max_grad_norm: float = field(default=1.0, metadata=doc("clip the gradients' global norm to this before each step (0: no clipping)"))
    max_length: int = field(default=256, metadata=doc("tokens per example: a training example keeps its whole prompt and loses the end of its answer; a scored prompt loses its start"))
    epochs: float = field(default=1.0, metadata=doc("passes over the training split"))
    max_steps: int = field(default=0, metadata=doc("stop after this many optimizer steps (0: no limit)"))
    seed: int = field(default=3407, metadata=doc("seed for init, shuffling and dropout"))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata=doc("auto: bf16 on Ampere+, fp16 on older CUDA, fp32 on CPU"))
    gradient_checkpointing: Literal["auto"] | bool = field(default="auto", metadata=doc(
        "recompute each layer in the backward instead of keeping its activations: ~25% slower, a fraction of the "
        "memory; auto: on when training on CUDA, off on CPU; false: off (submit refuses a run that no longer fits)"))
    checkpoint_every_steps: int = field(default=200, metadata=doc("save trainable state every N steps ..."))
    checkpoint_every_minutes: float = field(default=20.0, metadata=doc("... or every M minutes, whichever comes first"))
    keep_checkpoints: int = field(default=2, metadata=doc("checkpoints kept on disk (newest first)"))
    eval_batch_size: int = field(default=32, metadata=doc("batch size for evaluation"))
    max_train_rows: int = field(default=0, metadata=doc("train on at most this many training rows (0: all; the dev split comes out first)"))
    report_to: Literal["none", "tensorboard", "wandb"] = field(default="none", metadata=doc("also log to TensorBoard or W&B"))
    selection: Literal["dev", "validation"] = field(default="dev", metadata=doc(
        "what judges each epoch (and so the best one): dev, a seeded development split carved from the training "
        "rows, with the MedMCQA validation set scored once at the end; validation, the validation set itself every "
        "epoch (the paper's protocol: its best epoch is optimistic, and `medminds report` marks such rows)"))
    dev_rows: int = field(default=0, metadata=doc(
        "selection=dev: training rows held out as the development split, by answer letter (0: 10%, at most 2,000; "
        "an expert judges epochs on its holdout_rows instead)"))

    def option_problems(self) -> list[str]:
        """What is wrong with the shared training fields (a stage's own __post_init__ adds these to its own)."""
        problems = [f"dev_rows: expected 0 (automatic) or more, got {self.dev_rows}"] if self.dev_rows < 0 else []
        if not self.max_grad_norm >= 0:
            problems.append(f"max_grad_norm: expected 0 (no clipping) or a positive norm, got {self.max_grad_norm}")
        return problems

    def __post_init__(self) -> None:
        problems = self.option_problems()
        if problems:
            raise ValueError("; ".join(problems))
