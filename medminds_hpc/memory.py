"""Peak GPU memory of a run, estimated from the model's shape before anything is loaded (no torch here).

`submit` estimates every run that trains or scores on a GPU, prints the estimate with `--dry-run`, and refuses,
before sbatch and before anything is written, a run whose estimate exceeds its GPU type's `memory_gb` in the
cluster profile (read as GiB: NVIDIA's "32 GB" V100 has 32 GiB). The estimate follows the transformers + peft
path (unsloth needs less, so it errs on the safe side there) and was checked against measured peaks: the tiny
models on the CPU, fp32 or 4-bit under bf16 autocast, 0-12% above (tests/test_memory.py holds it within 25%), and
a Mistral-7B-shaped 4-bit layer under bf16 autocast 5% above per token (benchmarks/memory_estimate.py).

The formula. A decoder of n layers, hidden size h, attention width q (heads x head_dim), key/value width kv, MLP
width i, vocabulary V; a micro-batch of T = (batch_size / grad_accum) x max_length tokens (the longest a batch can
be); activation bytes b (2 under bf16/fp16, 4 in fp32); residual-stream bytes f (4 on a 4-bit base: peft's k-bit
preparation upcasts embeddings and norms to fp32, and 4-bit layers return their input's dtype; else b):

    peak = (weights + trainable + activations) x 1.10 + 1 GiB      (10% and the CUDA context: the safety margin)

    weights      4-bit: linear parameters x (0.5 + 1/64) bytes (nf4 + double-quantised block constants) + the
                 embeddings, LM head and norms in fp32 (in b when only scoring); otherwise parameters x dtype bytes
    trainable    LoRA (r x (in + out) per target and layer) + a head: 4 (fp32 weight) + 4 (gradient) + optimizer
                 state (AdamW: 8, two fp32 moments; 8-bit AdamW: 2) bytes per parameter
    activations  without checkpointing:  T x (n x A + F + max(Lg, X)) + C
                 with checkpointing:     T x (n x h x f + F + max(Lg, A + X)) + C
      A   what one layer keeps for its backward, per token: both RMSNorm inputs in fp32 (2 x 4h); attention's q, k,
          v and output ((2q + 2kv') x b, kv' = q because padded batches make transformers repeat the key/value
          heads), its log-sum-exp (4 x heads) and mask (max_length x b); the MLP's gate, SiLU and up outputs (3i x f);
          per LoRA target r x b (lora_B's input) and lora_A's input where not already kept: under mixed precision
          each of q/k/v/gate/up keeps a b copy of its fp32 input (h x b), down_proj its own (i x b); with dropout
          every target keeps its dropped input and mask (d_in x (b + 1)).  Mistral-7B, 4-bit, bf16, r 16: ~300 KiB.
      X   the backward of one layer beyond what it kept: (i + 2h) x 4
      F   the final norm's fp32 input and the attention mask built once: 4h + max_length x b
      Lg  the loss: a causal-LM loss over the vocabulary keeps the fp32 log-softmax and makes two fp32 logit
          gradients (V x 12); a 4-way head on the last token: nothing worth counting
      C   per step: autocast's low-precision copy of every LoRA weight, and the dequantised copy of the largest
          4-bit weight that a 4-bit matmul works through
    scoring      (runs without training, and each epoch's validation) T' x (3h x f + 4i x f + max_length x b)
                 + batch x V x 8 + the dequantised weight; T' = eval batch x prompt length

With checkpointing only each layer's input survives the forward, and the backward recomputes one layer at a time:
for Mistral-7B at 16 x 256 tokens that is ~2 GiB instead of ~37 GiB of activations.

    python -c "from medminds_hpc import memory as m; print(m.estimate(m.workload_for('expert', {}, 'mistral-7b-instruct')).describe())"
    python benchmarks/memory_estimate.py      # estimates beside measured peaks, and the paper's runs per GPU type
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

from medminds_hpc.errors import UserError, many

GiB = 1024**3
CUDA_CONTEXT = 1 * GiB  # CUDA context, cuBLAS workspace, and what the caching allocator holds beyond live tensors
MARGIN = 0.10
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights + an 8-bit constant per 64 + an fp32 one per 256 blocks
SCORING_MAX_LENGTH = 512  # modeling/scoring.py's prompt length for next-word scoring (the expert's validation)
NUM_CHOICES = 4
Loss = Literal["lm", "classes"]


@dataclass(frozen=True)
class ModelShape:
    """A Mistral/Llama-style decoder: what its memory depends on."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int = 0  # 0: hidden // heads
    tied_embeddings: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.projections().values())

    @property
    def other_params(self) -> int:
        """Embeddings, LM head and norms: what 4-bit loading leaves unquantized."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + (2 * self.layers + 1) * self.hidden

    def lora_params(self, r: int, targets: tuple[str, ...] = ALL_PROJECTIONS) -> int:
        dims = self.projections()
        return self.layers * sum(r * sum(dims[t]) for t in targets)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "config.json") -> "ModelShape":
        """From a Hugging Face config.json of a Mistral/Llama-style model."""
        text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
        needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [k for k in needed if not isinstance(text.get(k), int)]
        if missing:
            raise UserError(f"{where}: no {', '.join(missing)}; the GPU memory estimate needs a Mistral/Llama-style "
                            "decoder config")
        return cls(hidden=text["hidden_size"], layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
                   kv_heads=int(text.get("num_key_value_heads") or text["num_attention_heads"]),
                   intermediate=text["intermediate_size"], vocab=text["vocab_size"],
                   head_dim=int(text.get("head_dim") or 0), tied_embeddings=bool(text.get("tie_word_embeddings", False)))


MISTRAL_7B = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=32000)
HUB_SHAPES = {"mistralai/Mistral-7B-Instruct-v0.2": MISTRAL_7B, "BioMistral/BioMistral-7B": MISTRAL_7B}
MISTRAL_VOCAB = 32000
PACKAGED_SHAPES = {"smollm2-135m-instruct": ModelShape(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536,
                                                       vocab=49152, tied_embeddings=True)}


@dataclass(frozen=True)
class Workload:
    """What one process puts on its device: the model as loaded, and the step it runs."""

    shape: ModelShape
    micro_batch: int = 0
    seq_len: int = 0
    train: bool = True
    loss: Loss = "lm"  # lm: causal-LM loss at every position; classes: a small head on the last token
    checkpointing: bool = False
    quantized: bool = False  # 4-bit base (bitsandbytes nf4, double quant)
    weight_bytes: int = 4  # bytes per unquantized weight
    act_bytes: int = 4  # 2 under bf16/fp16 mixed precision
    lora_r: int = 0
    lora_targets: tuple[str, ...] = ALL_PROJECTIONS
    lora_dropout: float = 0.0
    optimizer: str = "adamw"
    head_params: int = 0
    frozen_adapter_r: int = 0  # an expert's LoRA kept as a frozen adapter
    eval_batch: int = 0
    eval_len: int = 0
    device: str = "cuda"  # CUDA keeps dropout masks as bytes, the CPU in fp32

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class Estimate:
    """Bytes by part; `allocated` is what the tensors need, `total` adds the margin and the CUDA context."""

    weights: int
    trainable: int
    activations: int
    context: int
    workload: Workload

    @property
    def allocated(self) -> int:
        return self.weights + self.trainable + self.activations

    @property
    def total(self) -> int:
        return math.ceil(self.allocated * (1 + MARGIN)) + self.context

    def describe(self) -> str:
        w = self.workload
        if w.train:
            step = (f"micro-batch {w.micro_batch} x {w.seq_len} tokens with gradient checkpointing "
                    f"{'on' if w.checkpointing else 'off'}")
        else:
            step = f"scoring {w.eval_batch} x {w.eval_len} tokens"
        return (f"~{gib(self.total)} GiB (weights {gib(self.weights)} + LoRA/head/optimizer {gib(self.trainable)} + "
                f"activations {gib(self.activations)} for a {step}; +{MARGIN:.0%} and {gib(self.context)} GiB CUDA context)")


def gib(n: float) -> str:
    return f"{n / GiB:.1f}"


# the formula ---------------------------------------------------------------------------------------------------
def weights_bytes(w: Workload) -> int:
    s = w.shape
    if w.quantized:
        other = 4 if w.train else w.act_bytes  # k-bit training preparation upcasts the rest to fp32
        total = s.linear_params * NF4_BYTES + s.other_params * other
    else:
        total = (s.linear_params + s.other_params) * w.weight_bytes
    return int(total) + s.lora_params(w.frozen_adapter_r) * 4


def optimizer_bytes(name: str) -> int:
    """Optimizer state per trainable parameter: AdamW's two fp32 moments, or two bytes in 8-bit AdamW."""
    return 2 if name == "adamw_8bit" else 8


def trainable_bytes(w: Workload) -> int:
    if not w.train:
        return 0
    params = w.shape.lora_params(w.lora_r, w.lora_targets) + w.head_params
    return params * (4 + 4 + optimizer_bytes(w.optimizer))


def stream_bytes(w: Workload) -> int:
    """f: bytes per element of the residual stream (fp32 after k-bit preparation)."""
    return 4 if w.quantized and w.train else w.act_bytes


def layer_saved(w: Workload) -> int:
    """A: bytes one decoder layer keeps for its backward, per token."""
    s, b, f = w.shape, w.act_bytes, stream_bytes(w)
    h, q, i = s.hidden, s.q_dim, s.intermediate
    total = 2 * (4 * h + 4)  # two RMSNorms: input in fp32 + the rsqrt
    total += (2 * q + 2 * q) * b + 4 * s.heads + w.seq_len * b  # attention: q, k, v (repeated), out, lse, mask
    total += 3 * i * f  # MLP: gate, SiLU and up outputs
    return total + lora_saved(w)


def lora_saved(w: Workload) -> int:
    """The LoRA branches' share of A: lora_B's input, and each lora_A input not kept by anything else."""
    if w.lora_r <= 0:
        return 0
    s, b, f = w.shape, w.act_bytes, stream_bytes(w)
    on_cuda = w.device.startswith("cuda")
    cast = f != b  # mixed precision on an fp32 stream: each LoRA keeps its own low-precision copy of its input
    dims = s.projections()
    total = 0
    shared: set[str] = set()
    for t in w.lora_targets:
        d_in = dims[t][0]
        total += w.lora_r * b
        if w.lora_dropout > 0:
            total += d_in * (b + (1 if on_cuda else 4))
        elif t == "o_proj":  # the attention output, already kept (on the CPU peft casts it to fp32 first)
            total += d_in * b if cast and not on_cuda else 0
        elif t == "down_proj" or cast:
            total += d_in * b
        else:  # q/k/v share the first norm's output, gate/up the second's
            shared.add("attention" if t in ("q_proj", "k_proj", "v_proj") else "mlp")
    return total + len(shared) * s.hidden * f


def layer_backward(w: Workload) -> int:
    """X: what one layer's backward allocates beyond what it kept, per token."""
    return (w.shape.intermediate + 2 * w.shape.hidden) * 4


def loss_bytes(w: Workload) -> int:
    """Lg: the loss's share of the peak, per token."""
    return w.shape.vocab * 12 if w.loss == "lm" else 0


def per_step_bytes(w: Workload) -> int:
    """C: autocast's copies of the LoRA weights, and the dequantised copy of the largest 4-bit weight."""
    casts = w.shape.lora_params(w.lora_r, w.lora_targets) * w.act_bytes if w.train and w.act_bytes < 4 else 0
    dequantized = max(a * b for a, b in w.shape.projections().values()) * w.act_bytes if w.quantized else 0
    return casts + dequantized


def training_activations(w: Workload) -> int:
    s = w.shape
    tail = 4 * s.hidden + w.seq_len * w.act_bytes
    a, x, lg = layer_saved(w), layer_backward(w), loss_bytes(w)
    if w.checkpointing:
        per_token = s.layers * s.hidden * stream_bytes(w) + tail + max(lg, a + x)
    else:
        per_token = s.layers * a + tail + max(lg, x)
    return w.tokens * per_token + per_step_bytes(w)


def scoring_activations(w: Workload) -> int:
    s, b, f = w.shape, w.act_bytes, stream_bytes(w)
    if not (w.eval_batch and w.eval_len):
        return 0
    per_token = 3 * s.hidden * f + 4 * s.intermediate * f + w.eval_len * b
    return w.eval_batch * w.eval_len * per_token + w.eval_batch * s.vocab * 8 + per_step_bytes(replace(w, train=False))


def estimate(w: Workload) -> Estimate:
    """Peak memory of `w` on its device (the CUDA context is counted on CUDA only)."""
    activations = max(training_activations(w) if w.train else 0, scoring_activations(w))
    context = CUDA_CONTEXT if w.device.startswith("cuda") else 0
    return Estimate(weights_bytes(w), trainable_bytes(w), activations, context, w)


# runs ------------------------------------------------------------------------------------------------------------
def model_shape(model: str) -> tuple[ModelShape, bool]:
    """(shape, 4-bit on CUDA) of a model name as `--model` takes it, without loading anything."""
    from medminds_hpc.modeling import loading, tokenizer

    spec = loading.resolve_model(model)
    if spec.kind == "hub":
        if spec.hub_id not in HUB_SHAPES:
            raise UserError(f"model {model}: its shape is not known here; add it to HUB_SHAPES in medminds_hpc/memory.py")
        return HUB_SHAPES[spec.hub_id], True
    if spec.kind == "packaged":
        return PACKAGED_SHAPES[spec.name], False
    if spec.kind == "tiny":
        t = spec.tiny
        vocab = MISTRAL_VOCAB if os.environ.get(tokenizer.TOKENIZER_ENV) else tokenizer.BUILTIN_VOCAB_SIZE
        return ModelShape(t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.intermediate_size, vocab), False
    path = spec.path / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the model's config ({e})") from None
    return ModelShape.from_config(config, str(path)), True


def workload_for(stage: str, params: Mapping[str, Any], model: str) -> Workload | None:
    """The workload of a run of `stage` on a CUDA GPU, from its resolved params; None for stages that hold no model
    on a GPU (or are not built yet)."""
    if stage not in ("expert", "baseline-classifier", "baseline-nextword"):
        return None
    shape, quantized = model_shape(model)
    precision = params.get("precision", "auto")
    act = 4 if precision == "fp32" else 2  # auto: bf16 on Ampere and newer, fp16 before; both 2 bytes
    common = dict(shape=shape, quantized=quantized, weight_bytes=act, act_bytes=act, eval_batch=int(params.get("eval_batch_size", 32)))
    adapter = params.get("adapter", "none") != "none"
    if stage == "baseline-nextword":
        return Workload(train=False, eval_len=int(params.get("max_length", SCORING_MAX_LENGTH)),
                        frozen_adapter_r=16 if adapter else 0, **common)
    checkpointing = params.get("gradient_checkpointing", "auto")
    micro_batch = max(1, int(params.get("batch_size", 16)) // max(1, int(params.get("grad_accum", 1))))
    classifier = stage == "baseline-classifier"
    max_length = int(params.get("max_length", 256))
    return Workload(
        micro_batch=micro_batch, seq_len=max_length, train=True, loss="classes" if classifier else "lm",
        checkpointing=checkpointing == "auto" or bool(checkpointing), lora_r=int(params.get("lora_r", 16)),
        lora_dropout=float(params.get("lora_dropout", 0.0)), optimizer=str(params.get("optimizer", "adamw")),
        head_params=(shape.hidden + 1) * NUM_CHOICES if classifier else 0,
        # a 4-bit base keeps the expert as a frozen adapter (assumed the paper's r=16); otherwise it is merged
        frozen_adapter_r=16 if classifier and adapter and quantized else 0,
        eval_len=max_length if classifier else SCORING_MAX_LENGTH, **common)


@dataclass(frozen=True)
class Fit:
    """A run's estimate beside the memory of the GPU type it asks for (capacity 0: the profile does not say)."""

    experiment: str
    run_id: str
    gpu: str
    capacity_gib: int
    estimate: Estimate
    gpus: Mapping[str, int]  # every GPU type of the profile and its memory, for suggesting one that fits

    @property
    def fits(self) -> bool:
        return not self.capacity_gib or self.estimate.total <= self.capacity_gib * GiB

    def describe(self) -> str:
        if not self.capacity_gib:
            return f"{self.estimate.describe()}; the profile gives no memory_gb for {self.gpu}, so nothing is checked"
        return f"{self.estimate.describe()}; a {self.gpu} has {self.capacity_gib} GiB: {'fits' if self.fits else 'DOES NOT FIT'}"

    def refusal(self, top: str) -> str:
        """One line: the run, estimate vs capacity, and the changes that would make it fit."""
        prefix = "" if self.experiment == top else f"{self.experiment}."
        w, fixes = self.estimate.workload, []
        room = self.capacity_gib * GiB
        if w.train and not w.checkpointing:
            with_ckpt = estimate(replace(w, checkpointing=True)).total
            fixes.append(f"turn on gradient checkpointing with -o {prefix}gradient_checkpointing=true (~{gib(with_ckpt)} GiB)")
        for accum in (2, 4, 8, 16, 32, 64) if w.train else ():
            if accum > w.micro_batch:
                break
            smaller = estimate(replace(w, micro_batch=max(1, w.micro_batch // accum))).total
            if smaller <= room:
                fixes.append(f"a smaller micro-batch with -o {prefix}grad_accum={accum} (~{gib(smaller)} GiB)")
                break
        bigger = sorted((gb, name) for name, gb in self.gpus.items() if gb * GiB >= self.estimate.total)
        if bigger:
            gb, name = bigger[0]
            fixes.append(f"a GPU type with more memory with -o {prefix}resources.gpu={name} ({gb} GiB)")
        what = ", or ".join(fixes) or f"a smaller max_length or batch_size (-o {prefix}max_length=...)"
        return (f"{self.run_id}: needs {self.estimate.describe()}, more than the {self.capacity_gib} GiB of a {self.gpu} "
                f"(memory_gb in the cluster profile); {what}")


def for_run(experiment: str, run_id: str, stage: str, params: Mapping[str, Any], model: str | None, gpu: str | None,
            gpus: Mapping[str, int]) -> Fit | None:
    """The run's estimate on the GPU type it asks for; None for CPU jobs, stages without a model on the GPU, and
    models whose shape cannot be read here (the job itself will say what is wrong with them)."""
    if not gpu or not model:
        return None
    try:
        w = workload_for(stage, params, model)
    except UserError:
        return None
    if w is None:
        return None
    return Fit(experiment, run_id, gpu, int(gpus.get(gpu, 0)), estimate(w), dict(gpus))


def refuse_overfull(fits: list[Fit | None], top: str) -> None:
    """Raise one UserError naming every run that cannot fit on its GPU, with what to change."""
    problems = [f.refusal(top) for f in fits if f is not None and not f.fits]
    if problems:
        raise many(problems)
