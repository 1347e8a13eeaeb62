"""Checkpoint size as a share of model size, and save time as a share of the checkpoint interval.

    .venv/bin/python benchmarks/checkpoint_size.py

A Mistral-7B-shaped model is built on the meta device (no memory), LoRA r=16 is attached to the seven
projections the paper uses, and the checkpoint that the training engine would write — trainable weights plus
AdamW's two moments, scheduler and RNG — is materialised for real and saved through CheckpointStore.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval-minutes", type=float, default=20.0, help="the default checkpoint_every_minutes")
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    from medminds_hpc.training.checkpoint import CheckpointStore

    cfg = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=32000)
    with torch.device("meta"):
        model = get_peft_model(MistralForCausalLM(cfg), LoraConfig(
            r=16, lora_alpha=16, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    total = sum(p.numel() for p in model.parameters())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    n_trainable = sum(p.numel() for p in trainable.values())
    base_bytes_bf16 = (total - n_trainable) * 2
    base_bytes_4bit = (total - n_trainable) * 0.5 + (total - n_trainable) / 64 * 4  # nf4 + absmax per 64-block

    state = {
        "trainable": {n: torch.randn(p.shape) * 0.01 for n, p in trainable.items()},
        "optimizer": {n: {"exp_avg": torch.zeros(p.shape), "exp_avg_sq": torch.zeros(p.shape)} for n, p in trainable.items()},
        "rng": torch.get_rng_state(),
        "step": 1234,
    }
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as d:
        store = CheckpointStore(Path(d), keep=2)
        t0 = time.perf_counter()
        ckpt = store.save(1234, state)
        save_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in ckpt.dir.iterdir())
        weights_only = n_trainable * 4
        t0 = time.perf_counter()
        assert store.latest().step == 1234  # includes the sha256 check of every file on resume
        verify_s = time.perf_counter() - t0

    print("Mistral-7B-shaped model, LoRA r=16 on q,k,v,o,gate,up,down")
    print(f"  parameters: {total / 1e9:.3f} B total, {n_trainable / 1e6:.1f} M trainable ({100 * n_trainable / total:.2f}%)")
    print(f"  trainable weights (fp32): {weights_only / 1e6:.1f} MB = {100 * weights_only / base_bytes_bf16:.2f}% of the bf16 base "
          f"({base_bytes_bf16 / 1e9:.1f} GB), {100 * weights_only / base_bytes_4bit:.2f}% of the 4-bit base ({base_bytes_4bit / 1e9:.2f} GB)")
    print(f"  full checkpoint (weights + AdamW moments + RNG): {size / 1e6:.1f} MB = {100 * size / base_bytes_bf16:.2f}% of the bf16 base")
    print(f"  save time: {save_s:.2f} s = {100 * save_s / (args.interval_minutes * 60):.3f}% of a {args.interval_minutes:g}-minute interval")
    print(f"  verify-on-resume time (sha256 of every file): {verify_s:.2f} s")


if __name__ == "__main__":
    main()
