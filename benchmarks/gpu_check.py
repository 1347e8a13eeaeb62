"""Every trainable stage's GPU path on a random-init Mistral-7B-shaped model: one prepared script for a CUDA node.

    .venv/bin/python benchmarks/gpu_check.py [--layers 32] [--steps 10] [--seq 256] [--batch 4]
    .venv/bin/python benchmarks/gpu_check.py --dry-run      # the same code on the CPU, on the tiny model (~1 min)

For each path — bf16 base + LoRA (autocast), 4-bit (bitsandbytes nf4) base + LoRA (QLoRA), and unsloth's 4-bit
when installed — it builds the model from a MistralConfig (no download) and runs, through the same training engine
and modeling code as the stages:
  expert      LoRA causal-LM training steps (the experts' SFT step)
  classifier  LoRA + a 4-way head on the last token (the classifier baseline)
  features    both experts' last-token states, one adapter after the other (the feature cache's extraction)
  ensemble    a late-fusion head over cached states and the frozen LM head (the ensembles)
  mixture     linear routers before every layer mixing the two experts (the mixture of experts)
and prints, per stage: tokens/s (rows/s for the ensemble head), the peak memory, and the memory planner's
estimate where it has one (medminds_hpc/memory.py). First it names the libraries and how they differ from
locks/gpu.txt. On a machine without CUDA (and without --dry-run) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
import tempfile
import time
from typing import Any, Callable

GiB = 2**30


def mistral_config(layers: int, dry_run: bool) -> Any:
    from transformers import MistralConfig

    if dry_run:  # the shape of the registry's `tiny`, so the planner has its estimate too
        return MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=32000, max_position_embeddings=1024, sliding_window=None)
    return MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, sliding_window=None)


def build(path: str, args: argparse.Namespace) -> Any:
    """The base of `path`, random-init: bf16 (fp32 on a dry run), or saved once and reloaded in 4-bit."""
    import torch
    from transformers import BitsAndBytesConfig, MistralForCausalLM

    cfg = mistral_config(args.layers, args.dry_run)
    if path == "bf16":
        if args.dry_run:
            torch.manual_seed(0)
            return MistralForCausalLM(cfg)
        with torch.device("cuda"):
            return MistralForCausalLM(cfg).to(torch.bfloat16)
    tmp = os.path.join(tempfile.gettempdir(), f"medminds-gpu-check-{args.layers}{'-dry' if args.dry_run else ''}")
    if not os.path.exists(os.path.join(tmp, "config.json")):
        with torch.device("cpu" if args.dry_run else "cuda"):
            MistralForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp)
    if path == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(model_name=tmp, load_in_4bit=True, dtype=torch.bfloat16)
        return model
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    return MistralForCausalLM.from_pretrained(tmp, quantization_config=q, device_map={"": "cpu" if args.dry_run else 0})


class Meter:
    """Wall time and peak memory of one stage (CUDA: max_memory_allocated; a dry run: the process's peak RSS)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __enter__(self) -> "Meter":
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        import resource

        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.started
        self.peak = torch.cuda.max_memory_allocated() if self.cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def planner(stage: str, args: argparse.Namespace) -> str:
    """The memory planner's estimate for the stage's workload on this shape, where it has one."""
    from medminds_hpc import memory

    if stage not in ("expert", "classifier") or (not args.dry_run and args.layers != 32):
        return "planner: -"
    model = "tiny" if args.dry_run else "mistral-7b-instruct"
    params = {"batch_size": args.batch, "max_length": args.seq, "lora_r": 16, "optimizer": "adamw_8bit",
              "gradient_checkpointing": False, "precision": "bf16"}
    work = memory.workload_for("expert" if stage == "expert" else "baseline-classifier", params, model)
    if work is None:
        return "planner: -"
    est = memory.estimate(dataclasses.replace(work, device="cpu" if args.dry_run else "cuda"))
    return f"planner {est.total / GiB:5.2f} GiB"


def token_rows(args: argparse.Namespace, n: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(3, 32000, (n, args.seq), generator=g)


def train(model: Any, data: list[dict[str, Any]], args: argparse.Namespace, name: str) -> None:
    """Steps through the stages' own training engine (checkpoints off: only the steps are timed)."""
    from medminds_hpc import runs
    from medminds_hpc.context import StageContext
    from medminds_hpc.training import engine
    from medminds_hpc.training.options import TrainOptions

    opts = TrainOptions(batch_size=args.batch, max_steps=args.steps, warmup_steps=0, checkpoint_every_steps=10**6,
                        optimizer="adamw" if args.dry_run else "adamw_8bit", precision="fp32" if args.dry_run else "bf16",
                        max_length=args.seq)
    run = runs.create(f"gpu-check-{name}-micro-00000000", {"experiment": "gpu-check", "dataset": "micro"}, force=True)
    engine.train(StageContext(run=run, checkpoint_every_steps=10**6), engine.TrainPlan(model=model, train_dataset=data, options=opts))


def two_experts(base: Any) -> Any:
    """The base carrying two LoRA experts, `task` and `domain`, as the combining stages load them."""
    from medminds_hpc.modeling.lora import add_lora

    lm = add_lora(base, r=16, alpha=16, dropout=0.0, seed=0, adapter_name="task")
    lm.add_adapter("domain", lm.peft_config["task"])
    return lm


def stage_expert(base: Any, args: argparse.Namespace, path: str) -> float:
    import torch

    from medminds_hpc.modeling.lora import add_lora

    ids = token_rows(args, args.batch * args.steps)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(args.seq, dtype=torch.long), "labels": ids[i]} for i in range(len(ids))]
    train(add_lora(base, r=16, alpha=16, dropout=0.0, seed=0), data, args, f"{path}-expert")
    return args.batch * args.steps * args.seq


def stage_classifier(base: Any, args: argparse.Namespace, path: str) -> float:
    import torch

    from medminds_hpc.modeling.heads import LastTokenClassifier
    from medminds_hpc.modeling.lora import add_lora

    ids = token_rows(args, args.batch * args.steps)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(args.seq, dtype=torch.long), "labels": torch.tensor(i % 4)}
            for i in range(len(ids))]
    model = LastTokenClassifier(add_lora(base, r=16, alpha=8, dropout=0.05, seed=0, task_type="SEQ_CLS"))
    train(model, data, args, f"{path}-classifier")
    return args.batch * args.steps * args.seq


def stage_features(base: Any, args: argparse.Namespace, path: str) -> float:
    import torch

    from medminds_hpc.modeling.adapters import use_adapter
    from medminds_hpc.modeling.features import last_token_states

    lm = two_experts(base)
    lm.eval()
    ids = token_rows(args, args.batch * 4)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "last_index": torch.full((len(ids),), args.seq - 1)}
    with torch.no_grad():
        for name in ("task", "domain"):
            with use_adapter(lm, name):
                last_token_states(lm, batch)
    return 2 * len(ids) * args.seq


def stage_ensemble(base: Any, args: argparse.Namespace, path: str) -> float:
    import torch

    from medminds_hpc.modeling.ensemble_heads import CachedEnsemble, build_head

    weight = base.get_output_embeddings().weight.detach().float()
    hidden = weight.shape[1]
    rows = 256
    g = torch.Generator().manual_seed(0)
    data = [{"task_states": torch.randn(hidden, generator=g), "domain_states": torch.randn(hidden, generator=g),
             "labels": torch.tensor(i % 4)} for i in range(rows)]
    head = CachedEnsemble(build_head("late-fusion", "learned", weight, [330, 365, 334, 384]))  # Mistral's " A".." D"
    train(head, data, argparse.Namespace(**{**vars(args), "batch": 32, "steps": rows // 32}), f"{path}-ensemble")
    return rows


def stage_mixture(base: Any, args: argparse.Namespace, path: str) -> float:
    import torch

    from medminds_hpc.modeling.moe import MoEClassifier, install
    from medminds_hpc.modeling.moe_spec import MoESpec

    lm = two_experts(base)
    mixture = install(lm, MoESpec(router="linear", hard=True, mix="outputs", granularity="sequence"), seed=0)
    model = MoEClassifier(lm, mixture)
    ids = token_rows(args, args.batch * args.steps)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(args.seq, dtype=torch.long), "labels": torch.tensor(i % 4)}
            for i in range(len(ids))]
    train(model, data, args, f"{path}-mixture")
    return args.batch * args.steps * args.seq


STAGES: dict[str, Callable[[Any, argparse.Namespace, str], float]] = {
    "expert": stage_expert, "classifier": stage_classifier, "features": stage_features, "ensemble": stage_ensemble,
    "mixture": stage_mixture,
}


def check(path: str, args: argparse.Namespace) -> None:
    import gc

    import torch

    cuda = not args.dry_run
    for stage, fn in STAGES.items():
        try:
            t0 = time.perf_counter()
            base = build(path, args)
            load_s = time.perf_counter() - t0
            with Meter(cuda) as m, contextlib.redirect_stdout(io.StringIO()):  # the Trainer's own log lines
                units = fn(base, args, path)
            unit = "rows" if stage == "ensemble" else "tokens"
            print(f"{path:8s} {stage:10s} load {load_s:6.1f} s | {units / m.seconds:10,.0f} {unit}/s | peak "
                  f"{'GPU' if cuda else 'RSS'} {m.peak / GiB:6.2f} GiB | {planner(stage, args)}", flush=True)
        except Exception as e:  # report every stage of every path, whatever one of them does
            print(f"{path:8s} {stage:10s} FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
        finally:
            base = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()


def libraries() -> None:
    from medminds_hpc import environment

    present = environment.installed()
    names = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "unsloth", "datasets")
    print("libraries: " + ", ".join(f"{n} {present.get(n, '-')}" for n in names))
    lock = environment.LOCKS_DIR / "gpu.txt"
    differ = [d for d in environment.differences(lock, present) if "is installed but not in" not in d]
    print(f"against {lock.name}: " + ("every locked version installed" if not differ else f"{len(differ)} differ: " + "; ".join(differ[:12])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 32; a dry run 2)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--paths", default="bf16,4bit,unsloth")
    ap.add_argument("--dry-run", action="store_true", help="the same code on the CPU, on a tiny shape")
    args = ap.parse_args()
    args.layers = args.layers or (2 if args.dry_run else 32)
    if args.dry_run:
        args.steps, args.seq, args.batch = min(args.steps, 3), min(args.seq, 64), min(args.batch, 4)
    from medminds_hpc.modeling.gpu import bitsandbytes_installed, cuda_available, unsloth_available

    if not args.dry_run and not cuda_available():
        print("no CUDA GPU here: this check runs on a GPU node (or --dry-run runs the same code on the CPU)")
        return
    os.environ.setdefault("MEDMINDS_HOME", tempfile.mkdtemp(prefix="medminds-gpu-check-"))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    libraries()
    print(torch.cuda.get_device_name(0) + f", CUDA {torch.version.cuda}" if not args.dry_run else "dry run: CPU, tiny shape")
    for path in args.paths.split(","):
        if path == "unsloth" and (args.dry_run or not unsloth_available()):
            print("unsloth  skipped: " + ("a dry run has no CUDA" if args.dry_run else "not installed (MEDMINDS_LOCK=gpu bash install.sh)"))
            continue
        if path == "4bit" and not bitsandbytes_installed():
            print("4bit     skipped: bitsandbytes is not installed")
            continue
        check(path, args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
