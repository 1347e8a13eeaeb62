"""Combining two frozen experts: heads from a feature cache vs recomputing, one base vs two copies, the cache's size.

    .venv/bin/python benchmarks/combining.py             # tiny-4layer, 2,000 questions, 10 epochs
    .venv/bin/python benchmarks/combining.py --threads 1 --questions 1000 --epochs 3
    .venv/bin/python benchmarks/combining.py --device cuda --recompute-epochs 10

Two experts with random LoRAs (r 16, all seven projections) on `tiny-4layer` built around the real 32,000-token
Mistral tokenizer when ../shared/data has it (so the LM head is Mistral's width), over the real MedMCQA sample
(repeated under new ids up to --questions), else synthetic rows. The default run takes about 5 min on two quiet
cores, most of it in (c). Prints, side by side:

1. Cached vs recompute: (a) one extraction of both experts' last-token states (`features.extract`, model already
   loaded); (b) the three ensemble heads (weighted, transformer, late-fusion; reduce "learned"; Adam, batch 32)
   trained for --epochs from the cache (load included); (c) the same heads and the same loop with both experts'
   states recomputed for every batch, as without a cache (shuffled batches, which pad more than the extraction's
   length-sorted ones). (c) runs --recompute-epochs per head and is scaled to --epochs, which the printout says.
   (a), (b) and (b'') are measured in --repeats rounds, one after the other, and each keeps its fastest run: the
   machine's speed drifts, and a ratio of two single runs minutes apart carries that drift.
   Ratios: (a + b) / a (target <= 1.3x) and (c) / (a + b). (b') times the same heads over the letter logits
   (reduce "letters"); (b'') trains (b)'s heads through the stage's own Trainer (the engine's Trainer class, the
   stage's TrainingArguments, dataset and collator; no checkpoints, no validation), which adds its bookkeeping
   (data loader, callbacks, scheduler) to every step. Each head first takes one untimed step (kernels,
   allocator), as (a) has its warm-up forward. The plain loop is the stage's step: its Trainer's fused AdamW,
   weight decay and clipping (none for the ensembles, as in the paper). With the learned reduction a step costs two 8 x vocab x hidden products whatever
   the batch (the fold of both experts' reductions into the LM head, and its gradient), which on a 4-layer model
   rivals extracting the batch, and on Mistral-7B is a rounding error beside it. Each head's first-epoch mean loss
   from (b) and (c) is printed too: the same numbers, since only the states' source differs.
2. Peak memory of a combining stage (one pair of fresh processes per --memory-batches entry): one base with both adapters attached by name
   (`features.load_experts`) vs two full copies of the base each with its adapter, both running both experts'
   forward over one batch. The target (<= 0.6x) is on tensors: the weights' distinct storages plus the forward's
   peak allocations above them (`training.peak_memory`; on CUDA the allocator's own count). Beside it, the
   process's peak (CPU: RSS above the imports, from /proc; CUDA: max_memory_allocated with loading). On CPU
   transformers maps the weights from the safetensors file, so RSS counts only the pages a forward touches (never
   the LM head's, which extraction skips). The tiny model is mostly its 32,000 x 256 embedding and LM head, and
   its forward over a batch used to weigh about as much as its weights (Mistral-7B's does not): the extraction
   already ran without gradients, through sdpa attention (no rows x heads x length x length scores), without the
   LM head and padded only to the batch's longest prompt; its peak was a decoder layer's temporaries (each LoRA
   projection's output, LoRA branch and sum, the rotary embeddings, the MLP's gate and up products, all batch x
   length wide). A frozen forward now runs each layer over blocks of whole rows of at most
   `features.CHUNK_POSITIONS` positions (`features.layers_in_row_blocks`): the same states, and what a batch still
   costs is the residual stream between layers.
3. The cache on disk per 1,000 questions and extraction throughput (questions/s).

Last figures (this project's 2-core VM, whose speed drifts 10-20 % between runs; three runs, each the fastest of
3 rounds): (a) 25.5 / 27.3 / 31.0 s; (a + b) / a 1.29x / 1.31x / 1.30x; through the stage's Trainer (b'') 1.33x /
1.35x / 1.32x; (b') 1.06-1.10x; (c) / (a + b) 36-43x; memory 0.59x at batch 32; extraction 64-78 questions/s; cache
2.094 MB per 1,000 questions. A step of a learned-reduction head is two 8 x 32,000 x 256 products with the frozen
LM head (the fold, ~1.0 ms, and its gradient, ~1.4-2.0 ms; reading the 32.8 MB LM head once takes ~0.9 ms here),
fused AdamW ~0.5 ms and small ops; the Trainer adds ~0.6 ms a step of bookkeeping.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_home, cache_size_text, dir_bytes, question_rows, random_expert  # noqa: E402

REDUCE = "learned"  # the paper's: a Linear(vocab -> 4) per expert over the LM-head logits
ALSO = "letters"  # the next-word prior: 4 LM-head rows per expert, timed from the cache beside the paper's
EXPERT_SEEDS = {"task": 1, "domain": 2}
MB = 1e6


# one plain training loop for both sources of states ----------------------------------------------------------
def train_head(head: Any, states_of: Callable[[Any], tuple[Any, Any]], labels: Any, *, epochs: int, batch_size: int,
               lr: float, seed: int) -> list[float]:
    """The ensemble stage's optimizer step (its Trainer's fused AdamW, its weight decay and gradient clipping) on
    cross-entropy over shuffled batches; `states_of(row indices)` gives (task, domain) states, from the cache or
    recomputed. Returns each epoch's mean loss."""
    import torch

    from medminds_hpc.stages.ensemble import Config

    stage = Config()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=stage.weight_decay, fused=True)
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        total = torch.zeros((), device=labels.device)
        for idx in torch.randperm(len(labels), generator=order).split(batch_size):
            task, domain = states_of(idx)
            loss = torch.nn.functional.cross_entropy(head(task, domain), labels[idx.to(labels.device)])
            optimizer.zero_grad()
            loss.backward()
            if stage.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(head.parameters(), stage.max_grad_norm)
            optimizer.step()
            total += loss.detach() * len(idx)
        losses.append(float(total) / len(labels))
    return losses


def timed_heads(make_head: Callable[[str], Any], states_of: Callable[[Any], tuple[Any, Any]], labels: Any,
                epochs: int, args: argparse.Namespace) -> dict[str, tuple[float, list[float]]]:
    """{method: (seconds, per-epoch losses)} for each of the three heads, trained one after the other."""
    from medminds_hpc.modeling.ensemble_heads import METHODS

    out = {}
    for method in METHODS:  # warm-up, as (a) had one: a step of each head (kernels, allocator), untimed
        train_head(make_head(method), states_of, labels[:args.batch_size], epochs=1, batch_size=args.batch_size,
                   lr=args.lr, seed=0)
    for method in METHODS:
        start = time.perf_counter()
        head = make_head(method)
        losses = train_head(head, states_of, labels, epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=0)
        _sync(args.device)
        out[method] = (time.perf_counter() - start, losses)
    return out


def trainer_heads(make_head: Callable[[str], Any], task: Any, domain: Any, labels: Any, args: argparse.Namespace) -> dict[str, float]:
    """{method: seconds} for each head trained from the cached states through the stage's own Trainer: the
    engine's Trainer class, the ensemble stage's TrainingArguments, dataset and collator (no checkpoints, no
    validation). Timed from the first step to the last, so the Trainer's set-up is left out."""
    from transformers import PrinterCallback, Trainer, TrainerCallback

    from medminds_hpc import compat
    from medminds_hpc.modeling.ensemble_heads import METHODS, CachedEnsemble
    from medminds_hpc.stages.ensemble import Config, StatesDataset, states_collator
    from medminds_hpc.training.engine import training_arguments

    class Clock(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            self.start = time.perf_counter()

        def on_train_end(self, *_: Any, **__: Any) -> None:
            self.seconds = time.perf_counter() - self.start

    stage_trainer = compat.trainer_with_hooks(Trainer, save_model=lambda *_: None, after_checkpoint=lambda *_: None,
                                              load_model=lambda *_: None)
    cfg = Config(epochs=float(args.epochs), batch_size=args.batch_size, learning_rate=args.lr)
    data = StatesDataset(task.cpu().numpy(), domain.cpu().numpy(), labels.tolist(), list(range(len(labels))))
    out = {}
    for method in METHODS:
        with tempfile.TemporaryDirectory(prefix="medminds-trainer-") as scratch:
            clock = Clock()
            trainer = stage_trainer(model=CachedEnsemble(make_head(method)), data_collator=states_collator,
                                    args=training_arguments(cfg, Path(scratch), save_strategy="no"),
                                    train_dataset=data, callbacks=[clock])
            trainer.remove_callback(PrinterCallback)  # its end-of-training dict would interleave with the figures
            trainer.train()
            out[method] = clock.seconds
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# peak memory, one fresh process per layout --------------------------------------------------------------------
STATUS = Path("/proc/self/status")
PRELOAD = ("transformers", "peft", "transformers.models.mistral.modeling_mistral", "peft.tuners.lora")


def _status_kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{STATUS} has no {field}")


def rss_baseline() -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS and return that, in bytes. Not ru_maxrss: Linux
    carries it over an exec, so a child of a large process would report its parent's size."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def rss_peak() -> int:
    """Peak RSS since `rss_baseline`, in bytes."""
    return _status_kib("VmHWM") * 1024


def probe_memory(args: argparse.Namespace) -> None:
    """Child process: load the two experts in layout `args.probe`, run both experts' forward over one batch, print
    JSON bytes: the weights' distinct storages, the forward's allocations above them (tensors only, as
    `training.peak_memory` counts them), and the process's own peak (CPU: RSS above the imports, which counts
    memory-mapped weights only where a forward touched them; CUDA: max_memory_allocated, loading included)."""
    import torch

    from medminds_hpc import runs
    from medminds_hpc.data import prompts
    from medminds_hpc.modeling import features
    from medminds_hpc.modeling.adapters import attach_adapters
    from medminds_hpc.modeling.loading import load_model
    from medminds_hpc.training.peak_memory import peak_above_start, tensor_bytes

    for module in PRELOAD:  # before the baseline: the layouts differ only in what they load
        importlib.import_module(module)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    torch.ones(64, 64) @ torch.ones(64, 64)  # thread pools and allocator, before the baseline
    rows, _ = question_rows(args.memory_batch)
    texts = [prompts.mcq_prompt(r, "paper") for r in rows]
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    baseline = rss_baseline()
    experts = {name: runs.get(f"expert-{name}-bench-{seed:08d}") for name, seed in EXPERT_SEEDS.items()}
    if args.probe == "shared":
        model, tok = features.load_experts(experts, device=args.device)
        models = [(model, list(EXPERT_SEEDS))]
    else:
        models = []
        for info in features.experts_of(experts):
            base, tok = load_model(info.model, device=args.device)
            models.append((attach_adapters(base, {info.name: info.adapter_dir}), [info.name]))
    weights = tensor_bytes(t for model, _ in models for t in (*model.parameters(), *model.buffers()))

    def forwards() -> None:
        for model, names in models:
            features.hidden_states(model, tok, texts, names=names, batch_size=args.memory_batch)

    forwards()
    _sync(args.device)
    process = torch.cuda.max_memory_allocated(args.device) if cuda else rss_peak() - baseline
    forward = peak_above_start(forwards, args.device)  # again, under the profiler (which would inflate the RSS)
    print(json.dumps({"weights": weights, "forward": forward, "process": process}))


def measure_memory(layout: str, args: argparse.Namespace, batch: int) -> dict[str, int]:
    """Run `probe_memory` for `layout` in a fresh interpreter (the same $MEDMINDS_HOME, so the same expert runs)."""
    cmd = [sys.executable, __file__, "--probe", layout, "--model", args.model, "--device", args.device,
           "--threads", str(args.threads), "--memory-batch", str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"memory probe {layout!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# the benchmark ------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-4layer", help="registered model name (tiny-4layer, tiny, ...)")
    ap.add_argument("--questions", type=int, default=2000, help="past the real sample's 970 it repeats under new ids")
    ap.add_argument("--epochs", type=int, default=10, help="epochs per head (the paper's 10)")
    ap.add_argument("--recompute-epochs", type=int, default=1,
                    help="epochs per head measured for (c), scaled to --epochs (at least 1; --epochs measures all)")
    ap.add_argument("--batch-size", type=int, default=32, help="head training batch (the paper's 32)")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (the paper's 1e-4)")
    ap.add_argument("--extract-batch", type=int, default=32, help="batch of the experts' forward passes")
    ap.add_argument("--rows-per-shard", type=int, default=1000)
    ap.add_argument("--memory-batch", type=int, default=32, help=argparse.SUPPRESS)  # one probe's batch (child process)
    ap.add_argument("--memory-batches", default="8,32", help="questions in the forward of the memory probes, one pair of probes each")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (a), (b) and (b''), the fastest of each kept")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--probe", choices=["shared", "copies"], help=argparse.SUPPRESS)  # the memory child process
    args = ap.parse_args()
    if args.recompute_epochs < 1 or args.epochs < 1 or args.repeats < 1:
        ap.error("--epochs, --recompute-epochs and --repeats must be at least 1")
    args.recompute_epochs = min(args.recompute_epochs, args.epochs)
    return args


@dataclass
class Timings:
    """Section 1's measurements, in seconds; heads map method -> (seconds, per-epoch mean losses)."""

    extract: float
    load: float
    from_cache: dict[str, tuple[float, list[float]]]
    from_cache_letters: dict[str, tuple[float, list[float]]]
    recomputed: dict[str, tuple[float, list[float]]]
    scale: float  # --epochs / --recompute-epochs: (c) was measured for a part and multiplied by this
    cache_bytes: int
    through_trainer: dict[str, float]  # the same heads from the cache through the stage's Trainer

    @property
    def cached(self) -> float:
        return self.load + sum(t for t, _ in self.from_cache.values())

    @property
    def recompute(self) -> float:
        return sum(t for t, _ in self.recomputed.values()) * self.scale


def cached_vs_recompute(model: Any, tok: Any, experts: dict[str, Any], rows: list[dict[str, Any]],
                        args: argparse.Namespace) -> Timings:
    """(a) one extraction, (b) the three heads from the cache, (c) the same heads recomputing both experts."""
    import torch

    from medminds_hpc.data import prompts
    from medminds_hpc.modeling import features
    from medminds_hpc.modeling.ensemble_heads import build_head
    from medminds_hpc.modeling.heads import unwrap

    dev = torch.device(args.device)
    spec = features.cache_spec(experts, rows, split="validation", rows_per_shard=args.rows_per_shard)
    lm_head = unwrap(model).get_output_embeddings().weight.detach()
    letters = prompts.letter_token_ids(tok)
    labels = torch.tensor([int(r["answer"]) for r in rows], device=dev)
    texts = [prompts.mcq_prompt(r, spec.template) for r in rows]

    def make_head(method: str, reduce: str = REDUCE) -> Any:
        return build_head(method, reduce, lm_head, letters, seed=0)

    extracts, loads, from_cache_runs, trainer_runs = [], [], [], []
    for _ in range(args.repeats):
        out = Path(tempfile.mkdtemp(prefix="medminds-features-"))
        try:
            start = time.perf_counter()
            features.extract(out, spec, rows, model, tok, batch_size=args.extract_batch)
            _sync(args.device)
            extracts.append(time.perf_counter() - start)
            size = dir_bytes(out)
            start = time.perf_counter()
            cached = features.load(out, spec)
            assert cached is not None
            task_all, domain_all = (torch.from_numpy(cached.states[name]).to(dev) for name in ("task", "domain"))
            loads.append(time.perf_counter() - start)
        finally:
            shutil.rmtree(out)
        from_cache_runs.append(timed_heads(make_head, lambda idx: (task_all[idx], domain_all[idx]), labels,
                                           args.epochs, args))
        trainer_runs.append(trainer_heads(make_head, task_all, domain_all, labels, args))
    t_extract, t_load = min(extracts), min(loads)
    from_cache = {method: min((run[method] for run in from_cache_runs), key=lambda timed: timed[0])
                  for method in from_cache_runs[0]}
    through_trainer = {method: min(run[method] for run in trainer_runs) for method in trainer_runs[0]}
    from_cache_letters = timed_heads(lambda method: make_head(method, ALSO), lambda idx: (task_all[idx], domain_all[idx]),
                                     labels, args.epochs, args)

    def recompute(idx: Any) -> tuple[Any, Any]:
        states = features.hidden_states(model, tok, [texts[i] for i in idx.tolist()], batch_size=len(idx),
                                        max_length=spec.max_length)
        return torch.from_numpy(states["task"]).to(dev), torch.from_numpy(states["domain"]).to(dev)

    recomputed = timed_heads(make_head, recompute, labels, args.recompute_epochs, args)
    return Timings(t_extract, t_load, from_cache, from_cache_letters, recomputed, args.epochs / args.recompute_epochs, size,
                   through_trainer)


def print_timings(t: Timings, args: argparse.Namespace) -> None:
    def per_head(heads: dict[str, tuple[float, list[float]]]) -> str:
        return ", ".join(f"{method} {seconds:.1f} s" for method, (seconds, _) in heads.items())

    cached_total = t.extract + t.cached
    measured = "all epochs measured" if t.scale == 1 else (
        f"measured {args.recompute_epochs} of {args.epochs} epochs per head, times x{t.scale:g}")
    print(f"1. cached vs recompute: heads {', '.join(t.from_cache)} (reduce {REDUCE}), Adam lr {args.lr:g}, "
          f"batch {args.batch_size}, {args.epochs} epochs each")
    print(f"   (a) one extraction, both experts      {t.extract:9.1f} s  (batch {args.extract_batch}; fastest of "
          f"{args.repeats}, as (b) and (b''))")
    print(f"   (b) 3 heads from the cache            {t.cached:9.1f} s  (load {t.load:.2f} s; {per_head(t.from_cache)})")
    print(f"   cached total (a + b)                  {cached_total:9.1f} s  = {cached_total / t.extract:.2f}x one "
          f"extraction (target <= 1.3x)")
    trainer_total = t.extract + t.load + sum(t.through_trainer.values())
    print(f"   (b'') (b) through the stage's Trainer {trainer_total - t.extract:9.1f} s  ("
          + ", ".join(f"{m} {sec:.1f} s" for m, sec in t.through_trainer.items())
          + f"): cached total {trainer_total / t.extract:.2f}x one extraction")
    letters_total = t.extract + t.load + sum(sec for sec, _ in t.from_cache_letters.values())
    print(f"   (b') the same, reduce {ALSO}          {letters_total - t.extract:9.1f} s  ({per_head(t.from_cache_letters)}): "
          f"cached total {letters_total / t.extract:.2f}x one extraction")
    print(f"   (c) 3 heads recomputing the experts   {t.recompute:9.1f} s  ({measured}: {per_head(t.recomputed)})")
    print(f"   recompute / cached total              {t.recompute / cached_total:9.1f}x")
    print("   first-epoch mean loss, cache / recomputed: " + ", ".join(
        f"{m} {t.from_cache[m][1][0]:.5f} / {t.recomputed[m][1][0]:.5f}" for m in t.from_cache))


def print_memory(shared: dict[str, int], copies: dict[str, int], args: argparse.Namespace, batch: int) -> None:
    where = "max_memory_allocated" if args.device.startswith("cuda") else "peak RSS above the imports"
    print(f"2. peak memory, both experts' forward over {batch} questions, fresh process each: tensors "
          f"(weights + the forward's peak allocations) and the process's own peak ({where})")
    for label, m in (("one base + two named adapters", shared), ("two model copies, one adapter each", copies)):
        print(f"   {label:37s} {(m['weights'] + m['forward']) / MB:9.1f} MB  (weights {m['weights'] / MB:.1f} + "
              f"forward {m['forward'] / MB:.1f}); process {m['process'] / MB:.1f} MB")
    ratio = (shared["weights"] + shared["forward"]) / (copies["weights"] + copies["forward"])
    print(f"   ratio                                 {ratio:9.2f}x (target <= 0.6x); weights alone "
          f"{shared['weights'] / copies['weights']:.2f}x; process {shared['process'] / copies['process']:.2f}x")


def run_benchmark(args: argparse.Namespace) -> None:
    import torch

    from medminds_hpc.modeling import features
    from medminds_hpc.modeling.heads import decoder_of

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, source = question_rows(args.questions)
    experts = {name: random_expert(name, args.model, seed) for name, seed in EXPERT_SEEDS.items()}
    model, tok = features.load_experts(experts, device=args.device)
    config = decoder_of(model).config
    features.hidden_states(model, tok, ["Question: warm-up\nAnswer:"], batch_size=1)  # allocator, kernels
    timings = cached_vs_recompute(model, tok, experts, rows, args)
    batches = [int(b) for b in args.memory_batches.split(",") if b.strip()]
    memory = {b: (measure_memory("shared", args, b), measure_memory("copies", args, b)) for b in batches}

    n = len(rows)
    print(f"model {args.model} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocabulary {len(tok)}) "
          f"on {next(model.parameters()).device}, {torch.get_num_threads()} threads; {n} {source} questions, "
          f"paper prompt")
    print_timings(timings, args)
    for batch, (shared, copies) in memory.items():
        print_memory(shared, copies, args, batch)
    print(f"3. extraction {n / timings.extract:.1f} questions/s (both experts); "
          + cache_size_text(timings.cache_bytes, n, int(config.hidden_size), len(tok)))


def main() -> None:
    args = parse_args()
    with bench_home():
        if args.probe:
            probe_memory(args)
        else:
            run_benchmark(args)


if __name__ == "__main__":
    main()
