"""Training throughput (tokens/s) of LoRA SFT on this machine, through the real training engine.

    .venv/bin/python benchmarks/training_throughput.py [--steps 30]

For each model (the 2-layer/64-wide `tiny` and the 4-layer/256-wide `tiny-4layer`), LoRA r=16 on the seven
projections, batch 16 of synthetic ARC-style prompts with their answers (the task expert's data), fp32 on CPU.
Tokens/s counts real (non-pad) tokens of the examples trained on; the first 5 steps are excluded as warm-up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def measure(name: str, steps: int, batch: int) -> dict:
    from transformers import TrainerCallback

    from medminds_hpc import runs
    from medminds_hpc.context import StageContext
    from medminds_hpc.data import synthetic
    from medminds_hpc.modeling.loading import load_model
    from medminds_hpc.modeling.lora import add_lora
    from medminds_hpc.stages import expert
    from medminds_hpc.training import engine

    model, tok = load_model(name)
    lora = add_lora(model, r=16, alpha=16, dropout=0.0, seed=0)
    cfg = expert.Config(data="arc", batch_size=batch, max_steps=steps, learning_rate=2e-4, optimizer="adamw", warmup_steps=0,
                        checkpoint_every_steps=10_000, max_length=256)
    rows = synthetic.arc_rows(batch * steps, seed=0)
    data, _counts = expert.training_rows(cfg, rows, tok)
    tokens_per_row = sum(len(x) for x in data["input_ids"]) / len(data)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    from trl import SFTConfig, SFTTrainer

    run = runs.create(f"bench-{name}-micro-00000000", {"experiment": "bench", "dataset": "micro"})
    plan = engine.TrainPlan(model=lora, train_dataset=data, options=cfg, trainer_class=SFTTrainer, args_class=SFTConfig,
                            args_extra={"max_length": cfg.max_length, "packing": False}, trainer_extra={"processing_class": tok}, callbacks=[Clock()])
    engine.train(StageContext(run=run, checkpoint_every_steps=10_000), plan)
    warm = 5
    seconds = stamps[-1] - stamps[warm - 1]
    n_steps = len(stamps) - warm
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    total = sum(p.numel() for p in lora.parameters())
    return {"model": name, "params": total, "trainable": trainable, "tokens_per_row": tokens_per_row,
            "steps_per_s": n_steps / seconds, "tokens_per_s": n_steps * batch * tokens_per_row / seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as home:
        os.environ["MEDMINDS_HOME"] = home
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(f"LoRA SFT throughput on CPU ({torch.get_num_threads()} threads), batch {args.batch}, fp32, {args.steps} steps")
        for name in ("tiny", "tiny-4layer"):
            r = measure(name, args.steps, args.batch)
            print(f"  {r['model']:<12} {r['params'] / 1e6:6.2f} M params ({r['trainable'] / 1e6:.2f} M trainable), "
                  f"{r['tokens_per_row']:.0f} tokens/row: {r['steps_per_s']:.2f} steps/s, {r['tokens_per_s']:,.0f} tokens/s")


if __name__ == "__main__":
    main()
