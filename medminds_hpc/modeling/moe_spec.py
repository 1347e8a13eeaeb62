"""What a mixture of LoRA experts is configured as, checked without torch (the stage's Config checks it at submit).

    spec = MoESpec(router="topk", top_k=1, capacity_factor=1.25, mix="deltas", granularity="sequence")
    spec.check()                       # a UserError naming every bad field and its valid values

The meaning of each field is in `modeling/routers.py` (routers, gates, capacity) and `modeling/moe.py` (mixing).
"""

from __future__ import annotations

from dataclasses import dataclass

from medminds_hpc.errors import UserError

ROUTERS: tuple[str, ...] = ("linear", "topk", "mlp")
MIXES: tuple[str, ...] = ("outputs", "deltas")
GRANULARITIES: tuple[str, ...] = ("token", "sequence")
NUM_EXPERTS = 2


@dataclass(frozen=True)
class MoESpec:
    router: str = "linear"
    mix: str = "outputs"
    granularity: str = "sequence"
    hard: bool = False
    top_k: int = 1
    capacity_factor: float = 1.25
    noise: float = 1.0
    router_hidden: int = 128
    num_experts: int = NUM_EXPERTS

    @property
    def selective(self) -> bool:
        """Whether units go to chosen experts only (hard linear/mlp, top-k), rather than to a soft mix of all."""
        return self.router == "topk" or self.hard

    @property
    def k(self) -> int:
        """Experts chosen per unit when selective: top_k for the top-k router, 1 for a hard linear or mlp router."""
        return self.top_k if self.router == "topk" else 1

    def problems(self) -> list[str]:
        """Every field outside its valid values, each naming the field, the value and what is valid."""
        out = []
        if self.router not in ROUTERS:
            out.append(f"router: unknown router {self.router!r}; valid: {', '.join(ROUTERS)}")
        if self.mix not in MIXES:
            out.append(f"mix: unknown mix mode {self.mix!r}; valid: outputs (the experts' layer outputs), "
                       f"deltas (their LoRA deltas in one base pass)")
        if self.granularity not in GRANULARITIES:
            out.append(f"granularity: {self.granularity!r}; valid: {', '.join(GRANULARITIES)}")
        if not 1 <= self.top_k <= self.num_experts:
            out.append(f"top_k: expected 1 to {self.num_experts} (the number of experts), got {self.top_k}")
        if not self.capacity_factor > 0:
            out.append(f"capacity_factor: expected a number above 0 (1.0: an even share per expert), got {self.capacity_factor}")
        if not self.noise >= 0:
            out.append(f"router_noise: expected 0 (no noise) or more, got {self.noise}")
        if self.router_hidden < 1:
            out.append(f"router_hidden: expected at least 1, got {self.router_hidden}")
        return out

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise UserError("mixture of experts: " + "; ".join(problems))
