"""Ensembles of the two frozen experts over their last-token outputs, trained from a feature cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medminds_hpc.training.options import TrainOptions, doc


@dataclass
class Config(TrainOptions):
    method: Literal["weighted", "transformer", "late-fusion"] = field(default="weighted", metadata=doc("how the experts' outputs are combined"))
    amp: bool = field(default=True, metadata=doc("mixed precision on CUDA"))
    learning_rate: float = 1e-4
    batch_size: int = 32
    epochs: float = 10.0
    optimizer: Literal["adamw", "adamw_8bit", "adam"] = "adam"
