"""The GPU memory planner (medminds_hpc/memory.py) beside measured peaks, and what it says about the paper's runs.

    .venv/bin/python benchmarks/memory_estimate.py                  # tiny models + the paper's runs per GPU type
    .venv/bin/python benchmarks/memory_estimate.py --mistral-layer   # + a Mistral-7B-shaped layer, 4-bit, bf16 (~2 min)
    .venv/bin/python benchmarks/memory_estimate.py --device cuda --mistral-layer   # the same on a GPU node

1. One steady-state LoRA training step (forward, backward, AdamW step) of `tiny` and `tiny-4layer`, with a
   causal-LM loss or the 4-way head, with and without gradient checkpointing: the measured peak (CPU: the
   profiler's allocation record; CUDA: max_memory_allocated) beside the estimate's allocated bytes.
2. With --mistral-layer: a decoder of Mistral-7B's shape (hidden 4096, MLP 14336, 32/8 heads) with one layer,
   4-bit (bitsandbytes nf4) under bf16 autocast as on a GPU, measured at two token counts: the per-token slope
   (what one layer keeps per token) and the fixed part, beside the planner's.
3. The paper's runs (jobs/*.toml, model mistral-7b-instruct) on each GPU type of slurm/unity.toml, with
   gradient checkpointing on (the default on CUDA) and off.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from typing import Any

MiB = 1024**2


def tiny_model(name: str, head: str, base: Any = None) -> Any:
    from medminds_hpc.modeling import tiny, tokenizer
    from medminds_hpc.modeling.heads import LastTokenClassifier
    from medminds_hpc.modeling.loading import REGISTRY
    from medminds_hpc.modeling.lora import add_lora

    if base is None:
        base = tiny.build(REGISTRY[name].tiny, tokenizer.load_tokenizer_from(tokenizer.BUILTIN))
    model = add_lora(base, r=16, alpha=16, dropout=0.0, seed=0)
    return LastTokenClassifier(model, seed=0) if head == "classes" else model


def measure_step(model: Any, head: str, batch: int, length: int, checkpointing: bool, device: str, autocast: bool) -> Any:
    import torch

    from medminds_hpc.modeling.lora import enable_gradient_checkpointing
    from medminds_hpc.training.peak_memory import train_step_memory

    if checkpointing:
        enable_gradient_checkpointing(model)
    model.to(device).train()
    ids = torch.randint(4, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    labels = torch.arange(batch, device=device) % 4 if head == "classes" else ids.masked_fill(mask == 0, -100)

    def loss(m: Any) -> Any:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            out = m(input_ids=ids, attention_mask=mask, labels=labels)
        return out["loss"] if isinstance(out, dict) else out.loss

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return train_step_memory(model, optimizer, loss, device)


def workload(model: Any, head: str, batch: int, length: int, checkpointing: bool, device: str, quantized: bool = False) -> Any:
    from medminds_hpc import memory

    shape = memory.ModelShape.from_config(model.config.to_dict())
    return memory.Workload(shape, batch, length, loss=head, checkpointing=checkpointing, lora_r=16, quantized=quantized,
                           act_bytes=2 if quantized else 4, head_params=(shape.hidden + 1) * 4 if head == "classes" else 0,
                           device=device)


def tiny_table(device: str) -> None:
    from medminds_hpc import memory

    print(f"1. One LoRA training step (r=16, all seven projections, AdamW), fp32 on {device}: measured peak vs estimate")
    print(f"   {'model':<12} {'loss':<8} {'tokens':>9} {'checkpointing':<14} {'measured':>10} {'estimate':>10} {'ratio':>6}")
    for name, head, batch, length in [("tiny", "lm", 8, 64), ("tiny", "classes", 8, 64), ("tiny-4layer", "lm", 4, 64),
                                      ("tiny-4layer", "classes", 8, 128), ("tiny-4layer", "classes", 16, 256)]:
        for checkpointing in (False, True):
            model = tiny_model(name, head)
            got = measure_step(model, head, batch, length, checkpointing, device, autocast=False)
            est = memory.estimate(workload(model, head, batch, length, checkpointing, device))
            print(f"   {name:<12} {head:<8} {f'{batch} x {length}':>9} {'on' if checkpointing else 'off':<14} "
                  f"{got.peak / MiB:8.1f} MiB {est.allocated / MiB:6.1f} MiB {est.allocated / got.peak:6.2f}")


def mistral_layer(device: str) -> None:
    """Per-token slope and fixed part of one 4-bit Mistral-7B-shaped layer under bf16 autocast."""
    from medminds_hpc import memory
    from medminds_hpc.modeling import tiny
    from medminds_hpc.modeling.loading import load_model

    shape = tiny.TinyConfig(hidden_size=4096, num_layers=1, num_heads=32, num_kv_heads=8, intermediate_size=14336)
    path = tiny.ensure_cached("mistral-7b-shape-1layer", shape, "builtin")
    print(f"\n2. A Mistral-7B-shaped decoder with 1 layer, 4-bit nf4, bf16 autocast, LoRA r=16, 4-way head, on {device}")
    for checkpointing in (False, True):
        points = []
        for batch in (1, 4):
            base, _ = load_model(str(path), quantize="4bit", dtype="bf16", device=device)
            model = tiny_model("", "classes", base=base)
            got = measure_step(model, "classes", batch, 128, checkpointing, device, autocast=True)
            w = workload(model, "classes", batch, 128, checkpointing, device, quantized=True)
            points.append((batch * 128, got.transient, memory.estimate(w).activations, w))
        (t1, m1, e1, w), (t2, m2, e2, _) = points
        slope_m, slope_e = (m2 - m1) / (t2 - t1), (e2 - e1) / (t2 - t1)
        print(f"   checkpointing {'on ' if checkpointing else 'off'}: per token measured {slope_m / 1024:6.1f} KiB, "
              f"estimated {slope_e / 1024:6.1f} KiB (one layer keeps {memory.layer_saved(w) / 1024:.1f} KiB); "
              f"fixed part measured {(m1 - slope_m * t1) / MiB:6.1f} MiB, estimated {(e1 - slope_e * t1) / MiB:6.1f} MiB")


def paper_runs() -> None:
    from medminds_hpc import clusters, experiments, memory

    profile = clusters.load_profile("unity")
    gpus = {n: g.memory_gb for n, g in profile.gpus.items()}
    print("\n3. The paper's runs on mistral-7b-instruct (4-bit, bf16/fp16), slurm/unity.toml's GPU types "
          f"({', '.join(f'{n} {gb} GiB' for n, gb in sorted(gpus.items(), key=lambda x: x[1]))})")
    print(f"   {'experiment':<30} {'micro-batch':>12} {'checkpointing on':>17} {'off':>8}   fits with it on / off")
    for name in ("expert-task", "expert-domain", "baseline-classifier-mistral", "baseline-classifier-task", "baseline-nextword"):
        resolved = experiments.resolve(experiments.load(name), "mini")
        w = memory.workload_for(resolved.experiment.stage, resolved.params, "mistral-7b-instruct")
        on = memory.estimate(dataclasses.replace(w, checkpointing=True)).total
        off = memory.estimate(dataclasses.replace(w, checkpointing=False)).total

        def fits(total: int) -> str:
            return ",".join(n for n, gb in sorted(gpus.items(), key=lambda x: x[1]) if total <= gb * memory.GiB) or "none"

        batch = f"{w.micro_batch} x {w.seq_len}" if w.train else f"{w.eval_batch} x {w.eval_len}"
        print(f"   {name:<30} {batch:>12} {memory.gib(on):>13} GiB {memory.gib(off):>4} GiB   {fits(on)} / {fits(off) if w.train else '-'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (two beside other work spin-wait)")
    ap.add_argument("--mistral-layer", action="store_true", help="also measure a Mistral-7B-shaped layer (~2 min on CPU)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as home:
        os.environ["MEDMINDS_HOME"] = home
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        tiny_table(args.device)
        if args.mistral_layer:
            mistral_layer(args.device)
    paper_runs()


if __name__ == "__main__":
    main()
