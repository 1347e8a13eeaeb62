"""The mixture of the two LoRA experts: one training step's time and peak memory beside a single-expert classifier.

    .venv/bin/python benchmarks/moe.py                          # tiny-4layer, batch 16 x 128 tokens, 10 steps each
    .venv/bin/python benchmarks/moe.py --threads 1 --steps 20
    .venv/bin/python benchmarks/moe.py --device cuda            # bf16 autocast, gradient checkpointing as on a GPU
    .venv/bin/python benchmarks/moe.py --threads 1 --steps 3 --profile classifier,moe-linear-deltas   # what dominates

Two experts with random LoRAs (r 16, all seven projections, what the expert stage leaves) on `tiny-4layer` built
around the real 32,000-token Mistral tokenizer when ../shared/data has it; one batch of 16 real MedMCQA prompts
(paper template, right-padded as the stages' collator pads them, then to exactly --length columns), labels from
the rows. Each layout is the stage's own model, trained as the engine trains it (AdamW over the trainable
parameters; fp32 on CPU, bf16 autocast on CUDA; gradient checkpointing on CUDA only, as TrainOptions' "auto"):

- `classifier`: the single-expert LoRA classifier (`baseline.build_classifier` with the task expert: the expert
  merged into the base when unquantized, as the stage does, + a trainable LoRA r 16 on the seven projections +
  the 4-way head). The reference of every ratio;
- `classifier-stacked`: the same with the expert kept as a frozen adapter under the trainable one (the stage's
  layout on a 4-bit base, where merging would round the weights): two LoRA paths per projection, as in `deltas`;
- `classifier-no-dropout`: the classifier with lora_dropout 0 instead of the baseline jobs' 0.05. On a CPU the
  dropout's random masks take about a fifth of the classifier's step, and the mixture has none (the experts
  were trained without dropout), so the ratios are printed against this row too;
- `moe-linear-deltas`, `moe-linear-outputs`, `moe-topk` (`stages.moe.build_model`, the jobs' router settings:
  linear hard top-1 with sequence granularity; noisy top-1 of 2 with capacity factor 1.25): routers + head
  train, both experts frozen;
- `copies`: moe-linear with mix=outputs built the original way, two full copies of the base each carrying one
  expert, layer l of each behind one router (same routers, same maths as `moe-linear-outputs`).

Step time: the median of --steps steps after --warmup, the layouts interleaved step by step (ABC..ABC..) so that
other jobs on a shared machine slow them alike. Peak memory: one fresh process per layout,
`training.peak_memory.train_step_memory` (tensors only: weights + trainable parameters + optimizer state, then the
step's peak allocations above them; on CUDA the allocator's own count).

The default run takes about 3 min with --threads 1 on two cores shared with other jobs. Reading the figures: the
tiny model's weights are mostly its 32,000 x 256 embedding and LM head, so the copies' weights are ~2x while their
peak is not; on four layers the mixture's first layer needs no activations for the backward with mix=outputs
(its input has no gradient and its experts are frozen), which flatters outputs beside deltas more than on 32 layers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_home, question_rows, random_expert  # noqa: E402

EXPERT_SEEDS = {"task": 1, "domain": 2}
REFERENCE = "classifier"
LABELS = {
    "classifier": "single-expert LoRA classifier",
    "classifier-stacked": "  the same, expert kept as an adapter",
    "classifier-no-dropout": "  the same, LoRA dropout 0",
    "moe-linear-deltas": "moe-linear, mix=deltas",
    "moe-linear-outputs": "moe-linear, mix=outputs",
    "moe-topk": "moe-topk, mix=outputs",
    "copies": "moe-linear outputs, two model copies",
}
PLAIN = "classifier-no-dropout"  # the reference's compute without its dropout: a second, stricter yardstick
TARGETS = {"moe-linear-deltas": (1.3, 1.15), "moe-linear-outputs": (2.2, None)}  # (time, memory) x the classifier
MB = 1e6


# the layouts -------------------------------------------------------------------------------------------------
def moe_config(layout: str, args: argparse.Namespace) -> Any:
    """The stage's Config with the router settings of jobs/moe-linear.toml or jobs/moe-topk.toml, at this batch."""
    from medminds_hpc.stages import moe as stage

    common = dict(batch_size=args.batch, max_length=args.length, seed=0)
    if layout == "moe-topk":
        return stage.Config(router="topk", top_k=1, capacity_factor=1.25, mix="outputs", **common)
    mix = "deltas" if layout == "moe-linear-deltas" else "outputs"
    return stage.Config(router="linear", hard=True, mix=mix, **common)


def expert_runs() -> dict[str, Any]:
    from medminds_hpc import runs

    return {name: runs.get(f"expert-{name}-bench-{seed:08d}") for name, seed in EXPERT_SEEDS.items()}


def build(layout: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """(model in train mode, tokenizer) of `layout`, on args.device, checkpointing as on that device."""
    from medminds_hpc import artifacts
    from medminds_hpc.modeling.lora import checkpointing_wanted
    from medminds_hpc.stages import baseline
    from medminds_hpc.stages import moe as stage

    experts = expert_runs()
    if layout.startswith("classifier"):
        plain = {"lora_dropout": 0.0} if layout == PLAIN else {}
        cfg = baseline.ClassifierConfig(adapter="task", batch_size=args.batch, max_length=args.length, seed=0, **plain)
        expert = ("task", artifacts.path(experts["task"], artifacts.ADAPTER))
        merge = False if layout == "classifier-stacked" else None
        model, tok = baseline.build_classifier(args.model, cfg, expert, merge=merge, device=args.device)
    elif layout == "copies":
        model, tok = build_copies(experts, moe_config("moe-linear-outputs", args), args.device)
    else:
        from medminds_hpc.modeling.features import load_experts

        lm, tok = load_experts(experts, device=args.device)
        model = stage.build_model(lm, tok, moe_config(layout, args))
    if checkpointing_wanted("auto", args.device):
        model.activation_checkpointing_enable()
    return model.train(), tok


def build_copies(experts: dict[str, Any], cfg: Any, device: str) -> tuple[Any, Any]:
    """The mixture as the original code laid it out: each expert a full base with its own adapter; layer l of each
    behind the router of layer l, inside the first copy's decoder (the others' embeddings stay loaded, unused)."""
    from torch import nn

    from medminds_hpc.modeling import features, moe
    from medminds_hpc.modeling.adapters import attach_adapters
    from medminds_hpc.modeling.heads import decoder_of
    from medminds_hpc.modeling.loading import load_model
    from medminds_hpc.modeling.routers import build_router

    class CopiesLayer(moe.MixedDecoderLayer):
        """Layer l of every copy: each computes with its own (only) adapter, no adapter routing needed."""

        def __init__(self, copies: list[nn.Module], router: Any, index: int, names: tuple[str, ...], state: Any) -> None:
            super().__init__(copies[0], router, index, names, "outputs", state)
            self.copies = nn.ModuleList(copies)

        def _adopt_checkpointing(self) -> None:
            if any(getattr(c, "gradient_checkpointing", False) for c in self.copies):
                self.gradient_checkpointing = True
                for c in self.copies:
                    c.gradient_checkpointing = False

        def _mixed(self, used: list[int], hidden_states: Any, gates: Any, unplaced: Any, *args: Any, **kwargs: Any) -> Any:
            if unplaced is not None:
                raise RuntimeError("two model copies have no base layer without an adapter for unplaced units")
            return sum(gates[..., e:e + 1].to(hidden_states.dtype) * self.copies[e](hidden_states, *args, **kwargs)
                       for e in used)

    lms, tok = [], None
    for info in features.experts_of(experts):
        base, tok = load_model(info.model, device=device)
        lms.append(attach_adapters(base, {info.name: info.adapter_dir}))
    spec, names = cfg.spec(), moe.EXPERTS
    decoders = [decoder_of(lm) for lm in lms]
    state = moe.MixtureState(len(decoders[0].layers), names)
    layers = []
    for i in range(len(decoders[0].layers)):
        router = build_router(spec, int(decoders[0].config.hidden_size), cfg.seed + i).to(device)
        layers.append(CopiesLayer([d.layers[i] for d in decoders], router, i, names, state))
        decoders[0].layers[i] = layers[-1]
    for decoder in decoders:
        decoder.config.use_cache = False
    hook = decoders[0].register_forward_pre_hook(moe._take_mask(state), with_kwargs=True)
    model = moe.MoEClassifier(lms[0], moe.Mixture(lms[0], spec, names, layers, state, hook), cfg.head_init, seed=cfg.seed)
    model.other_copies = nn.ModuleList(lms[1:])  # registered, so their weights count as the model's
    return model, tok


# one batch and one step ------------------------------------------------------------------------------------------
def make_batch(tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    """16 real prompts through the stages' collator (right padding), padded on to exactly args.length columns."""
    import torch

    from medminds_hpc.data.prompts import mcq_prompt, pad_token_id
    from medminds_hpc.stages.baseline import prompt_collator

    rows, _ = question_rows(args.batch)
    batch = prompt_collator(tok, args.length)([{"prompt": mcq_prompt(r, "paper"), "label": r["answer"]} for r in rows])
    extra = args.length - batch["input_ids"].shape[1]
    batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad_token_id(tok))
    batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0)
    return {k: v.to(args.device) for k, v in batch.items()}


def optimizer_of(model: Any) -> Any:
    """AdamW over the trainable parameters, as the engine's default optimizer (TrainOptions' lr and decay)."""
    import torch

    from medminds_hpc.training.options import TrainOptions

    opts = TrainOptions()
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.learning_rate,
                             weight_decay=opts.weight_decay)


def loss_fn(batch: dict[str, Any], device: str) -> Callable[[Any], Any]:
    import torch

    cuda = device.startswith("cuda")

    def loss(model: Any) -> Any:
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            return model(**batch)["loss"]

    return loss


def stepper(model: Any, batch: dict[str, Any], device: str) -> Callable[[], float]:
    """One training step (forward, backward, optimizer, gradients released), returning its seconds."""
    import torch

    optimizer, loss = optimizer_of(model), loss_fn(batch, device)

    def step() -> float:
        _sync(device)
        start = time.perf_counter()
        loss(model).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - start

    torch.manual_seed(0)  # the top-k router's noise
    return step


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


# memory, one fresh process per layout ------------------------------------------------------------------------
def probe_memory(args: argparse.Namespace) -> None:
    """Child process: build `args.probe`, print JSON bytes of one steady-state training step: the weights (every
    parameter and buffer), the trainable parameters, the resident total (with AdamW's state) and the step's peak."""
    import torch

    from medminds_hpc.training.peak_memory import tensor_bytes, train_step_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = build(args.probe, args)
    batch = make_batch(tok, args)
    memory = train_step_memory(model, optimizer_of(model), loss_fn(batch, args.device), args.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(json.dumps({"weights": tensor_bytes([*model.parameters(), *model.buffers()]),
                      "trainable": tensor_bytes(trainable), "resident": memory.resident, "peak": memory.peak}))


def measure_memory(layout: str, args: argparse.Namespace) -> dict[str, int]:
    """Run `probe_memory` for `layout` in a fresh interpreter (same $MEDMINDS_HOME, so the same expert runs)."""
    cmd = [sys.executable, __file__, "--probe", layout, "--model", args.model, "--device", args.device,
           "--threads", str(args.threads), "--batch", str(args.batch), "--length", str(args.length)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"memory probe {layout!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# the benchmark ------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-4layer", help="registered model name (tiny-4layer, tiny, ...)")
    ap.add_argument("--batch", type=int, default=16, help="questions per step (moe-linear's 16)")
    ap.add_argument("--length", type=int, default=128, help="tokens per question, padded or cut to exactly this")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per layout (the median is printed)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per layout first")
    ap.add_argument("--layouts", default=",".join(LABELS), help=f"comma-separated, from {', '.join(LABELS)}")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--profile", default="", help="instead: the top operations of --steps steps of these layouts "
                    "(comma-separated), from torch's profiler: what dominates a step")
    ap.add_argument("--probe", choices=list(LABELS), help=argparse.SUPPRESS)  # the memory child process
    args = ap.parse_args()
    args.layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    args.profile = [s.strip() for s in args.profile.split(",") if s.strip()]
    unknown = [s for s in args.layouts + args.profile if s not in LABELS]
    if unknown or REFERENCE not in args.layouts:
        ap.error(f"--layouts/--profile: unknown {', '.join(unknown)}; valid: {', '.join(LABELS)} ({REFERENCE} always included)"
                 if unknown else f"--layouts must include {REFERENCE}: every ratio is against it")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.length < 2:
        ap.error("--steps and --batch must be at least 1, --warmup at least 0, --length at least 2")
    return args


def time_layouts(args: argparse.Namespace) -> tuple[dict[str, list[float]], Any, int, int]:
    """({layout: step seconds}, timed interleaved; the model's config, the vocabulary, the batch's real tokens)."""
    from medminds_hpc.modeling.heads import unwrap

    steps: dict[str, Callable[[], float]] = {}
    config, tok, real = None, None, 0
    for layout in args.layouts:
        model, tok = build(layout, args)
        config = unwrap(model.lm).config
        batch = make_batch(tok, args)
        real = int(batch["attention_mask"].sum())
        steps[layout] = stepper(model, batch, args.device)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {layout: [] for layout in steps}
    for _ in range(args.steps):
        for layout, step in steps.items():
            times[layout].append(step())
    return times, config, len(tok), real


def profile_layouts(args: argparse.Namespace) -> None:
    """Print, per layout, the operations that took most of --steps steps (after --warmup), by their own time."""
    from torch.profiler import ProfilerActivity, profile

    for layout in args.profile:
        model, tok = build(layout, args)
        step = stepper(model, make_batch(tok, args), args.device)
        for _ in range(args.warmup):
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
        sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
        print(f"{LABELS[layout].strip()} ({layout}), {args.steps} steps:")
        print(prof.key_averages().table(sort_by=sort, row_limit=15))


def print_results(times: dict[str, list[float]], memory: dict[str, dict[str, int]], args: argparse.Namespace,
                  config: Any, vocabulary: int, real: int) -> None:
    import torch

    cuda = args.device.startswith("cuda")
    tokens = args.batch * args.length
    print(f"model {args.model} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocabulary {vocabulary}) on "
          f"{args.device}, {threads_text(torch.get_num_threads())}; batch {args.batch} x {args.length} tokens ({real} real: "
          f"{question_rows(args.batch)[1]} prompts, right-padded); {'bf16 autocast, gradient checkpointing' if cuda else 'fp32'}; "
          f"AdamW; median of {args.steps} steps after {args.warmup}, layouts interleaved")
    memory_what = "max_memory_allocated" if cuda else "tensors, from the profiler"
    print(f"{'layout':40s} {'step ms':>8s} {'x clf':>6s} {'tokens/s':>9s}   {'peak MB':>8s} {'x clf':>6s}   "
          f"(weights + trainable + optimizer | step above them; {memory_what})")
    ref_time = statistics.median(times[REFERENCE])
    ref_peak = memory[REFERENCE]["peak"]
    for layout in args.layouts:
        t = statistics.median(times[layout])
        m = memory[layout]
        optim = m["resident"] - m["weights"]
        print(f"{LABELS[layout]:40s} {t * 1e3:8.1f} {t / ref_time:5.2f}x {tokens / t:9,.0f}   {m['peak'] / MB:8.1f} "
              f"{m['peak'] / ref_peak:5.2f}x   ({m['weights'] / MB:.1f} + {m['trainable'] / MB:.2f} trainable + "
              f"{optim / MB:.2f} | {(m['peak'] - m['resident']) / MB:.1f})")
    references = [r for r in (REFERENCE, PLAIN) if r in args.layouts]
    print("targets, x " + " | x ".join(LABELS[r].strip() for r in references) + ":")
    for layout, (time_target, memory_target) in TARGETS.items():
        if layout not in times:
            continue
        line = f"  {LABELS[layout]:38s} time " + target_text(
            [statistics.median(times[layout]) / statistics.median(times[r]) for r in references], time_target)
        if memory_target is not None:
            line += "; memory " + target_text([memory[layout]["peak"] / memory[r]["peak"] for r in references], memory_target)
        print(line)
    if "copies" in memory:
        shared = memory.get("moe-linear-outputs") or memory.get("moe-linear-deltas")
        if shared is not None:
            print(f"two model copies vs one shared base (moe-linear): weights {memory['copies']['weights'] / shared['weights']:.2f}x "
                  f"(expected ~2x), peak {memory['copies']['peak'] / shared['peak']:.2f}x")


def target_text(ratios: list[float], target: float) -> str:
    """"0.84x | 1.32x (<= 1.3x: met | MISSED)": each ratio and whether it meets the target."""
    verdicts = " | ".join("met" if r <= target else "MISSED" for r in ratios)
    return " | ".join(f"{r:.2f}x" for r in ratios) + f" (<= {target}x: {verdicts})"


def threads_text(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def run_benchmark(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for name, seed in EXPERT_SEEDS.items():
        random_expert(name, args.model, seed)
    if args.profile:
        profile_layouts(args)
        return
    times, config, vocabulary, real = time_layouts(args)
    memory = {layout: measure_memory(layout, args) for layout in args.layouts}
    print_results(times, memory, args, config, vocabulary, real)


def main() -> None:
    args = parse_args()
    with bench_home():
        if args.probe:
            probe_memory(args)
        else:
            run_benchmark(args)


if __name__ == "__main__":
    main()
