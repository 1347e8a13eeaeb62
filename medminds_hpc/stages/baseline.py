"""MedMCQA baselines: next-word letter scoring, and a 4-way classifier head with LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medminds_hpc.training.options import TrainOptions, doc


@dataclass
class NextWordConfig:
    adapter: Literal["none", "task", "domain"] = field(default="none", metadata=doc("expert adapter applied to the base"))
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc("prompt template"))
    eval_batch_size: int = field(default=32, metadata=doc("questions per forward pass"))
    max_length: int = field(default=512, metadata=doc("prompt tokens kept (left-truncated)"))


@dataclass
class ClassifierConfig(TrainOptions):
    adapter: Literal["none", "task", "domain"] = field(default="none", metadata=doc("expert adapter under the head"))
    head_init: Literal["random", "letters"] = field(default="random", metadata=doc("random (paper) or the LM-head rows of ' A'..' D'"))
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc("prompt template"))
    lora_r: int = field(default=16, metadata=doc("LoRA rank"))
    lora_alpha: int = field(default=8, metadata=doc("LoRA alpha"))
    lora_dropout: float = field(default=0.05, metadata=doc("LoRA dropout"))
    learning_rate: float = 1e-4
    batch_size: int = 32
