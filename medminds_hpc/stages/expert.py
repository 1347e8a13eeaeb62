"""LoRA SFT of one expert on the shared base: the task expert (ARC) or the domain expert (medical instruct)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medminds_hpc.training.options import TrainOptions, doc


@dataclass
class Config(TrainOptions):
    data: Literal["arc", "medical-instruct"] = field(default="arc", metadata=doc("training data of this expert"))
    lora_r: int = field(default=16, metadata=doc("LoRA rank"))
    lora_alpha: int = field(default=16, metadata=doc("LoRA alpha"))
    lora_dropout: float = field(default=0.0, metadata=doc("LoRA dropout"))
    loss_on: Literal["answer", "all"] = field(default="answer", metadata=doc("tokens that carry loss; 'all' teaches the prompt too"))
    epochs: float = 3.0
    optimizer: Literal["adamw", "adamw_8bit", "adam"] = "adamw_8bit"
