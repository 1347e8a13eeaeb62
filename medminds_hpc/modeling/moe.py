"""The mixture of the two LoRA experts: a router before every decoder layer of ONE shared base that carries both
experts' adapters by name (`features.load_experts`), and a 4-way head on the last real token.

Expert e's decoder layer l is the base layer l with adapter e's LoRA deltas, through peft's own LoRA layers.
How the router's gates g (routers.py) combine the experts (`spec.mix`):
- "outputs" (the paper's semantics): the layer runs once per expert it needs (those with any weight in the batch;
  every one while gradients flow, see routers.py), each time with its LoRA layers routed to that expert alone,
  and the outputs are summed with the gates:
  `sum_e g_e * layer_e(h)`. With one expert chosen (gate 1) this is exactly expert e's next layer;
- "deltas" (cheaper: one pass): every LoRA-wrapped projection adds `sum_e g_e * dW_e x`; the gate scales each
  adapter's rank-r activation (a pre-hook on its lora_B: `B(g A x) = g B A x`, and r is far narrower than the
  hidden size), and peft's LoRA forward does the rest.
A unit placed with no expert (over capacity, see routers.py) takes the base layer in both modes.
peft's X-LoRA is not offered as a router: it decides every layer's mix from a first pass over the whole model,
a different design from a router reading each layer's own input (the paper's); `deltas` borrows its idea of
scaling each adapter by its gate inside peft's LoRA forward.

    lm, tok = features.load_experts({"task": task_run, "domain": domain_run})
    mixture = install(lm, MoESpec(router="linear", mix="deltas"), seed=0)   # routers before every layer
    model = MoEClassifier(lm, mixture, head_init="letters", letter_ids=prompts.letter_token_ids(tok))
    out = model(input_ids=ids, attention_mask=mask, labels=y)              # {"loss", "logits"}
    with mixture.forced("task"):                                            # base + task adapter, exactly
        ...
    logits, gates = model.with_gates(ids, mask)                            # gates: (B, layers, experts)

Gradient checkpointing: each mixed layer is the checkpointed unit (its router outside it), so the recomputation in
the backward routes the LoRA layers and scales the deltas exactly as the forward did. The mixture needs no KV
cache (it classifies, it does not generate) and refuses one.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from medminds_hpc.errors import UserError
from medminds_hpc.modeling.arch import decoder_layers, decoder_of
from medminds_hpc.modeling.heads import LastTokenClassifier
from medminds_hpc.modeling.lora import NON_REENTRANT
from medminds_hpc.modeling.moe_spec import MoESpec
from medminds_hpc.modeling.routers import Router, Routing, RoutingStats, build_router, stats_width

EXPERTS: tuple[str, ...] = ("task", "domain")


class MixtureState:
    """What the mixed layers of one model share during a forward pass: the batch's real-token mask (taken from the
    decoder's attention_mask by a pre-hook), the forced expert, the layers' balance losses, recorded gates, and the
    routing statistics of the training batches."""

    def __init__(self, num_layers: int, names: Sequence[str]) -> None:
        self.token_mask: torch.Tensor | None = None
        self.forced: int | None = None
        self.balance: list[torch.Tensor] = []
        self.recorded: list[torch.Tensor] | None = None
        self.stats = RoutingStats(num_layers, names)

    def start(self, attention_mask: torch.Tensor | None) -> None:
        self.token_mask = attention_mask
        self.balance = []


class MixedDecoderLayer(nn.Module):
    """Decoder layer `layer` of the shared base (with both experts' LoRA layers inside) behind its router."""

    gradient_checkpointing = False  # set by transformers' activation checkpointing (on every module with the flag)

    def __init__(self, layer: nn.Module, router: Router, index: int, names: Sequence[str], mix: str, state: MixtureState) -> None:
        super().__init__()
        self.layer = layer
        self.router = router
        self.index = index
        self.names = tuple(names)
        self.mix = mix
        self.state = state
        self._gates: torch.Tensor | None = None  # deltas: the gates the lora_B pre-hooks read during the pass
        if mix == "deltas":
            for module in lora_layers(layer):
                for e, name in enumerate(self.names):
                    if name in module.lora_B:
                        module.lora_B[name].register_forward_pre_hook(functools.partial(self._scale_input, e))

    def _scale_input(self, expert: int, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """lora_B of `expert` sees its input times the expert's gate, so the LoRA layer adds g_e * dW_e x."""
        if self._gates is None:
            return None
        x = args[0]
        return (x * self._gates[..., expert:expert + 1].to(x.dtype), *args[1:])

    def route(self, hidden_states: torch.Tensor) -> Routing:
        """The router's decision for this batch (a forced expert: gate 1 for it, nothing learned or counted)."""
        state = self.state
        if state.forced is not None:
            gates = torch.zeros(hidden_states.shape[0], 1, len(self.names), device=hidden_states.device)
            gates[..., state.forced] = 1.0
            zero = gates.new_zeros(())
            return Routing(gates, None, zero, torch.zeros(stats_width(len(self.names)), dtype=torch.float64))
        routing = self.router(hidden_states, state.token_mask)
        if self.training and torch.is_grad_enabled():
            state.stats.add(self.index, routing.stats)
        state.balance.append(routing.balance)
        if state.recorded is not None:
            state.recorded.append(question_means(routing.gates.detach(), state.token_mask))
        return routing

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("cache") is not None or kwargs.get("use_cache"):
            raise ValueError("the mixture of experts keeps no KV cache: call the model with use_cache=False")
        self._adopt_checkpointing()
        routing = self.route(hidden_states)
        run = functools.partial(self._mixed, routing.used(), *args, **kwargs)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(run, hidden_states, routing.gates, routing.unplaced, **NON_REENTRANT)
        return run(hidden_states, routing.gates, routing.unplaced)

    def _adopt_checkpointing(self) -> None:
        """Checkpoint here, around all the passes, never inside the inner layer: its recomputation would run with
        whatever routing the LoRA layers have by the time of the backward."""
        if getattr(self.layer, "gradient_checkpointing", False):
            self.gradient_checkpointing = True
            self.layer.gradient_checkpointing = False

    def _mixed(self, used: list[int], hidden_states: torch.Tensor, gates: torch.Tensor, unplaced: torch.Tensor | None,
               *args: Any, **kwargs: Any) -> torch.Tensor:
        from medminds_hpc import compat

        if self.mix == "deltas":
            compat.route_adapter_layers(self.layer, [self.names[e] for e in used])
            self._gates = gates
            try:
                return self.layer(hidden_states, *args, **kwargs)
            finally:
                self._gates = None
        out: torch.Tensor | None = None
        for e in used:
            compat.route_adapter_layers(self.layer, [self.names[e]])
            y = _hidden_states(self.layer(hidden_states, *args, **kwargs), self.layer)
            term = gates[..., e:e + 1].to(y.dtype) * y
            out = term if out is None else out + term
        if unplaced is not None:
            compat.route_adapter_layers(self.layer, [])
            y = _hidden_states(self.layer(hidden_states, *args, **kwargs), self.layer)
            term = unplaced.unsqueeze(-1).to(y.dtype) * y
            out = term if out is None else out + term
        if out is None:
            raise RuntimeError("no expert and no unit: the router returned no weight at all")
        return out


def _hidden_states(y: Any, layer: nn.Module) -> torch.Tensor:
    """A decoder layer's output as the tensor the gates weigh (transformers 5 layers return exactly that)."""
    if not isinstance(y, torch.Tensor):
        raise UserError(f"decoder layer {type(layer).__name__} returns a {type(y).__name__}, not the hidden-states tensor; "
                        "mix='outputs' sums layer outputs and needs a model whose decoder layers return a tensor "
                        "(Mistral, Llama, Qwen2 under transformers 5); use mix='deltas' for this model")
    return y


def question_means(gates: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, E): each question's gates averaged over its real tokens (its own gates with sequence granularity)."""
    if gates.shape[1] == 1 or token_mask is None:
        return gates.mean(1)
    weights = token_mask.to(gates.device, gates.dtype).unsqueeze(-1)
    return (gates * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def lora_layers(module: nn.Module) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


# the mixture on one PeftModel ------------------------------------------------------------------------------------
class Mixture:
    """The mixed layers installed in a PeftModel, and what to do with them (force, record, take out)."""

    def __init__(self, lm: Any, spec: MoESpec, names: Sequence[str], layers: list[MixedDecoderLayer], state: MixtureState,
                 hook: Any) -> None:
        self.lm = lm
        self.spec = spec
        self.names = tuple(names)
        self.layers = layers
        self.state = state
        self._decoder_hook = hook

    @property
    def stats(self) -> RoutingStats:
        return self.state.stats

    def routers(self) -> list[Router]:
        return [layer.router for layer in self.layers]

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for router in self.routers() for p in router.parameters()]

    def balance_loss(self) -> torch.Tensor | None:
        """The mean load-balancing loss over the layers of the last forward pass (None when none was computed)."""
        return torch.stack(self.state.balance).mean() if self.state.balance else None

    @contextlib.contextmanager
    def forced(self, expert: str | None) -> Iterator[None]:
        """Route every unit of every layer to `expert` with gate 1: the model is then base + that adapter."""
        if expert is not None and expert not in self.names:
            raise UserError(f"no expert named {expert!r}; the mixture has {', '.join(self.names)}")
        previous = self.state.forced
        self.state.forced = None if expert is None else self.names.index(expert)
        try:
            yield
        finally:
            self.state.forced = previous

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """Collect, per layer in order, each question's mean gates (B, E) of the passes made inside."""
        recorded: list[torch.Tensor] = []
        previous, self.state.recorded = self.state.recorded, recorded
        try:
            yield recorded
        finally:
            self.state.recorded = previous

    @contextlib.contextmanager
    def plain_layers(self) -> Iterator[Any]:
        """The PeftModel with its original decoder layers back (e.g. to save the adapters in peft's own layout)."""
        layers = decoder_layers(self.lm)
        for i, mixed in enumerate(self.layers):
            layers[i] = mixed.layer
        try:
            yield self.lm
        finally:
            for i, mixed in enumerate(self.layers):
                layers[i] = mixed


def check_experts(lm: Any, names: Sequence[str]) -> None:
    """Both experts attached as plain LoRA adapters of this PeftModel, adapting decoder layers only."""
    attached = list(getattr(lm, "peft_config", {}))
    missing = [n for n in names if n not in attached]
    if missing:
        raise UserError(f"the mixture needs the adapters {', '.join(names)} on one base; missing {', '.join(missing)} "
                        f"(attached: {', '.join(attached) or 'none'}); load them with features.load_experts")
    from peft.tuners.lora import LoraLayer

    layers = list(decoder_layers(lm))
    inside = {id(m) for layer in layers for m in lora_layers(layer)}
    outside = [name for name, m in lm.named_modules()
               if isinstance(m, LoraLayer) and id(m) not in inside and any(n in m.lora_A for n in names)]
    if outside:
        raise UserError(f"expert adapters adapt modules outside the decoder layers ({', '.join(outside[:3])}); the mixture "
                        f"routes decoder layers only: train the experts with LoRA on the attention and MLP projections")
    for layer in layers:
        for m in lora_layers(layer):
            if any(n in m.lora_variant for n in names) or any(n in m.merged_adapters for n in names):
                raise UserError("the experts' adapters are merged into the base or are a LoRA variant (e.g. DoRA); the "
                                "mixture scales plain LoRA deltas: load unmerged plain LoRA adapters")


def install(lm: Any, spec: MoESpec, *, names: Sequence[str] = EXPERTS, seed: int = 0) -> Mixture:
    """Put a router (fp32, seeded by `seed` + layer index) before every decoder layer of `lm`, a PeftModel carrying
    the adapters `names`; returns the Mixture. The LoRA layers stay peft's: only which adapters act, and with which
    weight, is decided per layer and per pass."""
    spec.check()
    if len(names) != spec.num_experts:
        raise UserError(f"the mixture has {spec.num_experts} experts but {len(names)} adapter names were given: {', '.join(names)}")
    check_experts(lm, names)
    lm.base_model.enable_adapter_layers()
    decoder = decoder_of(lm)
    decoder.config.use_cache = False
    hidden = int(decoder.config.hidden_size)
    layers = decoder_layers(lm)
    state = MixtureState(len(layers), names)
    mixed: list[MixedDecoderLayer] = []
    for i, layer in enumerate(layers):
        device = next(layer.parameters()).device
        router = build_router(spec, hidden, seed + i).to(device)
        mixed.append(MixedDecoderLayer(layer, router, i, names, spec.mix, state))
        layers[i] = mixed[-1]
    hook = decoder.register_forward_pre_hook(_take_mask(state), with_kwargs=True)
    return Mixture(lm, spec, names, mixed, state, hook)


def _take_mask(state: MixtureState) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        state.start(mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None)

    return hook


# the classifier ------------------------------------------------------------------------------------------------------
class MoEClassifier(LastTokenClassifier):
    """The mixture + a 4-way head on the last real token (random or letter-initialised, as the classifier baseline).

    Trainable: the routers and the head; with `train_experts` both adapters' LoRA weights too. The loss is the
    cross-entropy plus `balance_coef` x the layers' mean load-balancing loss."""

    def __init__(self, lm: Any, mixture: Mixture, head_init: str = "random", letter_ids: Sequence[int] | None = None,
                 seed: int = 0, balance_coef: float = 0.0, train_experts: bool = False) -> None:
        super().__init__(lm, head_init, letter_ids, seed)
        self.mixture = mixture  # a plain object: its routers are registered inside lm's decoder layers
        self.balance_coef = balance_coef
        self.train_experts = train_experts
        routers = {id(p) for p in mixture.router_parameters()}
        for name, param in lm.named_parameters():
            expert_lora = "lora_" in name and any(f".{n}." in name for n in mixture.names)
            param.requires_grad = id(param) in routers or (train_experts and expert_lora)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = super().forward(input_ids, attention_mask, labels)
        balance = self.mixture.balance_loss()
        if labels is not None and self.balance_coef > 0 and balance is not None:
            out["loss"] = out["loss"] + self.balance_coef * balance
        return out

    def with_gates(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, 4), gates (B, layers, experts)): the head's logits and each question's gates per layer
        (averaged over its real tokens), from one pass."""
        with self.mixture.recording() as recorded:
            logits = self(input_ids=input_ids, attention_mask=attention_mask)["logits"]
        return logits, torch.stack(recorded, dim=1)
