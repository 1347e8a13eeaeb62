"""Ensemble heads over the two frozen experts' cached last-token states (paper section 6.2).

Each head reads, per question, the task and the domain expert's final hidden state at the answer position
(`features.load(...).states`, float32 rows x hidden) and returns 4 answer logits. The frozen LM head (vocab x
hidden) and the letter ids of " A".." D" are buffers, never parameters, and are not saved in the state dict.

How each expert's 32,000-wide output becomes something a head can combine (`reduce`):
- "learned": a Linear(vocab -> 4) per expert on the LM-head logits, as in the paper;
- "letters": the 4 logits of " A".." D" (the next-word prior; no parameters, and only those 4 LM-head rows are
  computed).

A linear map of the logits is folded into the LM head, `(h @ W.T) @ R.T == h @ (R @ W).T`, so no head ever
materialises batch x vocab logits: the cost is 8 x vocab x hidden per step (both experts) whatever the batch size.

Methods: "weighted" (two scalar expert weights, then Linear 4->4), "transformer" (one self-attention block over
the two experts as two tokens) and "late-fusion" (one Linear over both full outputs). All return raw logits:
train with `torch.nn.functional.cross_entropy(logits, labels)` on integer labels (the one softmax is in there).

    head = build_head("transformer", "letters", lm_head_weight, prompts.letter_token_ids(tok), seed=0)
    logits = head(feats.states["task"], feats.states["domain"])          # (rows, 4)
"""

from __future__ import annotations

from typing import Any, Sequence

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

    A Linear(rows -> out) on the logits `h @ rows.T` is `h @ fold(weight).T`: through the folded (out x hidden)
    matrix, so the logits themselves never exist."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__()
        weight = lm_head_weight.detach().float()
        rows = weight if reduce == "learned" else weight[torch.as_tensor(list(letter_ids), dtype=torch.long)]
        self.register_buffer("rows", rows.clone(), persistent=False)
        self._rows_cast: tuple[torch.dtype, torch.device, torch.Tensor] | None = None  # made at the first autocast fold

    @property
    def width(self) -> int:
        return int(self.rows.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.rows.shape[1])

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """(..., width): the frozen LM head's logits on these rows (only for the 4 letter rows: no full vocab)."""
        return states @ self.rows.T

    def fold(self, weight: torch.Tensor) -> torch.Tensor:
        """(out, hidden): `weight.T @ rows` for a (width, out) weight, the map of the logits folded into the LM head.

        Under autocast (the stage's amp) the product runs in the autocast dtype on a copy of the rows made once,
        not cast again at every product (for Mistral's LM head that cast is 131 MB read per product)."""
        device = self.rows.device.type
        if not torch.is_autocast_enabled(device):
            return FoldIntoRows.apply(weight, self.rows)
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            return FoldIntoRows.apply(weight.to(dtype), self._rows_as(dtype))

    def _rows_as(self, dtype: torch.dtype) -> torch.Tensor:
        cast = self._rows_cast
        if cast is None or cast[0] != dtype or cast[1] != self.rows.device:
            cast = self._rows_cast = (dtype, self.rows.device, self.rows.to(dtype))
        return cast[2]


FOLD_BLOCKS = 8  # on CPU the fold's width is split in this many blocks, multiplied as one batch and summed


class FoldIntoRows(torch.autograd.Function):
    """`weight.T @ rows` for a (width, out) weight with out = 8, and its gradient `rows @ grad.T`, in the forms BLAS
    runs fastest at so few output rows (32,000 x 256 LM head, two threads: fold 1.0 ms, gradient 2.0 ms, against
    1.7 and 2.7 for `R @ W` and `G @ W.T` with R stored out x width; the same values up to rounding).

    A single product is one long reduction over the width that BLAS gives one thread; FOLD_BLOCKS blocks in one
    batched product, summed, give every thread blocks. Storing the weight width x out makes its gradient the product
    `rows @ grad.T` as it comes out, with no transposed copy (a skinny transpose alone costs ~0.7 ms)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        width, out = weight.shape
        if width % FOLD_BLOCKS or weight.device.type != "cpu":
            return weight.T @ rows
        block = width // FOLD_BLOCKS
        return torch.bmm(weight.reshape(FOLD_BLOCKS, block, out).transpose(1, 2),
                         rows.reshape(FOLD_BLOCKS, block, rows.shape[1])).sum(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (rows,) = ctx.saved_tensors
        return rows @ grad.T, None


class LearnedReductions(nn.Module):
    """Both experts' Linear(vocab -> 4) over their LM-head logits (the paper's learned reduction), without bias.

    One (vocab, expert, 4) weight: `linear_weight(e)` is expert e's as nn.Linear stores it (4 x vocab). Stored
    vocab-major, the two experts' 8 maps fold into the LM head in one product and take their gradient as computed
    (`FoldIntoRows`). Initialised as nn.Linear would be with `fan_in` inputs."""

    def __init__(self, outputs: FrozenOutputs, fan_in: int) -> None:
        super().__init__()
        self.outputs = outputs
        bound = 1 / fan_in**0.5
        self.weight = nn.Parameter(torch.empty(outputs.width, NUM_EXPERTS, NUM_CHOICES).uniform_(-bound, bound))

    def linear_weight(self, expert: int) -> torch.Tensor:
        return self.weight[:, expert].T

    def forward(self, pair: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(expert, B, 4) from (expert, B, hidden) states: each expert's logits mapped by its own Linear (plus row
        e of an (expert, 4) `bias`), through ONE fold of both and one batched product."""
        folded = self.outputs.fold(self.weight.view(self.outputs.width, NUM_EXPERTS * NUM_CHOICES))
        per_expert = folded.view(NUM_EXPERTS, NUM_CHOICES, self.outputs.hidden).transpose(1, 2)
        if bias is None:
            return torch.bmm(pair, per_expert)
        return torch.baddbmm(bias.unsqueeze(1), pair, per_expert)


def uniform_bias(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """A bias initialised as nn.Linear's with `fan_in` inputs."""
    bound = 1 / fan_in**0.5
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class EnsembleHead(nn.Module):
    """Common to the three heads: input checks and the two experts' frozen outputs."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__()
        self.reduce_kind = reduce
        self.outputs = FrozenOutputs(lm_head_weight, letter_ids, reduce)

    def _inputs(self, task_states: torch.Tensor, domain_states: torch.Tensor) -> torch.Tensor:
        """(expert, B, hidden): both experts' states, checked and stacked (task first), on the LM head's device."""
        for name, states in (("task", task_states), ("domain", domain_states)):
            if states.dim() != 2 or states.shape[1] != self.outputs.hidden:
                raise UserError(f"{name} expert states have shape {tuple(states.shape)}, the LM head expects "
                                f"(rows, {self.outputs.hidden}); rebuild the feature cache with the experts' model")
        if task_states.shape[0] != domain_states.shape[0]:
            raise UserError(f"task and domain states have {task_states.shape[0]} and {domain_states.shape[0]} rows; "
                            f"both must come from one feature cache")
        rows = self.outputs.rows
        return torch.stack([s.to(device=rows.device, dtype=rows.dtype) for s in (task_states, domain_states)])


class ReducedPairHead(EnsembleHead):
    """A head that reads each expert's output reduced to 4: the letter logits, or a learned Linear(vocab -> 4) per
    expert (`reductions`, with `reduction_bias` row e the bias of expert e's)."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__(lm_head_weight, letter_ids, reduce)
        self.reductions = LearnedReductions(self.outputs, self.outputs.width) if reduce == "learned" else None
        self.reduction_bias = uniform_bias((NUM_EXPERTS, NUM_CHOICES), self.outputs.width) if reduce == "learned" else None

    def reduced(self, task_states: torch.Tensor, domain_states: torch.Tensor) -> torch.Tensor:
        """(expert, B, 4): both experts' reduced outputs (task first), after the input checks."""
        pair = self._inputs(task_states, domain_states)
        if self.reductions is None or self.reduction_bias is None:
            return self.outputs.logits(pair)
        return self.reductions(pair, self.reduction_bias)


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
        reduced = self.reduced(task_states, domain_states)
        return self.mix((self.expert_weights.view(NUM_EXPERTS, 1, 1) * reduced).sum(0))


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
        tokens = self.reduced(task_states, domain_states).transpose(0, 1)  # (B, 2, 4)
        x = self.embed(tokens) + self.expert_embedding
        return self.out(encoder_layer(self.block, x).mean(dim=1))


def encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for the block TransformerHead builds (batch first, post-norm, ReLU, no dropout, no mask), written
    out: at 2 tokens of width 32 the module's general path (its checks, masks, multi_head_attention_forward and a
    flash-attention kernel for a 2 x 2 score matrix) cost more than its arithmetic."""
    attention = layer.self_attn
    batch, tokens, width = x.shape
    heads = attention.num_heads
    qkv = nn.functional.linear(x, attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) * (width // heads) ** -0.5  # (B, heads, tokens, tokens): 2 x 2 here
    mixed = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
    x = layer.norm1(x + attention.out_proj(mixed))
    return layer.norm2(x + layer.linear2(nn.functional.relu(layer.linear1(x))))


def _zero_key_slice(grad: torch.Tensor) -> torch.Tensor:
    """The gradient of a packed q/k/v bias with its key part zeroed."""
    grad = grad.clone()
    grad[D_MODEL:2 * D_MODEL] = 0
    return grad


class LateFusionHead(EnsembleHead):
    """One Linear over both experts' outputs concatenated: 2 x vocab -> 4 (learned), or 4 + 4 letters -> 4.

    With reduce="learned" this is 2 * vocab * 4 weights (256,000 for Mistral's 32,000 tokens) + 4 biases. A Linear
    over a concatenation is the sum of one Linear per part, so it is held as each expert's (`reductions`, the
    task's half of the weight first) plus one `bias`, and applied through the folded LM head, never to a
    (B, 2 * vocab) concatenation. `linear_weight()` is the 4 x (2 * vocab) weight nn.Linear would hold."""

    def __init__(self, lm_head_weight: torch.Tensor, letter_ids: Sequence[int], reduce: str) -> None:
        super().__init__(lm_head_weight, letter_ids, reduce)
        fan_in = NUM_EXPERTS * self.outputs.width
        self.reductions = LearnedReductions(self.outputs, fan_in) if reduce == "learned" else None
        self.fuse = nn.Linear(fan_in, NUM_CHOICES) if reduce == "letters" else None
        self.bias = uniform_bias((NUM_CHOICES,), fan_in) if reduce == "learned" else None

    def linear_weight(self) -> torch.Tensor:
        if self.fuse is not None:
            return self.fuse.weight
        assert self.reductions is not None
        return torch.cat([self.reductions.linear_weight(e) for e in range(NUM_EXPERTS)], dim=1)

    def forward(self, task_states: torch.Tensor, domain_states: torch.Tensor) -> torch.Tensor:
        pair = self._inputs(task_states, domain_states)
        if self.fuse is not None:
            return self.fuse(torch.cat(tuple(self.outputs.logits(pair)), dim=1))
        assert self.reductions is not None and self.bias is not None
        return self.reductions(pair).sum(0) + self.bias


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
