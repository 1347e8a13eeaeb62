"""Ensemble heads over the two frozen experts' cached last-token states (paper section 6.2).

Each head reads, per question, the task and the domain expert's final hidden state at the answer position
(`features.load(...).states`, float32 rows x hidden) and returns 4 answer logits. The frozen LM head (vocab x
hidden) and the letter ids of " A".." D" are buffers, never parameters, and are not saved in the state dict.

How each expert's 32,000-wide output becomes something a head can combine (`reduce`):
- "learned": a Linear(vocab -> 4) per expert on the LM-head logits, as in the paper;
- "letters": the 4 logits of " A".." D" (the next-word prior; no parameters, and only those 4 LM-head rows are
  computed).

A linear map of the logits is folded into the LM head, `(h @ W.T) @ R.T == h @ (R @ W).T`, so no head ever
materialises batch x vocab logits: the cost is 4 x vocab x hidden per step whatever the batch size.

Methods: "weighted" (two scalar expert weights, then Linear 4->4), "transformer" (one self-attention block over
the two experts as two tokens) and "late-fusion" (one Linear over both full outputs). All return raw logits:
train with `torch.nn.functional.cross_entropy(logits, labels)` on integer labels (the one softmax is in there).

    head = build_head("transformer", "letters", lm_head_weight, prompts.letter_token_ids(tok), seed=0)
    logits = head(feats.states["task"], feats.states["domain"])          # (rows, 4)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medminds_hpc.errors import UserError

METHODS: tuple[str, ...] = ("weighted", "transformer", "late-fusion")
REDUCES: tuple[str, ...] = ("learned", "letters")
NUM_CHOICES = 4
NUM_EXPERTS = 2
D_MODEL = 32
NHEAD = 4


# the frozen LM head --------------------------------------------------------------------------------------------
class FrozenOutputs(nn.Module):
    """The rows of the frozen LM head an expert's output is read from: all of them, or the 4 letter rows.

    `linear(h, weight, bias)` is `Linear(rows -> out)` applied to the logits `h @ rows.T`, computed through the
    folded (out x hidden) matrix so the logits themselves never exist."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__()
        weight = lm_head_weight.detach().float()
        rows = weight if reduce == "learned" else weight[torch.as_tensor(list(letter_ids), dtype=torch.long)]
        self.register_buffer("rows", rows.clone(), persistent=False)

    @property
    def width(self) -> int:
        return int(self.rows.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.rows.shape[1])

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """(B, width): the frozen LM head's logits on these rows (only for the 4 letter rows: no full vocab)."""
        return states @ self.rows.T

    def linear(self, states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, out): `logits(states) @ weight.T + bias` without the (B, width) logits."""
        out = states @ (weight @ self.rows).T
        return out + bias if bias is not None else out

    def linear_pair(self, task: torch.Tensor, domain: torch.Tensor, task_proj: nn.Linear,
                    domain_proj: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """`linear` for both experts through ONE fold of their stacked weights: a step reads the (width x hidden) rows
        once forward and once backward instead of twice each, and at 4 or 8 output rows that read is the cost."""
        folded = torch.cat([task_proj.weight, domain_proj.weight]) @ self.rows
        out = task_proj.weight.shape[0]
        return task @ folded[:out].T + task_proj.bias, domain @ folded[out:].T + domain_proj.bias


class Reduce(nn.Module):
    """One expert's output reduced to 4: a learned Linear(vocab -> 4), or the letter logits as they are."""

    def __init__(self, outputs: FrozenOutputs, reduce: str) -> None:
        super().__init__()
        self.outputs = outputs
        self.proj = nn.Linear(outputs.width, NUM_CHOICES) if reduce == "learned" else None

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return self.outputs.logits(states)
        return self.outputs.linear(states, self.proj.weight, self.proj.bias)


class EnsembleHead(nn.Module):
    """Common to the three heads: input checks and the two experts' frozen outputs."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__()
        self.reduce_kind = reduce
        self.outputs = FrozenOutputs(lm_head_weight, letter_ids, reduce)

    def _inputs(self, task_states: torch.Tensor, domain_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pair = []
        for name, states in (("task", task_states), ("domain", domain_states)):
            if states.dim() != 2 or states.shape[1] != self.outputs.hidden:
                raise UserError(f"{name} expert states have shape {tuple(states.shape)}, the LM head expects "
                                f"(rows, {self.outputs.hidden}); rebuild the feature cache with the experts' model")
            pair.append(states.to(device=self.outputs.rows.device, dtype=self.outputs.rows.dtype))
        if pair[0].shape[0] != pair[1].shape[0]:
            raise UserError(f"task and domain states have {pair[0].shape[0]} and {pair[1].shape[0]} rows; "
                            f"both must come from one feature cache")
        return pair[0], pair[1]


class ReducedPairHead(EnsembleHead):
    """A head that reads each expert's output reduced to 4 (`Reduce`), both reductions computed together."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__(lm_head_weight, letter_ids, reduce)
        self.task_reduce = Reduce(self.outputs, reduce)
        self.domain_reduce = Reduce(self.outputs, reduce)

    def reduced(self, task_states: torch.Tensor, domain_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, 4), (B, 4)): both experts' reduced outputs, after the input checks."""
        task, domain = self._inputs(task_states, domain_states)
        task_proj, domain_proj = self.task_reduce.proj, self.domain_reduce.proj
        if task_proj is None or domain_proj is None:
            return self.task_reduce(task), self.domain_reduce(domain)
        return self.outputs.linear_pair(task, domain, task_proj, domain_proj)


# the three heads ---------------------------------------------------------------------------------------------
class WeightedHead(ReducedPairHead):
    """A learned weighted sum of the two reduced 4-vectors (init 0.5, 0.5), then Linear 4->4 (init identity).

    Two global weights cannot pick the right expert per question; this is the paper's simplest ensemble."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__(lm_head_weight, letter_ids, reduce)
        self.expert_weights = nn.Parameter(torch.full((NUM_EXPERTS,), 0.5))
        self.mix = nn.Linear(NUM_CHOICES, NUM_CHOICES)
        with torch.no_grad():
            self.mix.weight.copy_(torch.eye(NUM_CHOICES))
            self.mix.bias.zero_()

    def set_expert_weights(self, task: float, domain: float) -> None:
        """Force the two expert weights, e.g. (1, 0) to make the head one expert's prediction."""
        with torch.no_grad():
            self.expert_weights.copy_(torch.tensor([task, domain], dtype=self.expert_weights.dtype))

    def forward(self, task_states: torch.Tensor, domain_states: torch.Tensor) -> torch.Tensor:
        task, domain = self.reduced(task_states, domain_states)
        w = self.expert_weights
        return self.mix(w[0] * task + w[1] * domain)


class TransformerHead(ReducedPairHead):
    """One unmasked self-attention block over the two experts' reduced outputs as TWO tokens of width 4.

    Two tokens rather than one 8-wide vector (the paper's wording allows either): attention between the tokens
    lets the block compare the experts and weigh each per question, which a single token cannot do (attention
    over one position has nothing to weigh). Each token is projected to D_MODEL and gets a learned expert embedding,
    so the block knows which expert it reads; the two outputs are mean-pooled and mapped to 4 logits."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__(lm_head_weight, letter_ids, reduce)
        self.embed = nn.Linear(NUM_CHOICES, D_MODEL)
        self.expert_embedding = nn.Parameter(torch.randn(NUM_EXPERTS, D_MODEL) * 0.02)
        self.block = nn.TransformerEncoderLayer(D_MODEL, NHEAD, dim_feedforward=2 * D_MODEL, dropout=0.0,
                                                batch_first=True)
        self.out = nn.Linear(D_MODEL, NUM_CHOICES)
        # The key bias adds one constant to every score of a query, which softmax ignores: its true gradient is 0.
        # Adam would still move it by lr per step on rounding noise alone; keep it at its zero init instead.
        self.block.self_attn.in_proj_bias.register_hook(_zero_key_slice)

    def forward(self, task_states: torch.Tensor, domain_states: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack(self.reduced(task_states, domain_states), dim=1)  # (B, 2, 4)
        x = self.embed(tokens) + self.expert_embedding
        return self.out(self.block(x).mean(dim=1))


def _zero_key_slice(grad: torch.Tensor) -> torch.Tensor:
    """The gradient of a packed q/k/v bias with its key part zeroed."""
    grad = grad.clone()
    grad[D_MODEL:2 * D_MODEL] = 0
    return grad


class LateFusionHead(EnsembleHead):
    """One Linear over both experts' outputs concatenated: 2 x vocab -> 4 (learned), or 4 + 4 letters -> 4.

    With reduce="learned" this is 2 * vocab * 4 weights (256,000 for Mistral's 32,000 tokens) + 4 biases,
    applied to each expert through the folded LM head, never to a (B, 2 * vocab) concatenation."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__(lm_head_weight, letter_ids, reduce)
        self.fuse = nn.Linear(NUM_EXPERTS * self.outputs.width, NUM_CHOICES)

    def forward(self, task_states: torch.Tensor, domain_states: torch.Tensor) -> torch.Tensor:
        task, domain = self._inputs(task_states, domain_states)
        # one (8 x width) @ (width x hidden) product folds both experts' halves: the LM head is read once
        halves = torch.cat(self.fuse.weight.split(self.outputs.width, dim=1))
        folded = halves @ self.outputs.rows
        return task @ folded[:NUM_CHOICES].T + domain @ folded[NUM_CHOICES:].T + self.fuse.bias


HEADS: dict[str, type[EnsembleHead]] = {"weighted": WeightedHead, "transformer": TransformerHead,
                                        "late-fusion": LateFusionHead}


# what the Trainer trains ---------------------------------------------------------------------------------------
def _output(logits: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    if labels is None:
        return {"logits": logits}
    # cross-entropy on raw logits against integer class ids: the one and only softmax is in here
    return {"loss": nn.functional.cross_entropy(logits.float(), labels.to(logits.device).long()), "logits": logits}


class CachedEnsemble(nn.Module):
    """A head over cached states (`features.load`): batches of task_states, domain_states and labels."""

    def __init__(self, head: EnsembleHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, task_states: torch.Tensor, domain_states: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return _output(self.head(task_states, domain_states), labels)


class LiveEnsemble(nn.Module):
    """A head over both experts computed at every step: one pass per adapter through the one shared base.

    `lm` is the PeftModel of `features.load_experts` (adapters "task" and "domain"). With `train_experts` both
    adapters' LoRA weights train with the head (each pass routes the LoRA layers to one adapter without freezing
    the other); without it the experts run under no_grad, which computes exactly what the feature cache holds."""

    def __init__(self, lm: nn.Module, head: EnsembleHead, train_experts: bool, names: Sequence[str] = ("task", "domain")) -> None:
        super().__init__()
        self.lm = lm
        self.head = head
        self.names = tuple(names)
        self.train_experts = train_experts
        self.config = getattr(lm, "config", None)  # what the Trainer and loggers look up
        lm.base_model.enable_adapter_layers()
        for name, param in lm.named_parameters():
            param.requires_grad = train_experts and "lora_" in name and any(f".{n}." in name for n in self.names)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **_: object) -> None:
        """How the Trainer turns gradient checkpointing on: in the LM inside (it matters only with train_experts)."""
        from medminds_hpc.modeling.lora import enable_gradient_checkpointing

        enable_gradient_checkpointing(self.lm, activation_checkpointing_kwargs)

    gradient_checkpointing_enable = activation_checkpointing_enable  # the name transformers < 5 calls

    def expert_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Each expert's final hidden state at the last real token, in `names` order."""
        from medminds_hpc import compat
        from medminds_hpc.modeling.features import last_token_states
        from medminds_hpc.modeling.heads import last_real_index

        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "last_index": last_real_index(attention_mask)}
        out = []
        for name in self.names:
            compat.route_adapter_layers(self.lm, name)
            with torch.set_grad_enabled(self.train_experts and torch.is_grad_enabled()):
                out.append(last_token_states(self.lm, batch).float())
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        task, domain = self.expert_states(input_ids, attention_mask)
        return _output(self.head(task, domain), labels)


# the factory -------------------------------------------------------------------------------------------------
def check_head_inputs(method: str, reduce: str, lm_head_weight: torch.Tensor, letter_ids: Sequence[int]) -> None:
    """Every problem with the factory's arguments, as one UserError naming the argument and its valid values."""
    problems: list[str] = []
    if method not in HEADS:
        problems.append(f"method={method!r}; valid: {', '.join(METHODS)}")
    if reduce not in REDUCES:
        problems.append(f"reduce={reduce!r}; valid: learned (a Linear vocab->4 per expert) or letters (the LM-head rows of ' A'..' D')")
    if not isinstance(lm_head_weight, torch.Tensor) or lm_head_weight.dim() != 2 or not lm_head_weight.is_floating_point():
        shape = tuple(lm_head_weight.shape) if isinstance(lm_head_weight, torch.Tensor) else type(lm_head_weight).__name__
        problems.append(f"lm_head_weight is {shape}; pass the unquantized LM head's float weight (vocab x hidden)")
    else:
        vocab = lm_head_weight.shape[0]
        ids = list(letter_ids)
        if len(ids) != NUM_CHOICES or len(set(ids)) != NUM_CHOICES or not all(0 <= int(i) < vocab for i in ids):
            problems.append(f"letter_ids={ids}; expected {NUM_CHOICES} distinct token ids below the vocab size {vocab} "
                            f"(prompts.letter_token_ids(tokenizer))")
    if problems:
        raise UserError("ensemble head: " + "; ".join(problems))


def build_head(method: str, reduce: str, lm_head_weight: torch.Tensor, letter_ids: Sequence[int],
               seed: int = 0) -> EnsembleHead:
    """The ensemble head `method` over outputs reduced by `reduce`, initialised from `seed` (the global RNG is
    left as it was, so building a head never shifts a training run's data order)."""
    check_head_inputs(method, reduce, lm_head_weight, letter_ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = HEADS[method](lm_head_weight, letter_ids, reduce)
    return head.to(lm_head_weight.device)
