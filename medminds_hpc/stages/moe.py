"""Mixture of LoRA experts: a router before every decoder layer mixes the two experts' LoRA deltas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medminds_hpc.training.options import TrainOptions, doc


@dataclass
class Config(TrainOptions):
    router: Literal["linear", "topk", "mlp"] = field(default="linear", metadata=doc("router kind before each decoder layer"))
    top_k: int = field(default=1, metadata=doc("experts per token for the top-k router"))
    capacity_factor: float = field(default=1.25, metadata=doc("top-k router: tokens an expert may take, times the even share"))
    router_noise: float = field(default=1.0, metadata=doc("top-k router: scale of the learned noise"))
    load_balance_coef: float = field(default=0.0, metadata=doc("weight of the load-balancing loss (0: off)"))
    adam_eps: float = field(default=1e-8, metadata=doc("Adam epsilon"))
    max_length: int = 128
    epochs: float = 10.0
