"""The routers of a mixture of LoRA experts: one before each decoder layer, in fp32, reading that layer's input
hidden states and saying how much of each expert every token (or every question) gets.

    router = build_router(spec, hidden_size=4096, seed=0)         # spec: moe_spec.MoESpec
    routing = router(hidden_states, token_mask)                   # Routing: gates (B, T or 1, E), ...

Kinds (`spec.router`); each reads the RMS-normalised states (the residual stream's scale grows with depth, and one
learning rate should fit every layer's router):
- "linear": softmax over the experts of one Linear(hidden -> experts);
- "mlp": the same through a hidden layer (Linear -> GELU -> Linear, `router_hidden` wide);
- "topk": noisy top-k gating (Shazeer et al., 2017): the logits of one Linear plus standard-normal noise, in
  training only, scaled by a learned softplus(Linear) (times `noise`); the `top_k` most probable experts are kept.

Gate values. A soft router (hard=false) mixes every expert with its softmax probability p_e. A selective one
(hard linear or mlp: the top-1 expert; topk: the top k) gives the kept experts their renormalised probabilities
(one expert: exactly 1, i.e. exactly that expert's layer, as the paper's softmax over the single kept logit) and
the others 0 -- in the forward. Its backward is the soft mix's (a straight-through estimator: gate = value +
p - stop_gradient(p)), so the router compares the experts at every step. The original code's softmax -> argmax ->
index gave the router no gradient at all; multiplying the chosen expert's output by its gate value gives it one,
but only about the chosen expert against none: measured on the two-kind task, it left the first layer's router
sending every question to one expert (86% on the mix), where the straight-through router reaches 100%. The price
is in training only: every expert is computed while gradients flow (evaluation computes the chosen ones only).

Capacity (topk, in training): an expert takes at most ceil(top_k x units / experts x capacity_factor) units of a
batch (units: real tokens, or questions with sequence granularity). Over capacity, the units earliest in the batch
keep their place (row by row, token by token, as in Switch Transformer); each unit that loses its place goes to
its next choice if that expert still has room, else to no expert: it passes through the base layer (no LoRA
delta), and is counted as unplaced. Not the most probable units first: that lets the ranking do the routing in
training, the router never has to cross 0.5, and at evaluation it routes wrongly (measured on the two-kind task:
80% instead of 100%). At evaluation there is neither noise nor capacity, so a question's prediction never depends
on the rest of its batch.

Granularity: "token" routes each token on its own state; "sequence" makes one decision per question from the mean
of its real tokens' states (padding never counts) and applies it to all its tokens.

Load balancing (Switch Transformer): `Routing.balance` = experts x sum_e f_e P_e, f_e the share of units whose
first choice is e, P_e their mean probability for e; 1 when balanced. Statistics (`RoutingStats`): per layer, the
units sent to each expert, their mean probabilities, the gate entropy and the overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from medminds_hpc.modeling.moe_spec import MoESpec

RMS_EPS = 1e-6

# what one routing decision adds to the statistics, per layer: STAT_FIELDS then E "sent", then E "probability"
STAT_FIELDS: tuple[str, ...] = ("units", "entropy", "rerouted", "unplaced")


def stats_width(num_experts: int) -> int:
    return len(STAT_FIELDS) + 2 * num_experts


@dataclass
class Routing:
    """One router's decision for one batch.

    gates: (B, T, E), or (B, 1, E) with sequence granularity, float32 and differentiable;
    unplaced: (B, T or 1) bool, the real units placed with no expert (they take the base layer), or None when
      every unit has one;
    balance: the load-balancing loss of this layer (a differentiable scalar);
    stats: (stats_width(E),) float64, detached: what this batch adds to the routing statistics."""

    gates: torch.Tensor
    unplaced: torch.Tensor | None
    balance: torch.Tensor
    stats: torch.Tensor

    def used(self) -> list[int]:
        """The experts to compute: those with any weight in this batch, and every one while a gradient must reach
        the gates (a selective router's backward is the soft mix's, which needs every expert's output)."""
        experts = range(self.gates.shape[-1])
        if self.gates.requires_grad:
            return list(experts)
        return [e for e in experts if bool((self.gates[..., e] != 0).any())]


# the routers -------------------------------------------------------------------------------------------------
class Router(nn.Module):
    """Common to every kind: fp32 input, granularity, selection, capacity, gates, balance and statistics.
    A kind only says how the normalised states become logits (`logits`)."""

    def __init__(self, spec: MoESpec, hidden_size: int) -> None:
        super().__init__()
        self.spec = spec
        self.hidden_size = hidden_size

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # (N, hidden) -> (N, E)
        raise NotImplementedError

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None) -> Routing:
        """hidden_states (B, T, hidden) of the layer's input; token_mask (B, T), 1 at real tokens (None: all real)."""
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            return self._route(hidden_states.float(), token_mask)

    def _route(self, h: torch.Tensor, token_mask: torch.Tensor | None) -> Routing:
        batch, length, _ = h.shape
        real = torch.ones(batch, length, dtype=torch.bool, device=h.device) if token_mask is None else token_mask.to(h.device).bool()
        if self.spec.granularity == "sequence":
            weights = real.unsqueeze(-1).float()
            h = (h * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1.0)
            real = real.any(1, keepdim=True)
        units = h.shape[1]
        x = h.reshape(-1, h.shape[-1])
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        probs = torch.softmax(self.logits(x), dim=-1)  # (N, E)
        flat_real = real.reshape(-1)
        placed, rerouted = self.select(probs.detach(), flat_real)
        if placed is None:
            gates = probs
            unplaced = None
        else:  # straight-through: the kept experts' renormalised weights forward, the soft mix's gradient backward
            kept = probs.detach() * placed
            gates = kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny) + (probs - probs.detach())
            lost = flat_real & ~placed.any(-1)
            unplaced = lost.reshape(batch, units) if bool(lost.any()) else None
        E = probs.shape[-1]
        stats = self._stats(probs.detach(), placed, rerouted, flat_real)
        return Routing(gates.reshape(batch, units, E), unplaced, balance_loss(probs, flat_real), stats)

    def select(self, probs: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(placed (N, E) bool, or None for a soft mix; rerouted (N,) bool: units that went to their next choice)."""
        none = torch.zeros_like(real)
        if not self.spec.selective:
            return None, none
        capacity = None
        if self.spec.router == "topk" and self.training:
            capacity = expert_capacity(int(real.sum()), self.spec.k, probs.shape[-1], self.spec.capacity_factor)
        return assign(probs, real, self.spec.k, capacity)

    def _stats(self, probs: torch.Tensor, placed: torch.Tensor | None, rerouted: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        E = probs.shape[-1]
        r = real.unsqueeze(-1).to(torch.float64)
        p = probs.to(torch.float64)
        sent = placed.to(torch.float64) if placed is not None else nn.functional.one_hot(p.argmax(-1), E).to(torch.float64)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
        head = torch.stack([r.sum(), (entropy * r[:, 0]).sum(), (rerouted & real).sum().to(torch.float64),
                            (real & ~sent.bool().any(-1)).sum().to(torch.float64)])
        return torch.cat([head, (sent * r).sum(0), (p * r).sum(0)])


def _linear(in_features: int, out_features: int, generator: torch.Generator, bias: bool = True) -> nn.Linear:
    """nn.Linear's default uniform init, drawn from `generator` (the global RNG is left as it was)."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    bound = 1.0 / math.sqrt(in_features)
    with torch.no_grad():
        layer.weight.copy_(torch.empty(out_features, in_features).uniform_(-bound, bound, generator=generator))
        if bias:
            layer.bias.zero_()
    return layer


class LinearRouter(Router):
    def __init__(self, spec: MoESpec, hidden_size: int, generator: torch.Generator) -> None:
        super().__init__(spec, hidden_size)
        self.proj = _linear(hidden_size, spec.num_experts, generator)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLPRouter(Router):
    def __init__(self, spec: MoESpec, hidden_size: int, generator: torch.Generator) -> None:
        super().__init__(spec, hidden_size)
        self.hidden = _linear(hidden_size, spec.router_hidden, generator)
        self.proj = _linear(spec.router_hidden, spec.num_experts, generator)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.gelu(self.hidden(x)))


class NoisyTopKRouter(Router):
    """Shazeer et al.'s noisy top-k gating; the noise's scale is learned, its sample is drawn in training only (from
    the global RNG, which the training engine's checkpoints restore, so a resumed run draws the same noise)."""

    def __init__(self, spec: MoESpec, hidden_size: int, generator: torch.Generator) -> None:
        super().__init__(spec, hidden_size)
        self.proj = _linear(hidden_size, spec.num_experts, generator)
        self.noise = nn.Linear(hidden_size, spec.num_experts)
        with torch.no_grad():  # as in the paper: no learned signal in the noise at the start, softplus(0) = 0.69
            self.noise.weight.zero_()
            self.noise.bias.zero_()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        clean = self.proj(x)
        if not self.training or self.spec.noise == 0:
            return clean
        return clean + torch.randn_like(clean) * nn.functional.softplus(self.noise(x)) * self.spec.noise


KINDS: dict[str, type[Router]] = {"linear": LinearRouter, "mlp": MLPRouter, "topk": NoisyTopKRouter}


def build_router(spec: MoESpec, hidden_size: int, seed: int) -> Router:
    """A router of kind `spec.router`, in fp32, initialised from `seed` alone."""
    spec.check()
    return KINDS[spec.router](spec, hidden_size, torch.Generator().manual_seed(seed)).float()


# selection under capacity ------------------------------------------------------------------------------------
def expert_capacity(units: int, k: int, num_experts: int, capacity_factor: float) -> int:
    """Units one expert may take from a batch: k x units / experts x capacity_factor, rounded up."""
    return math.ceil(k * units / num_experts * capacity_factor)


def _within(want: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """Of the units that `want` (N, E) each expert, the first `room[e]` in batch order."""
    return want & (want.long().cumsum(0) <= room.unsqueeze(0))


def assign(probs: torch.Tensor, real: torch.Tensor, k: int, capacity: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(placed (N, E) bool, rerouted (N,) bool): each unit's top-k experts, within `capacity` per expert (None: no
    limit), earlier units in the batch first. Units that lose a place go to their next choice while it has room
    (only when k < E); padding units (`real` False) take their top-k without counting."""
    n, experts = probs.shape
    order = torch.argsort(probs, dim=-1, descending=True, stable=True)
    top = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order[:, :k], True)
    rerouted = torch.zeros(n, dtype=torch.bool, device=probs.device)
    if capacity is None:
        return top, rerouted
    placed = torch.zeros_like(top)
    load = torch.zeros(experts, dtype=torch.long, device=probs.device)
    for choice in range(k):
        want = torch.zeros_like(top).scatter_(1, order[:, choice:choice + 1], True) & real.unsqueeze(-1)
        keep = _within(want, capacity - load)
        placed |= keep
        load += keep.sum(0)
    if k < experts:
        short = real & (placed.sum(-1) < k)
        want = torch.zeros_like(top).scatter_(1, order[:, k:k + 1], True) & short.unsqueeze(-1)
        keep = _within(want, capacity - load)
        placed |= keep
        rerouted = keep.any(-1)
    return torch.where(real.unsqueeze(-1), placed, top), rerouted


def balance_loss(probs: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's load-balancing loss over the real units: E x sum_e f_e P_e (1 when balanced)."""
    experts = probs.shape[-1]
    weight = real.to(probs.dtype).unsqueeze(-1)
    count = weight.sum().clamp_min(1.0)
    first = nn.functional.one_hot(probs.argmax(-1), experts).to(probs.dtype)
    return experts * ((first * weight).sum(0) / count * (probs * weight).sum(0) / count).sum()


# statistics --------------------------------------------------------------------------------------------------
class RoutingStats:
    """Routing statistics summed per layer (float64) over the training batches of an epoch, and their summary.

    Plain numbers: `state()` is a JSON list and `load(state)` restores it exactly, so a run resumed from a
    checkpoint continues the sums where they stood and ends with the same statistics as one never stopped."""

    def __init__(self, num_layers: int, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.totals = torch.zeros(num_layers, stats_width(len(self.names)), dtype=torch.float64)

    def add(self, layer: int, stats: torch.Tensor) -> None:
        self.totals[layer] += stats.detach().to(self.totals.device, torch.float64)

    def reset(self) -> None:
        self.totals.zero_()

    @property
    def empty(self) -> bool:
        return not bool(self.totals[:, 0].any())

    def state(self) -> list[list[float]]:
        return self.totals.tolist()

    def load(self, state: Sequence[Sequence[float]]) -> None:
        values = torch.tensor(state, dtype=torch.float64)
        if values.shape != self.totals.shape:
            raise ValueError(f"routing statistics of shape {tuple(values.shape)} do not fit {tuple(self.totals.shape)}")
        self.totals.copy_(values)

    def summary(self) -> list[dict[str, Any]]:
        """Per layer: units routed, the share sent to each expert, their mean probability, the mean gate entropy
        (nats; ln 2 = undecided between two experts), and the shares rerouted and unplaced by capacity."""
        return [summarize(i, row, self.names) for i, row in enumerate(self.totals.tolist())]


def summarize(layer: int, row: Sequence[float], names: Sequence[str]) -> dict[str, Any]:
    """One layer's statistics row as a readable record (shares of the units routed)."""
    base = dict(zip(STAT_FIELDS, row[:len(STAT_FIELDS)]))
    sent = row[len(STAT_FIELDS):len(STAT_FIELDS) + len(names)]
    prob = row[len(STAT_FIELDS) + len(names):]
    units = base["units"]

    def share(x: float) -> float | None:
        return round(x / units, 6) if units else None

    return {"layer": layer, "units": int(units), "share": {n: share(s) for n, s in zip(names, sent)},
            "probability": {n: share(p) for n, p in zip(names, prob)}, "entropy": share(base["entropy"]),
            "rerouted": share(base["rerouted"]), "unplaced": share(base["unplaced"])}
